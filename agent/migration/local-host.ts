import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { FailedPrecondition, NotFound } from '../../lib/errors.js';
import type { Logger } from '../../lib/log.js';
import { activateTap } from '../../cni/activate.js';
import type { LocalAgent } from '../local/agent.js';
import type { NetworkBackend } from '../local/backends.js';
import { parseLocalManifest } from '../local/manifest.js';
import { podRunDir, type LocalPaths } from '../local/paths.js';
import { PodStore } from '../local/pod-store.js';
import { driveNodeName } from '../plan/devices.js';
import type { QmpClient } from '../qmp/index.js';
import { parseVmSpec } from '../spec/index.js';
import type { VmController } from '../vm/index.js';
import { MIGRATE_FROM_ANNOTATION, type LocalMigrationHost } from './local.js';

/** The migration network local mode attaches to both pods for the time of a migration. */
export const LOCAL_MIGRATION_NETWORK = {
  name: 'podvirt-migration',
  bridge: process.env.PODVIRT_MIGRATION_BRIDGE || 'podvirt-mig0',
  subnet: process.env.PODVIRT_MIGRATION_SUBNET || '10.89.0.0/24',
  ifname: 'mig0',
};

/**
 * {@link LocalMigrationHost} over local mode's agent: the target pod is an ordinary local pod run
 * with the source's topology, `-incoming defer` and silent taps; the migration network is a
 * `"mode": "migration"` CNI attachment added to both pods and removed afterwards.
 */
export function localMigrationHost(o: { agent: LocalAgent; networks: NetworkBackend; paths: LocalPaths; log: Logger; qemuUid: number; qemuGid: number }): LocalMigrationHost {
  const store = new PodStore(o.paths);
  const runtime = async (name: string) => {
    const rt = await store.loadRuntime(name);
    if (!rt) throw new NotFound(`pod ${name} is not running`);
    return rt;
  };
  const qmpOf = (name: string): QmpClient => {
    const vm = o.agent.controller(name) as VmController | undefined;
    if (!vm) throw new FailedPrecondition(`pod ${name} has no VM controller`);
    return vm.qmp;
  };
  const uffd = () => {
    try {
      return readFileSync('/proc/sys/vm/unprivileged_userfaultfd', 'utf8').trim() === '1';
    } catch {
      return false; // old kernel: no knob, no unprivileged userfaultfd
    }
  };
  return {
    qemuOwner: { uid: o.qemuUid, gid: o.qemuGid },
    // QEMU runs as qemuUid: post-copy needs userfaultfd for unprivileged users. Read at each
    // migration, so an operator who sets the sysctl needs no agent restart.
    get postCopySupported() {
      return o.qemuUid === 0 || uffd();
    },
    qemuDir: (pod) => podRunDir(o.paths, pod),

    async source(name) {
      const rt = await runtime(name);
      const pod = parseLocalManifest(rt.manifest);
      const spec = parseVmSpec(pod.vmSpec);
      const qmp = qmpOf(name);
      const blocks = await qmp.execute<Array<{ inserted?: { 'node-name'?: string; image?: { 'virtual-size': number } } }>>('query-block');
      const disks = spec.disks.map((d) => {
        const node = driveNodeName(d.name);
        const b = blocks.find((x) => x.inserted?.['node-name'] === node);
        if (!b?.inserted?.image) throw new FailedPrecondition(`disk ${d.name}: no block node ${node} in the running VM`);
        return { node, sizeBytes: b.inserted.image['virtual-size'] };
      });
      return { manifest: rt.manifest, qmp, netns: rt.netns, memoryBytes: spec.memory, disks };
    },

    async startTarget(manifest, hooks = {}) {
      const from = parseLocalManifest(manifest);
      const srcName = /(?:^|\/)([^/]+)$/.exec(from.annotations[MIGRATE_FROM_ANNOTATION] ?? '')?.[1];
      if (!srcName) throw new FailedPrecondition('target manifest lacks vm.podvirt.io/migrate-from');
      // The topology the source's QEMU runs with (its controller holds it; no QMP round trip needed).
      const vm = o.agent.controller(srcName) as VmController | undefined;
      if (!vm) throw new FailedPrecondition(`pod ${srcName} has no VM controller`);
      const srcRt = await runtime(srcName);
      const guestIps: Record<string, string | undefined> = {};
      for (const a of srcRt.attachments) guestIps[a.vmNetwork] = a.ip;
      hooks.onStep?.('source topology read');
      const st = await o.agent.run(manifest, {
        topology: vm.topology,
        guestIps,
        ...(hooks.onStep ? { onStep: hooks.onStep } : {}),
        ...(hooks.onSandbox ? { onSandbox: hooks.onSandbox } : {}),
      });
      const spec = parseVmSpec(from.vmSpec);
      return { name: st.name, qmp: qmpOf(st.name), netns: st.netns, taps: st.interfaces.map((i) => i.ifname), diskNodes: spec.disks.map((d) => driveNodeName(d.name)) };
    },

    async addMigrationNetwork(podName, netns) {
      const rt = await runtime(podName);
      const n = LOCAL_MIGRATION_NETWORK;
      const att = await o.networks.add({
        pod: parseLocalManifest(rt.manifest),
        containerId: `podvirt-${podName}-mig-${randomBytes(3).toString('hex')}`,
        netns,
        selection: { name: n.name, namespace: undefined, interface: n.ifname, mac: undefined, ips: undefined },
        ifname: n.ifname,
        config: {
          cniVersion: '1.1.0',
          name: n.name,
          type: 'podvirt',
          mode: 'migration',
          bridge: n.bridge,
          ipam: { type: 'host-local', ranges: [[{ subnet: n.subnet }]], dataDir: path.join(o.paths.stateDir, 'ipam') },
        },
        mac: undefined,
        uid: o.qemuUid,
        gid: o.qemuGid,
      });
      if (!att.ip) throw new FailedPrecondition(`migration network gave ${podName} no address`);
      return { ip: att.ip.split('/')[0]!, remove: () => o.networks.del(att, netns) };
    },

    activateTap: (netns, ifname) => activateTap({ netns, ifname }),

    async stopPod(name, opts) {
      // Either a source whose VM now runs elsewhere or a target that never ran it: no guest to shut down.
      await o.agent.stop(name, { deleteVolumes: opts.deleteVolumes, timeoutMs: 0 });
    },
  };
}
