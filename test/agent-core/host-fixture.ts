import { randomBytes } from 'node:crypto';
import { promises as fs, readFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { exec } from '../../lib/exec.js';

/** Unprivileged ids QEMU runs as in these tests (no passwd entry needed by setpriv). */
export const QEMU_UID = 60107;
export const QEMU_GID = 60107;

/** A throwaway pod-like sandbox: v1 cpuset + memory cgroups, a v2 group, a netns, a temp dir QEMU's uid can reach. */
export interface CoreSandbox {
  id: string;
  dir: string;
  netns: string;
  netnsPath: string;
  cgroupDirs: string[];
  cpus: number[];
  dispose(): Promise<void>;
}

export async function makeSandbox(cpus: number[]): Promise<CoreSandbox> {
  const id = `pvt-core-${randomBytes(3).toString('hex')}`;
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), `${id}-`));
  await fs.chmod(dir, 0o711);
  const cs = path.join('/sys/fs/cgroup/cpuset', id);
  const mem = path.join('/sys/fs/cgroup/memory', id);
  // the unified (v2) hierarchy: only hugetlb is enabled on this host, but membership is what counts
  const v2 = path.join('/sys/fs/cgroup/unified', id);
  const made: string[] = [];
  let netnsMade = false;
  const dispose = async () => {
    if (netnsMade) await exec('ip', ['netns', 'del', id], { allowFailure: true });
    for (const d of made.reverse()) {
      // a killed process may linger for a moment in the group
      for (let i = 0; i < 100; i++) {
        try {
          await fs.rmdir(d);
          break;
        } catch {
          await new Promise((r) => setTimeout(r, 20));
        }
      }
    }
    await fs.rm(dir, { recursive: true, force: true });
  };
  try {
    await fs.mkdir(cs);
    made.push(cs);
    await fs.writeFile(path.join(cs, 'cpuset.mems'), '0');
    await fs.writeFile(path.join(cs, 'cpuset.cpus'), cpus.join(','));
    await fs.mkdir(mem);
    made.push(mem);
    await fs.mkdir(v2);
    made.push(v2);
    await exec('ip', ['netns', 'add', id]);
    netnsMade = true;
  } catch (e) {
    await dispose();
    throw e;
  }
  return { id, dir, netns: id, netnsPath: `/run/netns/${id}`, cgroupDirs: [cs, mem, v2], cpus, dispose };
}

export async function addTap(netns: string, name: string): Promise<void> {
  await exec('ip', ['-n', netns, 'tuntap', 'add', 'dev', name, 'mode', 'tap', 'user', String(QEMU_UID), 'group', String(QEMU_GID)]);
  await exec('ip', ['-n', netns, 'link', 'set', name, 'up']);
}

/** `/proc/<pid>/status` fields. */
export async function procStatus(pid: number): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const line of (await fs.readFile(`/proc/${pid}/status`, 'utf8')).split('\n')) {
    const i = line.indexOf(':');
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 1).trim();
  }
  return out;
}

/** Alive and not a zombie waiting for its parent to reap it. */
export function alive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

/**
 * Gives QEMU its own /dev/net/tun owned by QEMU's uid in a private mount namespace (what a
 * container runtime does for a pod granted devices.kubevirt.io/tun); the host's node stays 0600.
 */
export function withTunDevice(inner: readonly string[], scratchDir: string): string[] {
  const script =
    'd=$1; shift; mount -t tmpfs -o mode=0755,size=64k pvt-core-dev "$d" && mknod -m 0660 "$d/tun" c 10 200 && ' +
    `chown ${QEMU_UID}:${QEMU_GID} "$d/tun" && mount --bind "$d/tun" /dev/net/tun || exit 125; exec "$@"`;
  return ['unshare', '--mount', '--propagation', 'private', '--', 'sh', '-c', script, 'pvt-core-dev', scratchDir, ...inner];
}
