import { promises as fs } from 'node:fs';
import * as path from 'node:path';

/** `NSpid:` of /proc/<pid>/status (or task/<tid>/status): ids outermost (host) first. */
export async function readNsPids(statusFile: string): Promise<number[] | undefined> {
  let text: string;
  try {
    text = await fs.readFile(statusFile, 'utf8');
  } catch {
    return undefined;
  }
  const m = /^NSpid:\s*(.*)$/m.exec(text);
  return m ? m[1]!.trim().split(/\s+/).map(Number) : undefined;
}

/**
 * Host pid of the process that is `nsPid` inside the pid namespace of `targetPid` (a process of
 * the pod): scans `<proc>/*` for a process in the same pid namespace whose innermost NSpid matches.
 */
export async function findHostPid(nsPid: number, targetPid: number, procRoot = '/proc'): Promise<number | undefined> {
  const want = await fs.readlink(path.join(procRoot, String(targetPid), 'ns', 'pid'));
  for (const e of await fs.readdir(procRoot)) {
    if (!/^\d+$/.test(e)) continue;
    try {
      if ((await fs.readlink(path.join(procRoot, e, 'ns', 'pid'))) !== want) continue;
    } catch {
      continue;
    }
    const ids = await readNsPids(path.join(procRoot, e, 'status'));
    if (ids && ids[ids.length - 1] === nsPid) return Number(e);
  }
  return undefined;
}
