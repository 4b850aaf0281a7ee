import { FailedPrecondition } from '../../lib/errors.js';
import type { PinMap } from '../plan/types.js';
import { queryCpusFast } from '../qmp/commands.js';
import type { QmpClient } from '../qmp/client.js';
import { setThreadAffinity } from './affinity.js';
import { listTasks, mapVcpuTids, type TaskInfo } from './threads.js';

export interface VcpuThread {
  index: number;
  /** Host tid. */
  tid: number;
  /** CPUs the thread may run on, read back from `Cpus_allowed_list`. */
  cpus: number[];
}

export interface PinReport {
  vcpuThreads: VcpuThread[];
  /** Every other QEMU thread and where it may run. */
  otherThreads: Array<{ tid: number; comm: string; cpus: number[] }>;
  /** Threads whose affinity differs from the plan (empty after a successful pin). */
  drift: Array<{ tid: number; want: number[]; have: number[] }>;
}

export interface PinnerOptions {
  procRoot?: string;
  /** Injected for tests; default sched_setaffinity via koffi. */
  setAffinity?: (tid: number, cpus: readonly number[]) => void;
}

const same = (a: readonly number[], b: readonly number[]) => a.length === b.length && [...a].sort((x, y) => x - y).every((v, i) => v === [...b].sort((x, y) => x - y)[i]);

/** What each host tid should be allowed to run on. */
async function wanted(qmp: QmpClient, qemuPid: number, pins: PinMap, procRoot: string) {
  const cpus = await queryCpusFast(qmp);
  const tasks = await listTasks(qemuPid, procRoot);
  const vcpus = mapVcpuTids(cpus.map((c) => ({ index: c['cpu-index'], nsTid: c['thread-id'] })), tasks);
  const want = new Map<number, number[]>();
  const byIndex = new Map(pins.vcpus.map((p) => [p.index, p.cpu]));
  for (const v of vcpus) {
    const cpu = byIndex.get(v.index);
    if (cpu === undefined) throw new FailedPrecondition(`vCPU ${v.index} is not in the pin map`);
    want.set(v.tid, [cpu]);
  }
  for (const t of tasks) if (!want.has(t.tid)) want.set(t.tid, [...pins.emulator]);
  return { vcpus, tasks, want };
}

function report(vcpus: Array<{ index: number; tid: number }>, tasks: TaskInfo[], want: Map<number, number[]>): PinReport {
  const byTid = new Map(tasks.map((t) => [t.tid, t]));
  const vcpuTids = new Set(vcpus.map((v) => v.tid));
  return {
    vcpuThreads: vcpus.map((v) => ({ index: v.index, tid: v.tid, cpus: byTid.get(v.tid)?.cpusAllowed ?? [] })),
    otherThreads: tasks.filter((t) => !vcpuTids.has(t.tid)).map((t) => ({ tid: t.tid, comm: t.comm, cpus: t.cpusAllowed })),
    drift: tasks.filter((t) => !same(t.cpusAllowed, want.get(t.tid) ?? [])).map((t) => ({ tid: t.tid, want: want.get(t.tid) ?? [], have: t.cpusAllowed })),
  };
}

/** Reads where QEMU's threads may run and compares with the plan (no changes). */
export async function checkPins(qmp: QmpClient, qemuPid: number, pins: PinMap, opts: PinnerOptions = {}): Promise<PinReport> {
  const procRoot = opts.procRoot ?? '/proc';
  const { vcpus, tasks, want } = await wanted(qmp, qemuPid, pins, procRoot);
  return report(vcpus, tasks, want);
}

/**
 * Pins each vCPU thread 1:1 to its planned CPU and every other QEMU thread to the emulator
 * set, then reads `Cpus_allowed_list` back and fails if any thread differs. Threads QEMU
 * creates later inherit the main thread's (emulator) affinity.
 */
export async function applyPins(qmp: QmpClient, qemuPid: number, pins: PinMap, opts: PinnerOptions = {}): Promise<PinReport> {
  const procRoot = opts.procRoot ?? '/proc';
  const set = opts.setAffinity ?? setThreadAffinity;
  const { vcpus, want } = await wanted(qmp, qemuPid, pins, procRoot);
  for (const [tid, cpus] of want) {
    try {
      set(tid, cpus);
    } catch (e) {
      // A worker thread may exit between listing and pinning; only a vCPU must not vanish.
      if (vcpus.some((v) => v.tid === tid)) throw e;
    }
  }
  const after = await listTasks(qemuPid, procRoot);
  const r = report(vcpus, after, want);
  if (r.drift.length) throw new FailedPrecondition(`pinning did not take: ${r.drift.map((d) => `tid ${d.tid} has ${d.have.join(',')} want ${d.want.join(',')}`).join('; ')}`);
  return r;
}
