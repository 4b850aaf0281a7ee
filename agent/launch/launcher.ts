/**
 * How QEMU is started "as the pod would run it", as a pure argv (plan-tested):
 *
 *   sh -c <LAUNCH_SCRIPT> podvirt-launch N cg1..cgN \
 *     [nsenter --net=NETNS --] \
 *     setpriv --reuid=U --regid=G --clear-groups --inh-caps=-all --bounding-set=-all --no-new-privs -- \
 *     qemu-system-x86_64 ...
 *
 * The shell writes its own pid into each cgroup's `cgroup.procs` while it is still root and
 * still sees the host's cgroup filesystem (so the pod's cgroup needs no delegation to QEMU's
 * uid), then execs nsenter, which enters the namespaces and execs setpriv, which drops to the
 * pod's uid/gid with no capabilities and no way to regain any, and execs QEMU. Every exec keeps
 * the pid, so nothing of podvirt stays resident: the pid the agent spawned *is* QEMU.
 */

/** Where and as whom QEMU runs. */
export interface LaunchSandbox {
  /** cgroup directories whose `cgroup.procs` take QEMU's pid (one per v1 hierarchy, or the v2 group). */
  cgroupDirs: string[];
  /** Network namespace to run in (a path like /run/netns/x or /proc/<pid>/ns/net); none = the agent's. */
  netns?: string;
  uid: number;
  gid: number;
}

export const LAUNCH_SCRIPT =
  'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1/cgroup.procs" || exit 125; shift; n=$((n-1)); done; exec "$@"';

export function setprivArgs(uid: number, gid: number): string[] {
  return ['setpriv', `--reuid=${uid}`, `--regid=${gid}`, '--clear-groups', '--inh-caps=-all', '--bounding-set=-all', '--no-new-privs', '--'];
}

function checkIds(uid: number, gid: number): void {
  if (!Number.isInteger(uid) || uid <= 0 || !Number.isInteger(gid) || gid <= 0) {
    throw new Error(`QEMU must run as a non-root uid/gid, got ${uid}:${gid}`);
  }
}

const cgroupPrefix = (dirs: readonly string[]) => ['sh', '-c', LAUNCH_SCRIPT, 'podvirt-launch', String(dirs.length), ...dirs];

/** Local mode: QEMU in the given cgroups and netns, as uid/gid, no capabilities. */
export function launcherCommand(qemuArgv: readonly string[], sb: LaunchSandbox): string[] {
  checkIds(sb.uid, sb.gid);
  const ns = sb.netns ? ['nsenter', `--net=${sb.netns}`, '--'] : [];
  return [...cgroupPrefix(sb.cgroupDirs), ...ns, ...setprivArgs(sb.uid, sb.gid), ...qemuArgv];
}

/**
 * Prefix that runs the launcher in the host's cgroup namespace when the agent has one of its own
 * (a container on cgroup v2): a process may only move others between groups its namespace
 * contains, and the pod's groups lie outside the agent container's. Pure: the caller reads the
 * two `ns/cgroup` links (its own and pid 1's, the host's init with hostPID).
 */
export function hostCgroupNsPrefix(selfNs: string | undefined, hostNs: string | undefined, hostNsPath: string): string[] {
  return selfNs && hostNs && selfNs !== hostNs ? ['nsenter', `--cgroup=${hostNsPath}`, '--'] : [];
}

/**
 * The in-cluster variant: enter every namespace of a process already in the pod (its pause or
 * compute container's first process): network, IPC, UTS, mount, pid and cgroup, so every path in
 * QEMU's argv (volume devices at their devicePath, files on volume mounts, its run dir) resolves
 * in the pod's filesystem, taps are found in the pod's netns, and /proc/self/cgroup reads as the
 * container sees it. The cgroup.procs writes happen before nsenter, while the shell still sees
 * the host's cgroup tree. Entering a pid namespace makes nsenter fork; the inner shell starts
 * QEMU in the background and exits, so QEMU is re-parented to the pod's init and nsenter exits
 * too: again no process of ours remains. QEMU's pid inside the pod comes from its `-pidfile`;
 * `findHostPid` maps it to the host pid.
 */
export function inPodLauncher(qemuArgv: readonly string[], targetPid: number, sb: Omit<LaunchSandbox, 'netns'>): string[] {
  checkIds(sb.uid, sb.gid);
  if (!Number.isInteger(targetPid) || targetPid <= 1) throw new Error(`bad target pid ${targetPid}`);
  return [
    ...cgroupPrefix(sb.cgroupDirs),
    'nsenter',
    `--target=${targetPid}`,
    '--net',
    '--ipc',
    '--uts',
    '--mount',
    '--pid',
    '--cgroup',
    '--',
    'sh',
    '-c',
    '"$@" </dev/null &',
    'podvirt-bg',
    ...setprivArgs(sb.uid, sb.gid),
    ...qemuArgv,
  ];
}
