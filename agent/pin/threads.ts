import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { FailedPrecondition, NotFound } from '../../lib/errors.js';
import { parseCpuList } from '../../lib/sysfs.js';

/** One thread of QEMU as the host sees it. */
export interface TaskInfo {
  /** Host tid (`/proc/<pid>/task/<tid>`). */
  tid: number;
  /** Tids outermost first (`NSpid:`); the last is the id inside QEMU's pid namespace. */
  nsTids: number[];
  comm: string;
  cpusAllowed: number[];
}

/** Reads every thread of `pid` under `procRoot` (injectable: fake trees in tests). */
export async function listTasks(pid: number, procRoot = '/proc'): Promise<TaskInfo[]> {
  const dir = path.join(procRoot, String(pid), 'task');
  let names: string[];
  try {
    names = await fs.readdir(dir);
  } catch {
    throw new NotFound(`process ${pid} is gone (${dir})`);
  }
  const out: TaskInfo[] = [];
  for (const n of names) {
    if (!/^\d+$/.test(n)) continue;
    let status: string;
    try {
      status = await fs.readFile(path.join(dir, n, 'status'), 'utf8');
    } catch {
      continue; // the thread exited between readdir and read
    }
    out.push(parseTaskStatus(Number(n), status));
  }
  return out.sort((a, b) => a.tid - b.tid);
}

export function parseTaskStatus(tid: number, status: string): TaskInfo {
  const field = (k: string) => new RegExp(`^${k}:\\s*(.*)$`, 'm').exec(status)?.[1]?.trim();
  const ns = field('NSpid');
  return {
    tid,
    nsTids: ns ? ns.split(/\s+/).map(Number) : [tid],
    comm: field('Name') ?? '',
    cpusAllowed: parseCpuList(field('Cpus_allowed_list') ?? ''),
  };
}

/**
 * Host tid of each vCPU: QMP `query-cpus-fast` reports `thread-id` in QEMU's own pid namespace;
 * the task whose innermost NSpid equals it is that vCPU (identity when QEMU shares the host's).
 */
export function mapVcpuTids(vcpus: ReadonlyArray<{ index: number; nsTid: number }>, tasks: readonly TaskInfo[]): Array<{ index: number; tid: number }> {
  return vcpus.map((v) => {
    const t = tasks.find((x) => x.nsTids[x.nsTids.length - 1] === v.nsTid);
    if (!t) throw new FailedPrecondition(`vCPU ${v.index}: no thread with NSpid ${v.nsTid} in QEMU`);
    return { index: v.index, tid: t.tid };
  });
}

/** The pod's exclusive CPUs from its cgroup: v1 `cpuset.cpus`, v2 `cpuset.cpus.effective`. */
export async function readCgroupCpus(cgroupDir: string, version: 1 | 2): Promise<number[]> {
  const file = path.join(cgroupDir, version === 1 ? 'cpuset.cpus' : 'cpuset.cpus.effective');
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch {
    throw new NotFound(`cannot read the pod's cpuset: ${file}`);
  }
  const cpus = parseCpuList(text);
  if (cpus.length === 0) throw new FailedPrecondition(`the pod's cpuset is empty (${file})`);
  return cpus;
}
