/**
 * The cgroup the volume daemons live in. A container runtime stops a container by killing every
 * process of the container's cgroup, so a qemu-storage-daemon that stayed in the agent's
 * container cgroup would die with an agent restart and pull the disk from under running VMs. The
 * daemons therefore join a podvirt-owned group (`podvirt/qsd` by default) next to the kubelet's
 * groups: in every v1 hierarchy mounted under the cgroup root, and in the v2 tree (the only one
 * on a pure v2 host, `unified` on a hybrid one). The launcher shell joins the group before it
 * execs the daemon, so no daemon ever runs in the agent's container group.
 */
import { promises as fs, readlinkSync } from 'node:fs';
import * as path from 'node:path';
import { InvalidArgument, sysErrorCode } from '../lib/errors.js';

/** A mounted cgroup hierarchy (a `/proc/self/mounts` line of type cgroup or cgroup2). */
export interface CgroupMount {
  mountPoint: string;
  type: 'cgroup' | 'cgroup2';
  options: string[];
}

/** One directory of the daemons' group; cpuset (v1) groups need cpus and mems before they take a process. */
export interface QsdCgroupDir {
  dir: string;
  cpuset: boolean;
}

/** Cgroup mounts at or below `root` (pure). */
export function parseCgroupMounts(mountsText: string, root: string): CgroupMount[] {
  const out: CgroupMount[] = [];
  const base = root.replace(/\/+$/, '');
  for (const line of mountsText.split('\n')) {
    const [, mountPoint, type, opts] = line.split(' ');
    if (!mountPoint || (type !== 'cgroup' && type !== 'cgroup2')) continue;
    const mp = mountPoint.replace(/\\040/g, ' ');
    if (mp !== base && !mp.startsWith(`${base}/`)) continue;
    out.push({ mountPoint: mp, type, options: (opts ?? '').split(',') });
  }
  return out;
}

const SEGMENT = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** The group's directory in every hierarchy (pure); the name is a relative path like `podvirt/qsd`. */
export function planQsdCgroup(mounts: readonly CgroupMount[], name: string): QsdCgroupDir[] {
  const parts = name.split('/');
  if (!parts.every((p) => SEGMENT.test(p))) throw new InvalidArgument(`qsd cgroup "${name}": must be a relative path of names like podvirt/qsd`);
  if (mounts.length === 0) throw new InvalidArgument('no cgroup hierarchy is mounted under the cgroup root');
  return mounts.map((m) => ({ dir: path.join(m.mountPoint, ...parts), cpuset: m.type === 'cgroup' && m.options.includes('cpuset') }));
}

/** `sh -c` script: join each group given as an argument, then exec the rest of the arguments. */
export const JOIN_AND_EXEC = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1/cgroup.procs" || exit 125; shift; n=$((n-1)); done; exec "$@"';

async function readTrim(file: string): Promise<string> {
  try {
    return (await fs.readFile(file, 'utf8')).trim();
  } catch (e) {
    if (sysErrorCode(e) === 'ENOENT') return '';
    throw e;
  }
}

export interface QsdCgroupOptions {
  /** Where the hierarchies are mounted (default /sys/fs/cgroup; the agent mounts the host's there). */
  cgroupRoot?: string;
  /** The hierarchies (default: read from /proc/self/mounts under cgroupRoot); tests pass fake trees. */
  mounts?: CgroupMount[];
  procRoot?: string;
}

export class QsdCgroup {
  private made: Promise<QsdCgroupDir[]> | undefined;

  constructor(
    readonly name: string,
    private readonly o: QsdCgroupOptions = {},
  ) {
    planQsdCgroup([{ mountPoint: '/', type: 'cgroup2', options: [] }], name); // validate the name early
  }

  /** Creates the group (once; parents too, cpuset groups initialised from their parent) and returns its dirs. */
  dirs(): Promise<QsdCgroupDir[]> {
    this.made ??= this.make().catch((e: unknown) => {
      this.made = undefined;
      throw e;
    });
    return this.made;
  }

  private async make(): Promise<QsdCgroupDir[]> {
    const root = this.o.cgroupRoot ?? '/sys/fs/cgroup';
    const mounts = this.o.mounts ?? parseCgroupMounts(await fs.readFile(path.join(this.o.procRoot ?? '/proc', 'self', 'mounts'), 'utf8'), root);
    const dirs = planQsdCgroup(mounts, this.name);
    for (const d of dirs) {
      const mount = mounts.find((m) => d.dir.startsWith(`${m.mountPoint}/`))!;
      let cur = mount.mountPoint;
      for (const part of path.relative(mount.mountPoint, d.dir).split('/')) {
        const parent = cur;
        cur = path.join(cur, part);
        await fs.mkdir(cur).catch((e: unknown) => {
          if (sysErrorCode(e) !== 'EEXIST') throw e;
        });
        if (d.cpuset) {
          for (const f of ['cpuset.cpus', 'cpuset.mems']) {
            if ((await readTrim(path.join(cur, f))) === '') await fs.writeFile(path.join(cur, f), await readTrim(path.join(parent, f)));
          }
        }
      }
    }
    return dirs;
  }

  /**
   * The launcher prefix: join the group, then exec the daemon. When the agent runs in a cgroup
   * namespace of its own (cgroup v2 containers), the move happens from the host's (pid 1's)
   * cgroup namespace, since a process may only move others within its own namespace's tree.
   */
  async launcher(): Promise<string[]> {
    const dirs = (await this.dirs()).map((d) => d.dir);
    const proc = this.o.procRoot ?? '/proc';
    let ns: string[] = [];
    try {
      if (readlinkSync(path.join(proc, 'self', 'ns', 'cgroup')) !== readlinkSync(path.join(proc, '1', 'ns', 'cgroup'))) ns = ['nsenter', `--cgroup=${path.join(proc, '1', 'ns', 'cgroup')}`, '--'];
    } catch {
      /* no pid 1 to compare with: stay */
    }
    return [...ns, 'sh', '-c', JOIN_AND_EXEC, 'podvirt-qsd', String(dirs.length), ...dirs];
  }

  /** Is `pid` in the group in every hierarchy? */
  async holds(pid: number): Promise<boolean> {
    for (const d of await this.dirs()) {
      const procs = (await readTrim(path.join(d.dir, 'cgroup.procs'))).split('\n');
      if (!procs.includes(String(pid))) return false;
    }
    return true;
  }

  /** Moves a running daemon into the group (one started before the group existed or by an older agent). */
  async enrol(pid: number): Promise<void> {
    for (const d of await this.dirs()) await fs.writeFile(path.join(d.dir, 'cgroup.procs'), String(pid));
  }
}
