/**
 * Wires the other components into the cluster agent: each in-process server (device plugin, CSI
 * node+controller, CNI server, guest DHCP) and the CNI executable install become a supervised
 * start function; the VM runtime and the migration hand-off come from the VM core and migration
 * modules. Everything here is composition: the components' own code lives in their folders.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { FailedPrecondition } from '../../lib/errors.js';
import type { Logger } from '../../lib/log.js';
import { PROJECT_ROOT } from '../../lib/project-root.js';
import { installCniPlugin } from './cni-install.js';
import type { VolumeFigures } from './metrics.js';
import type { ServerHandle } from './supervised.js';
import type { MigrationHandoff, VmRuntime } from './vm-runtime.js';

export interface ComposeConfig {
  node: string;
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
        });
      },
    });
  }
  if (on('cni')) {
    out.push({
      name: 'cni',
      start: async () => {
        const { startCniServer, DEFAULT_CNI_SOCKET } = await import('../../cni/server.js');
        return startCniServer({ socketPath: c.runDir === '/run/podvirt' ? DEFAULT_CNI_SOCKET : path.join(c.runDir, 'cni.sock'), logger: c.log.child({ component: 'cni' }) });
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
        return { stop: () => d.stop() };
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

/** The VM runtime: the VM core's VmController per pod (agent/kube/vm-core-runtime.ts). */
export async function buildVmRuntime(c: ComposeConfig): Promise<VmRuntime> {
  const { VmCoreRuntime } = await import('./vm-core-runtime.js');
  return new VmCoreRuntime({ stateDir: c.stateDir, runDir: c.runDir, procRoot: c.procRoot, sysRoot: c.sysRoot, devRoot: c.devRoot, log: c.log.child({ part: 'vm' }) });
}

/**
 * Migration between agents: on when this agent has an address the other nodes' agents can reach
 * (`--migration-address`, default the downward-API `$POD_IP`, which is the node IP with hostNetwork).
 */
export async function buildMigration(c: ComposeConfig & { migrationAddress: string | undefined }, runtime: VmRuntime): Promise<MigrationHandoff | undefined> {
  const { VmCoreRuntime } = await import('./vm-core-runtime.js');
  if (!c.migrationAddress || !(runtime instanceof VmCoreRuntime)) {
    c.log.warn('no --migration-address (or $POD_IP): migrations into or out of this node are disabled');
    return undefined;
  }
  const { KubeMigration } = await import('./kube-migration.js');
  return new KubeMigration({ runtime, controlAddress: c.migrationAddress, log: c.log.child({ part: 'migration' }) });
}
