import { promises as fs } from 'node:fs';
import { FailedPrecondition, sysErrorCode } from '../../lib/errors.js';
import { sleep } from '../../lib/backoff.js';
import type { CgroupOp } from './cgroup-plan.js';

/** Applies cgroup ops in order; `mkdir` of an existing group and `rmdir` of a missing one are no-ops. */
export async function applyCgroupOps(ops: readonly CgroupOp[]): Promise<void> {
  for (const o of ops) {
    if (o.op === 'mkdir') {
      await fs.mkdir(o.path, { recursive: true });
    } else if (o.op === 'rmdir') {
      await rmdirCgroup(o.path);
    } else {
      let value = o.value;
      if (value === '' && o.inheritFrom !== undefined) {
        const current = (await fs.readFile(o.path, 'utf8')).trim();
        if (current !== '') continue;
        value = (await fs.readFile(o.inheritFrom, 'utf8')).trim();
      }
      try {
        await fs.writeFile(o.path, value);
      } catch (e) {
        if (o.optional && sysErrorCode(e) === 'ENOENT') continue;
        throw new FailedPrecondition(`cannot write "${value}" to ${o.path}: ${(e as Error).message}`, { cause: e });
      }
    }
  }
}

/** rmdir a cgroup; the kernel refuses (EBUSY) while an exiting task is still being reaped, so retry briefly. */
async function rmdirCgroup(dir: string): Promise<void> {
  for (let i = 0; ; i++) {
    try {
      await fs.rmdir(dir);
      return;
    } catch (e) {
      const code = sysErrorCode(e);
      if (code === 'ENOENT') return;
      if (code === 'EBUSY' && i < 50) {
        await sleep(100);
        continue;
      }
      throw new FailedPrecondition(`cannot remove cgroup ${dir}: ${(e as Error).message}`, { cause: e });
    }
  }
}

/** Moves a process (all its threads) into each group. */
export async function enterCgroups(pid: number, dirs: readonly string[]): Promise<void> {
  for (const d of dirs) await fs.writeFile(`${d}/cgroup.procs`, String(pid));
}

/** Pids currently in a group (empty when the group is gone). */
export async function cgroupPids(dir: string): Promise<number[]> {
  try {
    return (await fs.readFile(`${dir}/cgroup.procs`, 'utf8'))
      .split('\n')
      .filter(Boolean)
      .map(Number);
  } catch (e) {
    if (sysErrorCode(e) === 'ENOENT') return [];
    throw e;
  }
}
