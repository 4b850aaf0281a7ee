import { promises as fs } from 'node:fs';
import { exec } from '../../lib/exec.js';
import { InvalidArgument } from '../../lib/errors.js';

/** A device node the pod was granted, as QEMU must see it. */
export interface PodDeviceNode {
  /** Where QEMU opens it (`/dev/net/tun`). */
  path: string;
  kind: 'c' | 'b';
  major: number;
  minor: number;
}

/**
 * The shell step that gives QEMU the pod's own view of its devices, like a container runtime's
 * /dev: in a fresh mount namespace it mounts a small tmpfs on DIR, creates each granted device node
 * there owned by QEMU's uid/gid, and bind-mounts it over the path QEMU opens; then it execs the
 * rest (agent core's launcher: netns, cgroups, setpriv, QEMU). Host device modes never change, so
 * a host whose /dev/net/tun is 0600 still works, and the node exists only in QEMU's namespace.
 */
export const DEVICE_SCRIPT =
  'd=$1 u=$2 g=$3 n=$4; shift 4; mount -t tmpfs -o mode=0755,size=64k podvirt-dev "$d" || exit 125; i=0; ' +
  'while [ "$n" -gt 0 ]; do i=$((i+1)); mknod -m 0660 "$d/$i" "$2" "$3" "$4" && chown "$u:$g" "$d/$i" && ' +
  'mount --bind "$d/$i" "$1" || exit 125; shift 4; n=$((n-1)); done; exec "$@"';

/**
 * Wraps a launcher argv: `unshare --mount --propagation slave` gives QEMU its own mount namespace
 * that still receives mounts made later under shared mounts (volumes published for hotplug, see
 * `ensureSharedMount`).
 */
export function localLauncher(inner: readonly string[], devDir: string, uid: number, gid: number, devices: readonly PodDeviceNode[]): string[] {
  if (!devDir.startsWith('/')) throw new InvalidArgument(`device dir ${devDir} must be absolute`);
  const args: string[] = [];
  for (const d of devices) {
    if (!d.path.startsWith('/dev/')) throw new InvalidArgument(`device ${d.path} is not under /dev`);
    args.push(d.path, d.kind, String(d.major), String(d.minor));
  }
  return ['unshare', '--mount', '--propagation', 'slave', '--', 'sh', '-c', DEVICE_SCRIPT, 'podvirt-devices', devDir, String(uid), String(gid), String(devices.length), ...args, ...inner];
}

/** major/minor of a device node. */
export async function deviceNode(hostPath: string, containerPath = hostPath): Promise<PodDeviceNode | undefined> {
  const st = await fs.stat(hostPath);
  if (!st.isCharacterDevice() && !st.isBlockDevice()) return undefined;
  const major = Math.floor(st.rdev / 256) & 0xfff;
  const minor = (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00);
  return { path: containerPath, kind: st.isCharacterDevice() ? 'c' : 'b', major, minor };
}

/**
 * Makes DIR a shared mount point (bind onto itself, `--make-rshared`), so that volumes published
 * under it later also appear in the mount namespaces of QEMUs started earlier (their namespaces
 * are slaves): what kubelet does for its pods directory. Idempotent.
 */
export async function ensureSharedMount(dir: string): Promise<void> {
  await fs.mkdir(dir, { recursive: true });
  const info = await fs.readFile('/proc/self/mountinfo', 'utf8');
  const line = info.split('\n').find((l) => l.split(' ')[4] === dir);
  if (line && / shared:\d+/.test(line.split(' - ')[0] ?? '')) return;
  if (!line) await exec('mount', ['--bind', dir, dir]);
  await exec('mount', ['--make-rshared', dir]);
}

/** Undoes ensureSharedMount (when no VM runs any more); lazily, since the agent's own log is open under it. */
export async function releaseSharedMount(dir: string): Promise<void> {
  const info = await fs.readFile('/proc/self/mountinfo', 'utf8');
  if (info.split('\n').some((l) => l.split(' ')[4] === dir)) await exec('umount', ['--lazy', dir]);
}
