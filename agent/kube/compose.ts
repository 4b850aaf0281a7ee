/**
 * Wires the other components into the cluster agent: each in-process server (device plugin, CSI
 * node+controller, CNI server, guest DHCP) and the CNI executable install become a supervised
 * start function; the VM runtime and the migration hand-off come from the VM core and migration
 * modules. Everything here is composition: the components' own code lives in their folders.
 */
import { promises as fs } from 'node:fs';
import type { KubeConfig } from '@kubernetes/client-node';
import * as path from 'node:path';
import { FailedPrecondition } from '../../lib/errors.js';
import type { Logger } from '../../lib/log.js';
import { PROJECT_ROOT } from '../../lib/project-root.js';
import { installCniPlugin } from './cni-install.js';
import type { VolumeFigures } from './metrics.js';
import type { GuestDhcp } from './guest-dhcp.js';
import type { ServerHandle } from './supervised.js';
import type { MigrationHandoff, VmRuntime } from './vm-runtime.js';

export interface ComposeConfig {
  node: string;
  /** cgroup the CSI volume daemons join (default podvirt/qsd; '' = the agent's own). */
  qsdCgroup?: string;
  stateDir: string;
  runDir: string;
  cniBinDir: string;
  kubeletDir: string;
  devicePluginConfig: string | undefined;
  csiEndpoint: string | undefined;
  csiStateDir: string | undefined;
  procRoot: string;
  sysRoot: string;
  devRoot: string;
  disabled: ReadonlySet<string>;
  log: Logger;
}

export const SERVER_NAMES = ['cni-install', 'device-plugin', 'csi', 'cni', 'dhcp'] as const;

export function cniSocketOf(c: ComposeConfig): string {
  return c.runDir === '/run/podvirt' ? '/run/podvirt/cni.sock' : path.join(c.runDir, 'cni.sock');
}

/**
 * The guest DHCP join (agent/kube/guest-dhcp.ts), one per composed agent: the CNI server feeds it
 * attachments, the VM runtime feeds it VMs, the DHCP server is its sink. Keyed by the config
 * object, which the agent's main hands to every build function.
 */
const guestDhcps = new WeakMap<ComposeConfig, Promise<GuestDhcp>>();
export function guestDhcpOf(c: ComposeConfig): Promise<GuestDhcp> {
  let g = guestDhcps.get(c);
  if (!g) {
    g = (async () => {
      const { GuestDhcp } = await import('./guest-dhcp.js');
      const { attachmentDirFor } = await import('../../cni/attachment-events.js');
      return new GuestDhcp({ attachmentDir: attachmentDirFor(cniSocketOf(c)), log: c.log.child({ component: 'guest-dhcp' }) });
    })();
    guestDhcps.set(c, g);
  }
  return g;
}

/** Creates `dir` if missing and lets everyone traverse it (not list it). */
async function ensureTraversable(dir: string): Promise<void> {
  await fs.mkdir(dir, { recursive: true, mode: 0o711 });
  const { mode } = await fs.stat(dir);
  if ((mode & 0o011) !== 0o011) await fs.chmod(dir, (mode & 0o7777) | 0o011);
}

export function csiSocketOf(c: ComposeConfig): string {
  return c.csiEndpoint ? c.csiEndpoint.replace(/^unix:(\/\/)?/, '') : path.join(c.kubeletDir, 'plugins', 'csi.podvirt.io', 'csi.sock');
}

export async function buildServers(c: ComposeConfig): Promise<Array<{ name: string; start: () => Promise<ServerHandle> }>> {
  const unknown = [...c.disabled].filter((n) => !(SERVER_NAMES as readonly string[]).includes(n));
  if (unknown.length) throw new FailedPrecondition(`--disable: unknown server(s) ${unknown.join(', ')} (known: ${SERVER_NAMES.join(', ')})`);
  const out: Array<{ name: string; start: () => Promise<ServerHandle> }> = [];
  const on = (n: string) => !c.disabled.has(n);
  if (on('cni-install')) {
    out.push({
      name: 'cni-install',
      start: async () => {
        const changed = await installCniPlugin(path.join(PROJECT_ROOT, 'dist', 'cni'), c.cniBinDir);
        c.log.info({ dir: c.cniBinDir, changed }, 'CNI plugin installed');
        return { stop: async () => undefined };
      },
    });
  }
  if (on('device-plugin')) {
    out.push({
      name: 'device-plugin',
      start: async () => {
        const { startDevicePlugin } = await import('../../plugins/device-plugin.js');
        return startDevicePlugin({
          kubeletDir: path.join(c.kubeletDir, 'device-plugins'),
          devRoot: c.devRoot,
          sysRoot: c.sysRoot,
          configFile: c.devicePluginConfig,
          cdiDir: null,
          logger: c.log.child({ component: 'device-plugin' }),
        });
      },
    });
  }
  if (on('csi')) {
    out.push({
      name: 'csi',
      start: async () => {
        const { startCsiDriver } = await import('../../csi/server.js');
        return startCsiDriver({
          socketPath: csiSocketOf(c),
          nodeId: c.node,
          stateDir: c.csiStateDir ?? path.join(c.stateDir, 'csi'),
          logger: c.log.child({ component: 'csi' }),
          // Volume daemons leave the agent's container cgroup: a container restart must not take VM disks with it.
          qsdCgroup: c.qsdCgroup ?? 'podvirt/qsd',
        });
      },
    });
  }
  if (on('cni')) {
    out.push({
      name: 'cni',
      start: async () => {
        const { startCniServer } = await import('../../cni/server.js');
        // The socket's directory is the run dir, where QEMU (the pod's uid) also reaches its own
        // sockets below vms/: the server would create it 0700, so make it traversable first.
        await ensureTraversable(c.runDir);
        const guest = on('dhcp') ? await guestDhcpOf(c) : undefined;
        return startCniServer({
          socketPath: cniSocketOf(c),
          logger: c.log.child({ component: 'cni' }),
          ...(guest ? { onAttachment: (ev) => guest.onAttachment(ev) } : {}),
        });
      },
    });
  }
  if (on('dhcp')) {
    out.push({
      name: 'dhcp',
      start: async () => {
        const { DhcpServer } = await import('../dhcp/server.js');
        const d = new DhcpServer({ log: c.log.child({ component: 'dhcp' }) });
        await d.start();
        // The join's whole table goes to every (re)started server.
        const detach = (await guestDhcpOf(c)).attachSink(d);
        return {
          stop: async () => {
            detach();
            await d.stop();
          },
        };
      },
    });
  }
  return out;
}

/** Volume count and pool figures from the CSI driver's own API (ListVolumes, GetCapacity). */
export function csiVolumeFigures(c: ComposeConfig): () => Promise<VolumeFigures | undefined> {
  return async () => {
    const { CsiClient } = await import('../../csi/client.js');
    const client = new CsiClient(csiSocketOf(c));
    try {
      const vols = await client.controller.ListVolumes({}, { deadlineMs: 5000 });
      const cap = await client.controller.GetCapacity({}, { deadlineMs: 5000 });
      const st = await fs.statfs(c.csiStateDir ?? path.join(c.stateDir, 'csi'));
      return { volumes: vols.entries.length, capacityBytes: st.blocks * st.bsize, availableBytes: Number(cap.available_capacity) };
    } finally {
      client.close();
    }
  };
}

/**
 * The VM runtime: the VM core's VmController per pod (agent/kube/vm-core-runtime.ts), wrapped so
 * the guest DHCP hears of every VM that comes or goes (unless `dhcp` is disabled).
 */
export async function buildVmRuntime(c: ComposeConfig): Promise<VmRuntime> {
  const { VmCoreRuntime } = await import('./vm-core-runtime.js');
  const core = new VmCoreRuntime({ stateDir: c.stateDir, runDir: c.runDir, procRoot: c.procRoot, sysRoot: c.sysRoot, devRoot: c.devRoot, log: c.log.child({ part: 'vm' }) });
  if (c.disabled.has('dhcp')) return core;
  const { LeasingRuntime } = await import('./guest-dhcp.js');
  return new LeasingRuntime(core, await guestDhcpOf(c));
}

/**
 * Migration between agents: on when this agent has an address the other nodes' agents can reach
 * (`--migration-address`, default the downward-API `$POD_IP`, which is the node IP with hostNetwork).
 */
export async function buildMigration(c: ComposeConfig & { migrationAddress: string | undefined; kc?: KubeConfig }, runtime: VmRuntime): Promise<MigrationHandoff | undefined> {
  const { VmCoreRuntime } = await import('./vm-core-runtime.js');
  const { LeasingRuntime } = await import('./guest-dhcp.js');
  const core = runtime instanceof LeasingRuntime ? runtime.inner : runtime;
  if (!c.migrationAddress || !(core instanceof VmCoreRuntime)) {
    c.log.warn('no --migration-address (or $POD_IP): migrations into or out of this node are disabled');
    return undefined;
  }
  const { KubeMigration } = await import('./kube-migration.js');
  const { kubeVolumeLookup } = await import('./local-volumes.js');
  const { attachmentDirFor } = await import('../../cni/attachment-events.js');
  // Claims and volumes tell node-local disks (mirrored) from shared ones; the CNI attachment
  // records name the pods' keyed IPAM holds, marked at the migration's outcome.
  const m = new KubeMigration({
    runtime: core,
    controlAddress: c.migrationAddress,
    ...(c.kc ? { volumes: kubeVolumeLookup(c.kc) } : {}),
    attachmentDir: attachmentDirFor(cniSocketOf(c)),
    log: c.log.child({ part: 'migration' }),
  });
  // A VM migrated in gets its guest leases here like a started one.
  return runtime instanceof LeasingRuntime ? runtime.wrapMigration(m) : m;
}
