/**
 * The cluster agent's VmRuntime on top of the VM core (agent/vm VmController, agent/plan): turns
 * a pod already running on the node (found by agent/kube/pod-discovery) into the plan's inputs
 * and starts one VmController per pod.
 *
 * Where QEMU runs: inside the pod. The launcher joins the container's cgroups (every hierarchy),
 * then enters every namespace of the container's process (mount, network, pid, IPC, UTS, cgroup)
 * and drops to the pod's non-root uid with no capabilities (the VM core's `inPodLauncher`). So
 * every path of the VM spec is the pod's: block volumes at their `volumeDevices` devicePath,
 * files on volume mounts, kernel/initrd, taps in the pod's netns. The container's device cgroup
 * applies to QEMU, so `/dev/kvm`, tun and vhost open only when the pod was allocated them.
 *
 * QEMU's run dir (QMP and serial sockets, pid file, serial log) is a directory in the pod,
 * `<podRunDir>/vms/<pod uid>` (podRunDir defaults to the agent's run dir, `/run/podvirt` in the
 * chart); the agent creates it through `/proc/<pid>/root` and reaches the sockets the same way
 * (through QEMU's own root once it runs). The pod needs no hostPath for it (Pod Security
 * `baseline` holds); with `readOnlyRootFilesystem` the pod mounts an emptyDir there. QEMU's
 * stdout/stderr log and the durable state stay on the node, in the agent's own dirs.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { V1Pod } from '@kubernetes/client-node';
import { FailedPrecondition, errorMessage } from '../../lib/errors.js';
import type { Logger } from '../../lib/log.js';
import { parseCpuList } from '../../lib/sysfs.js';
import { probeKvm } from '../launch/accel.js';
import { hostCgroupNsPrefix } from '../launch/launcher.js';
import { planVm, qemuMachineAliases, readNumaFacts, type PodFacts, type VolumeSource } from '../plan/index.js';
import { podVmInput } from '../spec/index.js';
import { VmController } from '../vm/index.js';
import type { VmExit, VmReport, VmRuntime, VmTarget } from './vm-runtime.js';

export interface VmCoreRuntimeOptions {
  /** Durable per-VM state (`<stateDir>/vms/<pod uid>/vm.json`). */
  stateDir: string;
  /** QEMU's log on the node (`<runDir>/vms/<pod uid>/qemu.log`). */
  runDir: string;
  /** QEMU's run dir as the pod sees it: `<podRunDir>/vms/<pod uid>` (default: `runDir`). */
  podRunDir?: string;
  procRoot?: string;
  sysRoot?: string;
  devRoot?: string;
  /** uid/gid QEMU runs as when the pod names none (KubeVirt's 107). */
  defaultUid?: number;
  log: Logger;
}

const NETWORK_STATUS = 'k8s.v1.cni.cncf.io/network-status';

/** Interface (tap) names in the pod netns per network attachment name, from Multus' annotation (pure). */
export function tapsFromNetworkStatus(pod: V1Pod, ifaces: ReadonlyArray<{ name: string; network: string; binding: string }>): Record<string, string> {
  const raw = pod.metadata?.annotations?.[NETWORK_STATUS];
  let status: Array<{ name?: string; interface?: string }> = [];
  try {
    status = raw ? (JSON.parse(raw) as typeof status) : [];
  } catch {
    status = [];
  }
  const ns = pod.metadata?.namespace ?? 'default';
  const taps: Record<string, string> = {};
  for (const i of ifaces) {
    if (i.binding !== 'tap') continue;
    const full = i.network.includes('/') ? i.network : `${ns}/${i.network}`;
    const hit = status.find((s) => s.name === full || s.name === i.network);
    if (!hit?.interface) throw new FailedPrecondition(`interface ${i.name}: network ${i.network} is not attached to the pod (no entry in ${NETWORK_STATUS})`);
    taps[i.name] = hit.interface;
  }
  return taps;
}

/** Device-plugin variables from a container process's environment (`PCI_RESOURCE_*`, `MDEV_PCI_RESOURCE_*`). */
export function deviceEnvOf(environ: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const kv of environ.split('\0')) {
    const i = kv.indexOf('=');
    if (i <= 0) continue;
    const k = kv.slice(0, i);
    if (k.startsWith('PCI_RESOURCE_') || k.startsWith('MDEV_PCI_RESOURCE_')) out[k] = kv.slice(i + 1);
  }
  return out;
}

export class VmCoreRuntime implements VmRuntime {
  private readonly vms = new Map<string, { vm: VmController; uid: string }>();
  private readonly exitCbs: Array<(e: VmExit) => void> = [];
  private readonly procRoot: string;

  constructor(private readonly o: VmCoreRuntimeOptions) {
    this.procRoot = o.procRoot ?? '/proc';
  }

  private dirs(uid: string): { state: string; run: string; pod: string } {
    return { state: path.join(this.o.stateDir, 'vms', uid), run: path.join(this.o.runDir, 'vms', uid), pod: path.join(this.o.podRunDir ?? this.o.runDir, 'vms', uid) };
  }

  /** A path of the pod's filesystem as the agent reaches it through a pod process. */
  private viaPod(pid: number, podPath: string): string {
    return path.join(this.procRoot, String(pid), 'root', podPath);
  }

  /** Removes QEMU's run dir in the pod, if `pid` is still a process of that pod (same mount namespace). */
  private async removePodRunDir(uid: string, pid: number, mntNs: string | undefined): Promise<void> {
    const ns = await fs.readlink(path.join(this.procRoot, String(pid), 'ns', 'mnt')).catch(() => undefined);
    if (ns === undefined || (mntNs !== undefined && ns !== mntNs)) return;
    await fs.rm(this.viaPod(pid, this.dirs(uid).pod), { recursive: true, force: true }).catch(() => undefined);
  }

  private controllerOpts(t: VmTarget) {
    const uid = t.pod.metadata!.uid!;
    return { name: `${t.pod.metadata!.name}`, stateDir: this.dirs(uid).state, procRoot: this.procRoot, log: this.o.log };
  }

  async start(t: VmTarget): Promise<VmReport> {
    return this.launch(t, false);
  }

  /** A migration target: QEMU from the source's recorded topology with `-incoming defer`, pinned, paused. */
  async startIncoming(t: VmTarget): Promise<VmController> {
    await this.launch(t, true);
    return this.vms.get(t.key)!.vm;
  }

  private async cgroupNsPrefix(): Promise<string[]> {
    const link = (p: string) => fs.readlink(p).catch(() => undefined);
    const host = path.join(this.procRoot, '1', 'ns', 'cgroup');
    return hostCgroupNsPrefix(await link(path.join(this.procRoot, 'self', 'ns', 'cgroup')), await link(host), host);
  }

  /** The uid/gid QEMU runs as in this pod. */
  runAs(pod: V1Pod): { uid: number; gid: number } {
    const uid = pod.spec?.securityContext?.runAsUser ?? this.o.defaultUid ?? 107;
    return { uid, gid: pod.spec?.securityContext?.runAsGroup ?? uid };
  }

  /** The VM's dir on the node (agent-owned: QEMU's log; migration work files go below it). */
  runDirOf(pod: V1Pod): string {
    return this.dirs(pod.metadata!.uid!).run;
  }

  /**
   * QEMU's run dir as QEMU sees it, in the pod. Files the agent writes for QEMU to read (e.g.
   * migration TLS credentials) go through `controller(key).agentPath(...)` of a path below it.
   */
  podRunDirOf(pod: V1Pod): string {
    return this.dirs(pod.metadata!.uid!).pod;
  }

  private async launch(t: VmTarget, incoming: boolean): Promise<VmReport> {
    const input = podVmInput(t.pod);
    const uid = t.pod.metadata!.uid!;
    const pid = t.sandbox.pid;
    const cpuset = parseCpuList(await fs.readFile(t.sandbox.cgroup.cpusFile, 'utf8'));
    // QEMU runs in the pod's mount namespace: the spec's paths are used as the pod sees them.
    const volumes: Record<string, VolumeSource> = {};
    for (const [name, v] of Object.entries(input.volumes)) {
      volumes[name] = v.kind === 'block' ? { kind: 'block', devicePath: v.devicePath } : { kind: 'filesystem', mountPath: v.mountPath };
    }
    const environ = await fs.readFile(path.join(this.procRoot, String(pid), 'environ'), 'utf8').catch(() => '');
    const dirs = this.dirs(uid);
    // The agent dials QEMU's sockets through /proc/<qemu pid>/root: that prefix counts against the
    // 107-byte unix socket limit too (pid_max is at most 4194304).
    const longest = path.join(this.procRoot, '4194304', 'root', dirs.pod, 'serial.sock');
    if (Buffer.byteLength(longest) > 107) throw new FailedPrecondition(`QEMU's run dir ${dirs.pod} is too long for the agent to reach its sockets (${longest}); use a shorter --run-dir`);
    // QEMU (the pod's uid) must traverse to its own run dir in the pod, which the VM core creates
    // and chowns. First, so that when the pod shares the node's filesystem (tests) the agent's
    // own dirs below do not make the shared parents private.
    const podParent = this.viaPod(pid, path.dirname(dirs.pod));
    try {
      await fs.mkdir(podParent, { recursive: true, mode: 0o755 });
      await fs.chmod(podParent, 0o755);
    } catch (e) {
      throw new FailedPrecondition(`cannot make QEMU's run dir ${dirs.pod} in the pod (mount an emptyDir at ${this.o.podRunDir ?? this.o.runDir}): ${errorMessage(e)}`, { cause: e });
    }
    await fs.mkdir(dirs.run, { recursive: true, mode: 0o750 });
    await fs.mkdir(dirs.state, { recursive: true, mode: 0o700 });
    const spec = input.spec;
    const facts: PodFacts = {
      vmName: t.pod.metadata!.name!,
      vmId: uid,
      cpuset,
      numa: await readNumaFacts(this.o.sysRoot ?? '/sys'),
      deviceEnv: deviceEnvOf(environ),
      volumes,
      taps: tapsFromNetworkStatus(t.pod, input.spec.interfaces),
      vhostNet: (input.resources.extended['devices.kubevirt.io/vhost-net'] ?? 0) > 0,
      kvmUsable: (await probeKvm({ dev: this.o.devRoot ?? '/dev', sys: this.o.sysRoot ?? '/sys' })).usable,
      machineAliases: await qemuMachineAliases(),
      runDir: dirs.pod,
      ...(t.topology !== undefined ? { topology: t.topology } : {}),
    };
    if (incoming && t.topology === undefined) throw new FailedPrecondition('a migration target needs the source VM\'s recorded topology');
    const plan = planVm(spec, facts, { incoming });
    const { uid: runAs, gid: runGroup } = this.runAs(t.pod);
    const vm = await VmController.start(
      this.controllerOpts(t),
      plan,
      { cgroupDirs: t.sandbox.cgroup.procs, uid: runAs, gid: runGroup },
      { cont: !incoming, inPod: { targetPid: pid, logDir: dirs.run }, launcherPrefix: await this.cgroupNsPrefix() },
    );
    this.track(t.key, uid, vm);
    return this.reportOf(vm, t);
  }

  async adopt(t: VmTarget): Promise<VmReport | undefined> {
    const vm = await VmController.adopt(this.controllerOpts(t));
    if (!vm) {
      // Nothing alive to adopt: whatever an ended VM left on the node is stale.
      const d = this.dirs(t.pod.metadata!.uid!);
      await this.removePodRunDir(t.pod.metadata!.uid!, t.sandbox.pid, undefined);
      await fs.rm(d.run, { recursive: true, force: true });
      await fs.rm(d.state, { recursive: true, force: true });
      return undefined;
    }
    this.track(t.key, t.pod.metadata!.uid!, vm);
    return this.reportOf(vm, t);
  }

  private track(key: string, uid: string, vm: VmController): void {
    this.vms.set(key, { vm, uid });
    vm.on('exit', (e: { phase: string; reason: string }) => {
      if (this.vms.get(key)?.vm !== vm) return;
      for (const cb of this.exitCbs) cb({ key, phase: e.phase === 'Stopped' ? 'Stopped' : 'Failed', reason: e.reason });
    });
  }

  private async reportOf(vm: VmController, t: VmTarget | undefined): Promise<VmReport> {
    const s = await vm.status();
    return {
      phase: s.phase,
      qemuPid: s.qemuPid,
      vcpuThreads: s.vcpuThreads.map((v) => ({ index: v.index, tid: v.tid, cpus: v.cpus })),
      topology: s.topology,
      qmpSocket: s.qmpSocket,
      ...(s.serialSocket ? { consoleSocket: s.serialSocket } : {}),
      ...(s.serialLog ? { serialLog: s.serialLog } : {}),
      ...(t ? { netns: t.sandbox.netns, cgroup: t.sandbox.cgroup.display } : {}),
    };
  }

  async stop(key: string, timeoutMs: number): Promise<void> {
    const e = this.vms.get(key);
    if (!e) return;
    this.vms.delete(key);
    const inPod = e.vm.stateSnapshot.inPod;
    try {
      await e.vm.shutdown(timeoutMs);
    } finally {
      if (inPod) await this.removePodRunDir(e.uid, inPod.targetPid, inPod.mntNs);
      await fs.rm(this.dirs(e.uid).run, { recursive: true, force: true });
      await fs.rm(this.dirs(e.uid).state, { recursive: true, force: true });
    }
  }

  async report(key: string): Promise<VmReport | undefined> {
    const e = this.vms.get(key);
    if (!e) return undefined;
    try {
      return await this.reportOf(e.vm, undefined);
    } catch (err) {
      this.o.log.warn({ pod: key, err: errorMessage(err) }, 'status failed');
      return undefined;
    }
  }

  async query(key: string, command: string): Promise<unknown> {
    const e = this.vms.get(key);
    if (!e) throw new FailedPrecondition(`no VM for ${key}`);
    return e.vm.qmp.execute(command);
  }

  /** The controller of a running VM (migration, hotplug). */
  controller(key: string): VmController | undefined {
    return this.vms.get(key)?.vm;
  }

  onExit(cb: (e: VmExit) => void): void {
    this.exitCbs.push(cb);
  }

  async detachAll(): Promise<void> {
    for (const { vm } of this.vms.values()) vm.release();
    this.vms.clear();
  }
}
