import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { invokeCniOrThrow } from '../../cni/invoke.js';
import { startCniServer, type CniServer } from '../../cni/server.js';
import { stderrLogger } from '../../cni/logger.js';
import { parseResult } from '../../cni/result.js';
import { FailedPrecondition } from '../../lib/errors.js';
import { PROJECT_ROOT } from '../../lib/project-root.js';
import type { NetworkBackend } from './backends.js';
import { NETWORKS_ANNOTATION, type LocalPod, type NetworkSelection } from './manifest.js';
import { vmIpamKey } from './networks.js';
import type { AttachmentRecord } from './pod-store.js';

/**
 * The selection's `cni-args` from the Multus annotation (JSON form), which Multus hands the plugin
 * as `args.cni`. Local mode's manifest parser keeps only the fields it needs; this reads the rest.
 */
export function selectionCniArgs(pod: Pick<LocalPod, 'annotations'>, sel: NetworkSelection): Record<string, unknown> | undefined {
  const text = pod.annotations[NETWORKS_ANNOTATION]?.trim();
  if (!text?.startsWith('[')) return undefined;
  let list: unknown;
  try {
    list = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (!Array.isArray(list)) return undefined;
  for (const e of list as Array<Record<string, unknown> | null>) {
    if (!e || e.name !== sel.name || (e.interface ?? undefined) !== sel.interface) continue;
    const args = e['cni-args'];
    return typeof args === 'object' && args !== null && !Array.isArray(args) ? (args as Record<string, unknown>) : undefined;
  }
  return undefined;
}

export interface CniBackendOptions {
  /** Where the in-agent CNI server listens (the shim forwards to it, as on a cluster node). */
  socketPath: string;
  /** Directory holding the `podvirt` plugin executable (the built shim). */
  pluginDir?: string;
  /** Where delegated IPAM plugins live (host-local, static). */
  ipamDirs?: string[];
}

/**
 * Networks through the real CNI plugin, invoked like a container runtime does: the `podvirt`
 * executable with CNI_* variables and the NAD's config on stdin, delegating IPAM to host-local. The
 * plugin's shim forwards to a CNI server hosted in this agent (what the node agent does on a cluster).
 */
export class CniBackend implements NetworkBackend {
  private server: CniServer | undefined;
  private readonly plugin: string;
  private readonly cniPath: string[];

  constructor(private readonly o: CniBackendOptions) {
    const dir = o.pluginDir ?? path.join(PROJECT_ROOT, 'dist', 'cni');
    this.plugin = path.join(dir, 'podvirt');
    this.cniPath = [dir, ...(o.ipamDirs ?? ['/opt/cni/bin', '/usr/lib/cni'])];
  }

  async start(): Promise<void> {
    if (!existsSync(this.plugin)) throw new FailedPrecondition(`CNI plugin ${this.plugin} is missing: run "npm run build"`);
    this.server = await startCniServer({ socketPath: this.o.socketPath, logger: stderrLogger(process.env.PODVIRT_LOG_LEVEL ?? 'warn') });
  }

  async stop(): Promise<void> {
    await this.server?.stop();
    this.server = undefined;
  }

  async add(i: Parameters<NetworkBackend['add']>[0]): Promise<AttachmentRecord> {
    const config: Record<string, unknown> = { ...i.config };
    // An unprivileged QEMU must be able to open the tap: the NAD normally says so, local mode fills it in.
    if (config.type === 'podvirt') {
      config.owner ??= i.uid;
      config.group ??= i.gid;
    }
    const runtimeConfig: Record<string, unknown> = {};
    if (i.mac) runtimeConfig.mac = i.mac;
    if (i.selection.ips?.length) runtimeConfig.ips = i.selection.ips;
    if (i.migrationTarget) runtimeConfig.migrationTarget = true;
    if (Object.keys(runtimeConfig).length) config.runtimeConfig = runtimeConfig;
    // As Multus does: the selection's cni-args become args.cni; a VM tap's reservation is keyed by the VM.
    const cniArgs: Record<string, unknown> = { ...selectionCniArgs(i.pod, i.selection) };
    if (config.type === 'podvirt' && (config.mode ?? 'tap') === 'tap' && config.ipam) cniArgs.ipamKey ??= vmIpamKey(i.pod);
    if (Object.keys(cniArgs).length) {
      const args = (typeof config.args === 'object' && config.args !== null ? config.args : {}) as Record<string, unknown>;
      const old = (typeof args.cni === 'object' && args.cni !== null ? args.cni : {}) as Record<string, unknown>;
      config.args = { ...args, cni: { ...old, ...cniArgs } };
    }
    const raw = await invokeCniOrThrow({
      plugin: this.plugin,
      command: 'ADD',
      config,
      containerId: i.containerId,
      netns: i.netns,
      ifname: i.ifname,
      args: { IgnoreUnknown: '1', K8S_POD_NAMESPACE: i.pod.namespace, K8S_POD_NAME: i.pod.name, ...(i.mac ? { MAC: i.mac } : {}) },
      path: this.cniPath,
      env: { PODVIRT_CNI_SOCKET: this.o.socketPath },
    });
    const res = parseResult(raw);
    const itf = res.interfaces?.find((x) => x.name === i.ifname && x.sandbox) ?? res.interfaces?.find((x) => x.name === i.ifname);
    const ip = res.ips?.find((x) => !x.address.includes(':'));
    const name = typeof config.name === 'string' ? config.name : i.selection.name;
    return {
      network: name,
      vmNetwork: i.selection.name,
      ifname: i.ifname,
      containerId: i.containerId,
      mac: itf?.mac ?? i.mac ?? '',
      bridge: typeof config.bridge === 'string' ? config.bridge : undefined,
      ip: ip?.address,
      gateway: ip?.gateway,
      config,
    };
  }

  async del(rec: AttachmentRecord, netns: string | undefined): Promise<void> {
    await invokeCniOrThrow({
      plugin: this.plugin,
      command: 'DEL',
      config: rec.config,
      containerId: rec.containerId,
      ...(netns && existsSync(netns) ? { netns } : {}),
      ifname: rec.ifname,
      path: this.cniPath,
      env: { PODVIRT_CNI_SOCKET: this.o.socketPath },
    });
  }
}
