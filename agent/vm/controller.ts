import { EventEmitter } from 'node:events';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { sleep } from '../../lib/backoff.js';
import { DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound, Unavailable, errorMessage } from '../../lib/errors.js';
import { readJsonIfExists, writeJsonAtomic } from '../../lib/fs-atomic.js';
import { silentLogger, type Logger } from '../../lib/log.js';
import { findHostPid } from '../launch/host-pid.js';
import { inPodLauncher, launcherCommand, type LaunchSandbox } from '../launch/launcher.js';
import { logTail, spawnQemu } from '../launch/spawn.js';
import { applyPins, checkPins, type PinReport, type VcpuThread } from '../pin/pinner.js';
import { blockdevNodes, diskDeviceProps, driveNodeName, fileNodeName, netdevId, netdevProps, nicDeviceProps } from '../plan/devices.js';
import { defaultSerial, generatedMac } from '../plan/plan.js';
import { placePciDevice, removeDevice } from '../plan/topology.js';
import type { PinMap, TopologyDevice, VmPlan, VmTopology } from '../plan/types.js';
import { QmpClient, type QmpEvent } from '../qmp/client.js';
import * as qmpc from '../qmp/commands.js';

/** Lifecycle phase as the agent reports it. */
export type VmPhase = 'Starting' | 'Running' | 'Paused' | 'ShuttingDown' | 'Stopped' | 'Failed' | 'Unknown';

export interface VmStatus {
  name: string;
  phase: VmPhase;
  /** Why the VM is Stopped/Failed, or the last lifecycle event. */
  reason: string | undefined;
  qemuPid: number;
  /** QMP `query-status` when reachable. */
  runState: qmpc.RunState | undefined;
  vcpuThreads: VcpuThread[];
  serialLog: string | undefined;
  serialSocket: string | undefined;
  qmpSocket: string;
  logFile: string;
  topology: VmTopology;
  /** Count of guest resets (RESET events) seen by this controller. */
  resets: number;
}

/** The per-VM state file (`<stateDir>/vm.json`): enough to adopt the VM after an agent restart. */
export interface VmState {
  version: 1;
  name: string;
  qemuPid: number;
  qmpSocket: string;
  serialSocket: string | undefined;
  serialLog: string | undefined;
  pidFile: string;
  logFile: string;
  runDir: string;
  sandbox: LaunchSandbox;
  topology: VmTopology;
  pins: PinMap;
  argv: string[];
  startedAt: string;
  /**
   * Set when QEMU runs in a pod's namespaces: `qmpSocket`, `serialSocket`, `serialLog` and
   * `pidFile` are then the agent's view (`/proc/<qemuPid>/root/<pod path>`), `podPaths` QEMU's
   * sockets and pid file as it sees them, removed through the pod process's root at cleanup (the
   * serial log stays with the pod for a post-mortem).
   */
  inPod?: { targetPid: number; mntNs: string; podPaths: string[]; /** QEMU's run dir as QEMU sees it. */ runDir: string };
}

export interface VmControllerOptions {
  /** VM name (logs, status). */
  name: string;
  /** Directory for `vm.json` (durable per-VM state). */
  stateDir: string;
  procRoot?: string;
  log?: Logger;
  /** QMP connect timeout (QEMU start, adopt). Default 15 s. */
  connectTimeoutMs?: number;
}

export interface StartOptions {
  /** Resume the guest after pinning (the plan starts QEMU with -S). Default true. */
  cont?: boolean;
  /** Override the launcher argv (e.g. to wrap it); default `launcherCommand(plan.argv, sandbox)`. */
  launcherArgv?: string[];
  /**
   * In-cluster variant: enter every namespace of `targetPid` (a process of the pod) with
   * `inPodLauncher`; `sandbox.netns` is then ignored and every path of the plan is a path in the
   * pod. The agent reaches QEMU's run dir (sockets, pid file, serial log) through
   * `/proc/<pid>/root`; `logDir` is a host dir for `qemu.log` (default: the run dir in the pod).
   */
  inPod?: { targetPid: number; logDir?: string };
  /** Argv prepended to the launcher (e.g. `hostCgroupNsPrefix`). */
  launcherPrefix?: string[];
}

/** A disk to hotplug: its backing file or block device, as QEMU sees it. */
export interface HotplugDisk {
  name: string;
  file: string;
  block: boolean;
  format?: 'raw' | 'qcow2';
  readonly?: boolean;
  serial?: string;
  cache?: 'none' | 'writeback' | 'writethrough' | 'directsync' | 'unsafe';
}

export interface HotplugNic {
  name: string;
  mac?: string;
  tap?: string;
  vhost?: boolean;
  passtSocket?: string;
}

const STATE_FILE = 'vm.json';
const NAME = /^[a-z]([-a-z0-9]{0,22}[a-z0-9])?$/;

/**
 * Runs ONE VM: launches QEMU from a VmPlan inside a sandbox, pins it, drives it over QMP,
 * tracks its phase from events, hotplugs, and persists what an agent restart needs to adopt it.
 * Independent of Kubernetes and of local mode.
 *
 * Events: `'phase'` (VmPhase, reason), `'exit'` ({phase, reason}) once QEMU is gone,
 * `'qmp-event'` (QmpEvent).
 */
export class VmController extends EventEmitter {
  private qmpClient: QmpClient | undefined;
  private phaseNow: VmPhase = 'Starting';
  private reasonNow: string | undefined;
  private resets = 0;
  private exitReported = false;
  private readonly log: Logger;
  /** Set when this controller spawned QEMU: lets kill() wait until the child is reaped. */
  private childExited: Promise<unknown> | undefined;

  private constructor(
    private readonly opts: VmControllerOptions,
    private state: VmState,
  ) {
    super();
    this.log = (opts.log ?? silentLogger).child({ vm: opts.name });
  }

  /** Launches QEMU (paused), connects QMP, pins vCPUs, then resumes the guest. Kills QEMU if any step fails. */
  static async start(opts: VmControllerOptions, plan: VmPlan, sandbox: LaunchSandbox, so: StartOptions = {}): Promise<VmController> {
    const procRoot = opts.procRoot ?? '/proc';
    const rootOf = (pid: number) => (p: string) => path.join(procRoot, String(pid), 'root', p);
    const host = so.inPod ? rootOf(so.inPod.targetPid) : (p: string) => p;
    const runDir = host(path.dirname(plan.paths.qmpSocket));
    const podFiles = [plan.paths.qmpSocket, plan.paths.pidFile, ...(plan.paths.serialSocket ? [plan.paths.serialSocket] : [])];
    const mntNs = so.inPod ? await fs.readlink(path.join(procRoot, String(so.inPod.targetPid), 'ns', 'mnt')) : '';
    const launcher = [
      ...(so.launcherPrefix ?? []),
      ...(so.inPod
        ? inPodLauncher(plan.argv, so.inPod.targetPid, { cgroupDirs: sandbox.cgroupDirs, uid: sandbox.uid, gid: sandbox.gid })
        : (so.launcherArgv ?? launcherCommand(plan.argv, sandbox))),
    ];
    const spawned = await spawnQemu({
      qemuArgv: plan.argv,
      sandbox,
      runDir,
      staleFiles: podFiles.map(host),
      argv: launcher,
      ...(so.inPod?.logDir ? { logDir: so.inPod.logDir } : {}),
    });
    const state: VmState = {
      version: 1,
      name: opts.name,
      qemuPid: spawned.pid,
      qmpSocket: host(plan.paths.qmpSocket),
      serialSocket: plan.paths.serialSocket && host(plan.paths.serialSocket),
      serialLog: plan.paths.serialLog && host(plan.paths.serialLog),
      pidFile: host(plan.paths.pidFile),
      logFile: spawned.logFile,
      runDir,
      sandbox,
      topology: plan.topology,
      pins: plan.pins,
      argv: plan.argv,
      startedAt: new Date().toISOString(),
      ...(so.inPod ? { inPod: { targetPid: so.inPod.targetPid, mntNs, podPaths: podFiles, runDir: path.dirname(plan.paths.qmpSocket) } } : {}),
    };
    const vm = new VmController(opts, state);
    let exitedEarly: string | undefined;
    const stopWatch = new AbortController();
    let exited: Promise<unknown>;
    if (so.inPod) {
      // nsenter forks into the pod's pid namespace and exits once QEMU runs in the background:
      // QEMU's host pid comes from its pid file (pod-namespace pid) through NSpid.
      const r = await Promise.race([spawned.exited, sleep(15_000).then(() => undefined)]);
      if (!r || r.code !== 0) {
        throw new FailedPrecondition(`in-pod launcher failed (${r ? (r.signal ?? `code ${r.code}`) : 'timeout'}): ${await logTail(spawned.logFile)}`);
      }
      try {
        const nsPid = await waitForPidFile(state.pidFile, opts.connectTimeoutMs ?? 15_000);
        const hostPid = await findHostPid(nsPid, so.inPod.targetPid, opts.procRoot);
        if (!hostPid) throw new FailedPrecondition(`QEMU (pid ${nsPid} in the pod) not found from the host`);
        state.qemuPid = hostPid;
        // From now on reach the pod's files through QEMU's own root: it lives exactly as long as
        // QEMU does, even when the process we entered (a container's first process) goes first.
        const viaQemu = rootOf(hostPid);
        state.qmpSocket = viaQemu(plan.paths.qmpSocket);
        state.pidFile = viaQemu(plan.paths.pidFile);
        state.serialSocket = plan.paths.serialSocket && viaQemu(plan.paths.serialSocket);
        state.serialLog = plan.paths.serialLog && viaQemu(plan.paths.serialLog);
      } catch (e) {
        throw new FailedPrecondition(`QEMU did not come up in the pod: ${errorMessage(e)}: ${await logTail(spawned.logFile)}`, { cause: e });
      }
      exited = vm.pollGone(stopWatch.signal);
    } else {
      vm.childExited = spawned.exited;
      exited = spawned.exited;
    }
    void exited.then(async () => {
      if (!stopWatch.signal.aborted) exitedEarly = `QEMU exited: ${await logTail(spawned.logFile)}`;
    });
    const dialing = new AbortController();
    void exited.then(() => dialing.abort());
    try {
      const qmp = await Promise.race([
        QmpClient.connect(state.qmpSocket, { connectTimeoutMs: opts.connectTimeoutMs ?? 15_000, signal: dialing.signal }),
        exited.then(async () => {
          await sleep(20); // let the exit handler read the log
          throw new FailedPrecondition(exitedEarly ?? 'QEMU exited during start');
        }),
      ]);
      vm.attachQmp(qmp);
      await vm.persist();
      await applyPins(qmp, state.qemuPid, plan.pins, { procRoot: opts.procRoot });
      if (so.cont !== false) await qmpc.cont(qmp);
      vm.setPhase(so.cont === false ? 'Paused' : 'Running', 'started');
      stopWatch.abort();
      return vm;
    } catch (e) {
      vm.log.error({ err: errorMessage(e) }, 'start failed; killing QEMU');
      await vm.kill().catch(() => {});
      await fs.rm(path.join(opts.stateDir, STATE_FILE), { force: true });
      // If QEMU died on its own, its log says why better than a refused QMP connection does.
      if (!exitedEarly) await Promise.race([exited, sleep(500)]).then(() => sleep(20));
      stopWatch.abort();
      if (exitedEarly && !(e instanceof FailedPrecondition)) throw new FailedPrecondition(exitedEarly, { cause: e });
      throw e;
    }
  }

  /** Resolves once QEMU is gone (polling /proc; for QEMUs that are not our children). */
  private async pollGone(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      if (!(await this.isOurQemu())) return;
      await sleep(50, signal);
    }
    await new Promise(() => {}); // stopped watching: never resolves
  }

  /**
   * Re-attaches to a VM started by an earlier agent (from `<stateDir>/vm.json`): checks that
   * the pid is still that QEMU, reconnects QMP, verifies the pins and re-pins on drift.
   * Undefined when there is no state or the VM is gone (the state file is then removed).
   */
  static async adopt(opts: VmControllerOptions): Promise<VmController | undefined> {
    const file = path.join(opts.stateDir, STATE_FILE);
    const state = await readJsonIfExists<VmState>(file);
    if (!state) return undefined;
    if (state.version !== 1) throw new FailedPrecondition(`${file}: unknown state version ${String(state.version)}`);
    const vm = new VmController(opts, state);
    if (!(await vm.isOurQemu())) {
      await fs.rm(file, { force: true });
      return undefined;
    }
    const qmp = await QmpClient.connect(state.qmpSocket, { connectTimeoutMs: opts.connectTimeoutMs ?? 15_000 });
    vm.attachQmp(qmp);
    const st = await qmpc.queryStatus(qmp);
    vm.setPhase(phaseOf(st.status), 'adopted');
    const check = await checkPins(qmp, state.qemuPid, state.pins, { procRoot: opts.procRoot });
    if (check.drift.length) {
      vm.log.warn({ drift: check.drift }, 'pins drifted while the agent was away: re-pinning');
      await applyPins(qmp, state.qemuPid, state.pins, { procRoot: opts.procRoot });
    }
    return vm;
  }

  get name(): string {
    return this.state.name;
  }
  get qemuPid(): number {
    return this.state.qemuPid;
  }
  get topology(): VmTopology {
    return this.state.topology;
  }
  get pins(): PinMap {
    return this.state.pins;
  }
  get phase(): VmPhase {
    return this.phaseNow;
  }
  /** The live QMP connection (for migration and other callers: `vm.qmp.execute(...)`). */
  get qmp(): QmpClient {
    if (!this.qmpClient?.isOpen) throw new Unavailable(`VM ${this.name}: QMP is not connected`);
    return this.qmpClient;
  }
  get stateSnapshot(): Readonly<VmState> {
    return this.state;
  }

  private attachQmp(q: QmpClient): void {
    this.qmpClient = q;
    q.on('event', (ev: QmpEvent) => this.onEvent(ev));
    q.on('close', () => void this.onQmpClosed());
  }

  private onEvent(ev: QmpEvent): void {
    this.emit('qmp-event', ev);
    switch (ev.event) {
      case 'STOP':
        if (this.phaseNow !== 'ShuttingDown') this.setPhase('Paused', 'STOP');
        break;
      case 'RESUME':
        this.setPhase('Running', 'RESUME');
        break;
      case 'RESET':
        this.resets++;
        this.reasonNow = 'RESET';
        break;
      case 'SHUTDOWN':
        this.setPhase('ShuttingDown', `SHUTDOWN (${String(ev.data.reason ?? (ev.data.guest ? 'guest' : 'host'))})`);
        break;
      case 'GUEST_PANICKED':
        this.setPhase('Failed', `GUEST_PANICKED (${String((ev.data.info as { type?: string } | undefined)?.type ?? ev.data.action ?? '')})`);
        break;
      case 'DEVICE_DELETED': {
        const id = ev.data.device;
        const d = this.state.topology.devices.find((x) => x.id === id);
        // An unplug that completed after its caller timed out (the guest was slow) still frees the slot.
        if (d && !this.pendingUnplug.has(d.id)) {
          this.state.topology = removeDevice(this.state.topology, d.key);
          void this.persist();
        }
        break;
      }
    }
  }

  private readonly pendingUnplug = new Set<string>();

  private async onQmpClosed(): Promise<void> {
    // QEMU closes its monitor a moment before it exits: give it time to go before deciding it lives on.
    if (!(await this.waitGone(5_000))) {
      this.log.warn('QMP connection dropped while QEMU still runs; status() reconnects on demand');
      return;
    }
    await this.reportExit();
  }

  private async reportExit(): Promise<void> {
    if (this.exitReported) return;
    this.exitReported = true;
    const phase: VmPhase = this.phaseNow === 'ShuttingDown' || this.phaseNow === 'Stopped' ? 'Stopped' : 'Failed';
    const reason =
      phase === 'Stopped'
        ? (this.reasonNow ?? 'shut down')
        : this.phaseNow === 'Failed' && this.reasonNow
          ? this.reasonNow
          : `QEMU exited unexpectedly: ${await logTail(this.state.logFile, 3)}`;
    this.setPhase(phase, reason);
    this.emit('exit', { phase, reason });
  }

  private setPhase(p: VmPhase, reason: string | undefined): void {
    if (this.phaseNow === 'Failed' && p !== 'Stopped' && p !== 'Failed') return; // a panicked guest stays Failed until it stops
    this.phaseNow = p;
    this.reasonNow = reason;
    this.emit('phase', p, reason);
  }

  private async persist(): Promise<void> {
    await writeJsonAtomic(path.join(this.opts.stateDir, STATE_FILE), this.state);
  }

  /** Is `qemuPid` alive and still the QEMU we started (not a recycled pid)? */
  async isOurQemu(): Promise<boolean> {
    const procRoot = this.opts.procRoot ?? '/proc';
    try {
      const stat = await fs.readFile(path.join(procRoot, String(this.state.qemuPid), 'stat'), 'utf8');
      if (/^\d+ \(.*\) Z /.test(stat)) return false;
      const cmdline = (await fs.readFile(path.join(procRoot, String(this.state.qemuPid), 'cmdline'), 'utf8')).split('\0');
      const qmpArg = this.state.argv[this.state.argv.indexOf('-qmp') + 1] ?? this.state.qmpSocket;
      return cmdline.includes(qmpArg);
    } catch {
      return false;
    }
  }

  async status(): Promise<VmStatus> {
    let runState: qmpc.RunState | undefined;
    let vcpuThreads: VcpuThread[] = [];
    const alive = await this.isOurQemu();
    if (!alive) await this.reportExit();
    if (alive && this.qmpClient && !this.qmpClient.isOpen) await this.qmpClient.reconnect().catch(() => {});
    if (alive && this.qmpClient?.isOpen) {
      try {
        runState = (await qmpc.queryStatus(this.qmpClient)).status;
        vcpuThreads = (await checkPins(this.qmpClient, this.state.qemuPid, this.state.pins, { procRoot: this.opts.procRoot })).vcpuThreads;
      } catch (e) {
        this.log.warn({ err: errorMessage(e) }, 'status: QMP query failed');
      }
    }
    return {
      name: this.state.name,
      phase: this.phaseNow,
      reason: this.reasonNow,
      qemuPid: this.state.qemuPid,
      runState,
      vcpuThreads,
      serialLog: this.state.serialLog,
      serialSocket: this.state.serialSocket,
      qmpSocket: this.state.qmpSocket,
      logFile: this.state.logFile,
      topology: this.state.topology,
      resets: this.resets,
    };
  }

  /** Verifies pins now; re-pins on drift. */
  async repin(): Promise<PinReport> {
    return applyPins(this.qmp, this.state.qemuPid, this.state.pins, { procRoot: this.opts.procRoot });
  }

  async pause(): Promise<void> {
    await qmpc.stop(this.qmp);
  }
  async resume(): Promise<void> {
    await qmpc.cont(this.qmp);
  }
  async reset(): Promise<void> {
    await qmpc.systemReset(this.qmp);
  }

  /**
   * ACPI power-off, then `quit` and finally SIGKILL if the guest has not gone within `timeoutMs`.
   * Resolves once QEMU is gone; removes the state file. Idempotent.
   */
  async shutdown(timeoutMs = 30_000): Promise<'graceful' | 'killed'> {
    if (!(await this.isOurQemu())) {
      await this.cleanup();
      return 'graceful';
    }
    this.setPhase('ShuttingDown', 'shutdown requested');
    try {
      await qmpc.systemPowerdown(this.qmp);
      if (await this.waitGone(timeoutMs)) {
        await this.cleanup();
        return 'graceful';
      }
      this.log.info({ timeoutMs }, 'guest ignored the power button: killing');
    } catch (e) {
      this.log.warn({ err: errorMessage(e) }, 'powerdown failed: killing');
    }
    await this.kill();
    return 'killed';
  }

  /** SIGKILLs QEMU and waits until the process is gone; removes the state file. */
  async kill(): Promise<void> {
    this.setPhase('ShuttingDown', 'killed');
    this.reasonNow = 'killed';
    // Only signal the pid while it is still our QEMU: a reaped pid may already belong to someone else.
    const born = (await this.isOurQemu()) ? await this.procStartTime() : undefined;
    if (born !== undefined) {
      try {
        process.kill(this.state.qemuPid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
    if (!(await this.waitGone(10_000, born))) throw new DeadlineExceeded(`QEMU ${this.state.qemuPid} survived SIGKILL for 10 s`);
    await this.cleanup();
  }

  private async waitGone(timeoutMs: number, bornAt?: string): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    // Our own child: wait for the reap so the pid leaves the cgroup before we return.
    if (this.childExited) return Promise.race([this.childExited.then(() => true), sleep(timeoutMs).then(() => false)]);
    // Not our child: QEMU stops looking like QEMU (its cmdline empties when its memory goes) before
    // it closes its files, and its open volumes keep their mounts busy until then. So wait for the
    // pid to be a zombie or gone, with the start time guarding against a reused pid.
    const born = bornAt ?? ((await this.isOurQemu()) ? await this.procStartTime() : undefined);
    const exited = async () => {
      if (born === undefined) return !(await this.isOurQemu());
      const now = await this.procStartTime();
      return now === undefined || now !== born;
    };
    while (Date.now() < deadline) {
      if (await exited()) return true;
      await sleep(25);
    }
    return exited();
  }

  /** QEMU's start time (field 22 of /proc/<pid>/stat) while it is not a zombie; undefined otherwise. */
  private async procStartTime(): Promise<string | undefined> {
    try {
      const stat = await fs.readFile(path.join(this.opts.procRoot ?? '/proc', String(this.state.qemuPid), 'stat'), 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      return fields[0] === 'Z' ? undefined : fields[19];
    } catch {
      return undefined;
    }
  }

  private async cleanup(): Promise<void> {
    this.qmpClient?.close();
    await this.reportExit();
    await fs.rm(path.join(this.opts.stateDir, STATE_FILE), { force: true });
    for (const f of [this.state.qmpSocket, this.state.serialSocket, this.state.pidFile]) if (f) await fs.rm(f, { force: true });
    await this.cleanupInPod();
  }

  /** QEMU's root is gone with QEMU: remove its files through the pod process, if that is still the same pod. */
  private async cleanupInPod(): Promise<void> {
    const ip = this.state.inPod;
    if (!ip) return;
    const base = path.join(this.opts.procRoot ?? '/proc', String(ip.targetPid));
    const ns = await fs.readlink(path.join(base, 'ns', 'mnt')).catch(() => undefined);
    if (ns !== ip.mntNs) return; // the pod is gone (and its files with it), or the pid was reused
    for (const f of ip.podPaths) {
      await fs.rm(path.join(base, 'root', f), { force: true }).catch(() => undefined);
    }
  }

  /** The agent's path of a file as QEMU sees it (`/proc/<qemuPid>/root/...` when QEMU runs in a pod). */
  agentPath(qemuPath: string): string {
    return this.state.inPod ? path.join(this.opts.procRoot ?? '/proc', String(this.state.qemuPid), 'root', qemuPath) : qemuPath;
  }

  /** Closes QMP without touching QEMU (agent shutdown); `adopt` picks it up again. */
  release(): void {
    this.qmpClient?.removeAllListeners('close');
    this.qmpClient?.close();
    this.qmpClient = undefined;
  }

  /** Hotplugs a virtio-blk disk into a free root port; the topology (and state file) records it. */
  async hotplugDisk(d: HotplugDisk): Promise<TopologyDevice> {
    if (!NAME.test(d.name)) throw new InvalidArgument(`disk name "${d.name}": must be a lowercase DNS label of at most 24 characters`);
    const key = `disk:${d.name}`;
    if (this.state.topology.devices.some((x) => x.key === key)) throw new InvalidArgument(`disk ${d.name} already exists`);
    const { topology, device } = placePciDevice(this.state.topology, {
      key,
      kind: 'disk',
      id: `disk-${d.name}`,
      driver: 'virtio-blk-pci',
      serial: d.serial ?? defaultSerial(d.name),
      hotplugged: true,
    });
    if (!topology.rootPorts.every((p) => this.state.topology.rootPorts.some((o) => o.id === p.id))) {
      throw new FailedPrecondition(`VM ${this.name}: no free PCIe root port for hotplug (restart with more hotplugPorts)`);
    }
    const spec = { name: d.name, format: d.format ?? 'raw', readonly: d.readonly ?? false, cache: d.cache } as const;
    const src = { file: d.file, block: d.block };
    const [fileNode, fmtNode] = blockdevNodes(spec, src);
    const q = this.qmp;
    await qmpc.blockdevAdd(q, fileNode);
    try {
      await qmpc.blockdevAdd(q, fmtNode);
      try {
        await qmpc.deviceAdd(q, diskDeviceProps(device, spec, d.block, undefined));
      } catch (e) {
        await qmpc.blockdevDel(q, fmtNode['node-name']).catch(() => {});
        throw e;
      }
    } catch (e) {
      await qmpc.blockdevDel(q, fileNode['node-name']).catch(() => {});
      throw e;
    }
    this.state.topology = topology;
    await this.persist();
    return device;
  }

  /** device_del, wait for DEVICE_DELETED (the guest must cooperate), then drop the block nodes. */
  async unplugDisk(name: string, timeoutMs = 30_000): Promise<void> {
    const d = this.device(`disk:${name}`);
    await this.unplug(d, timeoutMs);
    await qmpc.blockdevDel(this.qmp, driveNodeName(name));
    await qmpc.blockdevDel(this.qmp, fileNodeName(name));
    this.state.topology = removeDevice(this.state.topology, d.key);
    await this.persist();
  }

  /** Hotplugs a virtio-net NIC on a pre-created tap (or passt socket) into a free root port. */
  async hotplugNic(n: HotplugNic): Promise<TopologyDevice> {
    if (!NAME.test(n.name)) throw new InvalidArgument(`interface name "${n.name}": must be a lowercase DNS label of at most 24 characters`);
    const key = `nic:${n.name}`;
    if (this.state.topology.devices.some((x) => x.key === key)) throw new InvalidArgument(`interface ${n.name} already exists`);
    if (!n.tap === !n.passtSocket) throw new InvalidArgument('hotplugNic: give exactly one of tap or passtSocket');
    const mac = (n.mac ?? generatedMac(`${this.name}/${n.name}/0`)).toLowerCase();
    const { topology, device } = placePciDevice(this.state.topology, { key, kind: 'nic', id: `net-${n.name}`, driver: 'virtio-net-pci', mac, hotplugged: true });
    if (!topology.rootPorts.every((p) => this.state.topology.rootPorts.some((o) => o.id === p.id))) {
      throw new FailedPrecondition(`VM ${this.name}: no free PCIe root port for hotplug (restart with more hotplugPorts)`);
    }
    const q = this.qmp;
    await qmpc.netdevAdd(q, netdevProps(n.name, n.tap ? { tap: n.tap, vhost: n.vhost } : { passtSocket: n.passtSocket! }));
    try {
      await qmpc.deviceAdd(q, nicDeviceProps(device, n.name));
    } catch (e) {
      await qmpc.netdevDel(q, netdevId(n.name)).catch(() => {});
      throw e;
    }
    this.state.topology = topology;
    await this.persist();
    return device;
  }

  async unplugNic(name: string, timeoutMs = 30_000): Promise<void> {
    const d = this.device(`nic:${name}`);
    await this.unplug(d, timeoutMs);
    await qmpc.netdevDel(this.qmp, netdevId(name));
    this.state.topology = removeDevice(this.state.topology, d.key);
    await this.persist();
  }

  /** Grows a disk online after its volume grew (`block_resize` on the format node). */
  async resizeDisk(name: string, sizeBytes: number): Promise<void> {
    this.device(`disk:${name}`);
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0) throw new InvalidArgument(`resizeDisk: bad size ${sizeBytes}`);
    await qmpc.blockResize(this.qmp, driveNodeName(name), sizeBytes);
  }

  private device(key: string): TopologyDevice {
    const d = this.state.topology.devices.find((x) => x.key === key);
    if (!d) throw new NotFound(`VM ${this.name} has no ${key.replace(':', ' ')}`);
    return d;
  }

  private async unplug(d: TopologyDevice, timeoutMs: number): Promise<void> {
    this.pendingUnplug.add(d.id);
    try {
      await qmpc.deviceDel(this.qmp, d.id, timeoutMs);
    } catch (e) {
      if (e instanceof DeadlineExceeded) {
        throw new DeadlineExceeded(`VM ${this.name}: the guest did not release ${d.id} within ${timeoutMs} ms (no DEVICE_DELETED); it stays plugged`);
      }
      throw e;
    } finally {
      this.pendingUnplug.delete(d.id);
    }
  }
}

function phaseOf(s: qmpc.RunState): VmPhase {
  switch (s) {
    case 'running':
      return 'Running';
    case 'paused':
    case 'prelaunch':
    case 'inmigrate':
    case 'postmigrate':
    case 'finish-migrate':
    case 'suspended':
      return 'Paused';
    case 'shutdown':
      return 'ShuttingDown';
    case 'guest-panicked':
    case 'internal-error':
    case 'io-error':
      return 'Failed';
    default:
      return 'Unknown';
  }
}

async function waitForPidFile(file: string, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = await fs.readFile(file, 'utf8').catch(() => '');
    const pid = Number(text.trim());
    if (Number.isInteger(pid) && pid > 0) return pid;
    if (Date.now() > deadline) throw new DeadlineExceeded(`no pid in ${file} after ${timeoutMs} ms`);
    await sleep(20);
  }
}
