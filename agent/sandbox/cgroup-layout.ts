import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { FailedPrecondition } from '../../lib/errors.js';

/**
 * Where the cpuset and memory controllers live. cgroup v1 mounts one hierarchy per controller
 * (this machine's hybrid layout); v2 has one unified tree whose root lists the controllers.
 */
export type CgroupLayout =
  | { version: 1; cpuset: string; memory: string; /** the devices hierarchy, when mounted */ devices?: string }
  | { version: 2; root: string };

interface Mount {
  mountPoint: string;
  fsType: string;
  superOptions: string[];
}

/** Parses /proc/self/mountinfo (pure). */
export function parseMountinfo(text: string): Mount[] {
  const out: Mount[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    const [left, right] = line.split(' - ');
    if (left === undefined || right === undefined) continue;
    const lf = left.split(' ');
    const rf = right.split(' ');
    out.push({
      mountPoint: (lf[4] ?? '').replace(/\\040/g, ' '),
      fsType: rf[0] ?? '',
      superOptions: (rf[2] ?? '').split(','),
    });
  }
  return out;
}

/**
 * Picks the layout from mounts plus the v2 root's `cgroup.controllers` content (pure): v1 when both
 * controllers have v1 hierarchies, else v2 when the unified root offers both.
 */
export function chooseLayout(mounts: Mount[], v2Controllers: (mountPoint: string) => string | undefined): CgroupLayout {
  const v1 = (c: string) => mounts.find((m) => m.fsType === 'cgroup' && m.superOptions.includes(c))?.mountPoint;
  const cpuset = v1('cpuset');
  const memory = v1('memory');
  const devices = v1('devices');
  if (cpuset && memory) return devices ? { version: 1, cpuset, memory, devices } : { version: 1, cpuset, memory };
  for (const m of mounts.filter((x) => x.fsType === 'cgroup2')) {
    const ctl = (v2Controllers(m.mountPoint) ?? '').split(/\s+/);
    if (ctl.includes('cpuset') && ctl.includes('memory')) return { version: 2, root: m.mountPoint };
  }
  throw new FailedPrecondition('no cgroup hierarchy with the cpuset and memory controllers (v1 or v2) is mounted');
}

/** Detects the host's layout from a mountinfo file (injectable for tests). */
export async function detectCgroupLayout(mountinfo = '/proc/self/mountinfo'): Promise<CgroupLayout> {
  const mounts = parseMountinfo(await fs.readFile(mountinfo, 'utf8'));
  const controllers = new Map<string, string>();
  for (const m of mounts.filter((x) => x.fsType === 'cgroup2')) {
    try {
      controllers.set(m.mountPoint, await fs.readFile(path.join(m.mountPoint, 'cgroup.controllers'), 'utf8'));
    } catch {
      /* unreadable root: treated as offering nothing */
    }
  }
  return chooseLayout(mounts, (mp) => controllers.get(mp));
}
