import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { FailedPrecondition, NotFound } from '../../lib/errors.js';
import type { Logger } from '../../lib/log.js';
import { launcherCommand, probeKvm, type LaunchSandbox } from '../launch/index.js';
import { planVm, type PodFacts, type VolumeSource } from '../plan/index.js';
import { qemuMachineAliases, readNumaFacts } from '../plan/host-facts.js';
import { parseVmSpec } from '../spec/index.js';
import { VmController } from '../vm/index.js';
import type { PodSandbox } from '../sandbox/sandbox.js';
import type { VmBackend, VmLiveStatus, VmStartInput } from './backends.js';
import { deviceNode, localLauncher, type PodDeviceNode } from './local-launcher.js';
import { podRunDir, type LocalPaths } from './paths.js';
import type { AttachmentRecord } from './pod-store.js';

/** uid/gid QEMU runs as in local mode (KubeVirt's non-root launcher uses 107 too). */
export const QEMU_UID = 107;
export const QEMU_GID = 107;

/** The handle kept in the pod's runtime record: where VmController's own state file lives. */
interface Handle {
  controllerDir: string;
}

/** Which pod tap each VM interface uses: the attachment of the network it names. */
export function tapsFor(specText: string, attachments: readonly AttachmentRecord[]): Record<string, string> {
  const taps: Record<string, string> = {};
  for (const i of parseVmSpec(specText).interfaces) {
    if (i.binding !== 'tap') continue;
    const a = attachments.find((x) => x.vmNetwork === i.network);
    if (!a) throw new FailedPrecondition(`interface ${i.name}: network "${i.network}" is not attached to the pod`);
    taps[i.name] = a.ifname;
  }
  return taps;
}

/**
 * VMs through agent core's VmController: plan (agent/plan) from the spec and the pod's facts,
 * launch through local mode's device step wrapped around agent core's launcher (netns, cgroups,
 * setpriv), pin, resume; adopt after an agent restart; status, shutdown, hotplug.
 */
export async function createVmBackend(o: { paths: LocalPaths; log: Logger; sysRoot?: string }): Promise<VmBackend> {
  const vms = new Map<string, VmController>();
  let aliases: Record<string, string> | undefined;
  const controllerDir = (pod: string) => path.join(podRunDir(o.paths, pod), 'ctl');
  const get = (name: string) => {
    const vm = vms.get(name);
    if (!vm) throw new NotFound(`no VM controller for pod ${name}`);
    return vm;
  };
  const watch = (name: string, vm: VmController) => {
    vm.on('phase', (phase: string, reason: string | undefined) => o.log.info({ pod: name, phase, reason }, 'vm phase'));
  };
  return {
    uid: QEMU_UID,
    gid: QEMU_GID,
    async start(i: VmStartInput) {
      const spec = parseVmSpec(i.pod.vmSpec);
      aliases ??= await qemuMachineAliases();
      const volumes: Record<string, VolumeSource> = {};
      for (const v of i.volumes) {
        volumes[v.volume] = v.volumeMode === 'Block' ? { kind: 'block', devicePath: v.publishPath } : { kind: 'filesystem', mountPath: v.publishPath };
      }
      const kvm = i.devices.ids['devices.kubevirt.io/kvm']?.length ? await probeKvm() : { usable: false, reason: 'not allocated' };
      const facts: PodFacts = {
        vmName: i.pod.name,
        vmId: i.pod.uid ?? i.pod.name,
        cpuset: i.sandbox.cpus,
        numa: await readNumaFacts(o.sysRoot),
        deviceEnv: i.devices.envs,
        volumes,
        taps: tapsFor(i.pod.vmSpec, i.attachments),
        vhostNet: (i.devices.ids['devices.kubevirt.io/vhost-net']?.length ?? 0) > 0,
        kvmUsable: kvm.usable,
        machineAliases: aliases,
        runDir: path.join(i.runDir, 'vm'),
        topology: i.topology,
      };
      const plan = planVm(spec, facts, { startPaused: true, ...(i.incoming ? { incoming: true } : {}) });
      for (const n of plan.notes) o.log.info({ pod: i.pod.name, note: n }, 'plan');
      const sandbox: LaunchSandbox = { cgroupDirs: i.sandbox.cgroup.procs, netns: i.sandbox.netns, uid: QEMU_UID, gid: QEMU_GID };
      const nodes: PodDeviceNode[] = [];
      for (const d of i.devices.devices) {
        const n = await deviceNode(d.hostPath, d.containerPath);
        if (n) nodes.push(n);
      }
      await fs.mkdir(path.join(i.runDir, 'dev'), { recursive: true, mode: 0o755 });
      const launcherArgv = localLauncher(launcherCommand(plan.argv, sandbox), path.join(i.runDir, 'dev'), QEMU_UID, QEMU_GID, nodes);
      i.onStep?.('planned');
      const vm = await VmController.start({ name: i.pod.name, stateDir: controllerDir(i.pod.name), log: o.log }, plan, sandbox, { launcherArgv, ...(i.incoming ? { cont: false } : {}) });
      vms.set(i.pod.name, vm);
      watch(i.pod.name, vm);
      const handle: Handle = { controllerDir: controllerDir(i.pod.name) };
      return { handle, topology: vm.topology };
    },
    async adopt(name: string, handle: unknown, _sb: PodSandbox) {
      const dir = (handle as Handle | undefined)?.controllerDir ?? controllerDir(name);
      const vm = await VmController.adopt({ name, stateDir: dir, log: o.log });
      if (!vm) return false;
      vms.set(name, vm);
      watch(name, vm);
      return true;
    },
    async status(name: string): Promise<VmLiveStatus | undefined> {
      const vm = vms.get(name);
      if (!vm) return undefined;
      const s = await vm.status();
      return {
        phase: s.phase,
        qemuPid: s.qemuPid,
        vcpuThreads: s.vcpuThreads,
        serialLog: s.serialLog ?? '',
        qmpSocket: s.qmpSocket,
        serialSocket: s.serialSocket,
        topology: s.topology,
        uid: QEMU_UID,
        detail: { reason: s.reason, runState: s.runState, resets: s.resets, logFile: s.logFile },
      };
    },
    async stop(name: string, timeoutMs: number) {
      const vm = vms.get(name) ?? (await VmController.adopt({ name, stateDir: controllerDir(name), log: o.log }).catch(() => undefined));
      if (vm) {
        const how = await vm.shutdown(timeoutMs);
        o.log.info({ pod: name, how }, 'vm stopped');
      }
      vms.delete(name);
    },
    async release(name: string) {
      vms.get(name)?.release();
      vms.delete(name);
    },
    async hotplugDisk(name, d) {
      return get(name).hotplugDisk(d);
    },
    async unplugDisk(name, disk, timeoutMs) {
      await get(name).unplugDisk(disk, timeoutMs);
    },
    async hotplugNic(name, n) {
      return get(name).hotplugNic(n);
    },
    async unplugNic(name, iface, timeoutMs) {
      await get(name).unplugNic(iface, timeoutMs);
    },
    controller(name: string) {
      return get(name);
    },
  };
}
