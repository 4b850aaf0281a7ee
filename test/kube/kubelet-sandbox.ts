/**
 * What a kubelet + container runtime leave on a node for a running pod, made by hand for tests:
 * a network namespace, a pod cgroup named `pod<uid>` with one container cgroup below it (exclusive
 * CPUs in the cpuset on v1; the unified tree on v2), and a sleeping "compute container" process in
 * both. The agent's discovery scans /proc for it exactly as on a real node.
 *
 * With `pod`, the container also gets what a runtime gives it beyond a netns: its own pid
 * namespace (the container's process is pid 1 there and reaps orphans, as pause does) and its
 * own mount namespace with a fresh /proc, emptyDir-like tmpfs mounts and its volume devices
 * (device nodes at their `devicePath`, owned by the pod's uid), none of which the host sees.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { exec } from '../../lib/exec.js';
import { sleep, waitFor } from '../../lib/backoff.js';
import { detectCgroupLayout, type CgroupLayout } from '../../agent/sandbox/cgroup-layout.js';

/** The pod's private filesystem view (`createKubeletSandbox(..., { pod })`). */
export interface PodFilesystem {
  /** Directories that get a fresh tmpfs in the pod (emptyDir volumes); created on the host if missing. */
  emptyDirs?: string[];
  /** Block volumes: a node for `hostDevice` at `devicePath` (its directory becomes a tmpfs in the pod). */
  devices?: Array<{ devicePath: string; hostDevice: string }>;
}

export interface KubeletSandbox {
  uid: string;
  containerId: string;
  netnsName: string;
  pid: number;
  /** Container cgroup dirs (every hierarchy). */
  containerDirs: string[];
  layout: CgroupLayout;
  destroy(): Promise<void>;
}

async function writeIfEmpty(file: string, fromFile: string): Promise<void> {
  const cur = (await fs.readFile(file, 'utf8')).trim();
  if (cur === '') await fs.writeFile(file, (await fs.readFile(fromFile, 'utf8')).trim());
}

/** Kills every process in the groups and removes them, deepest first. */
async function removeGroups(dirs: string[]): Promise<void> {
  for (const d of dirs) {
    for (let i = 0; i < 50; i++) {
      let pids: number[];
      try {
        pids = (await fs.readFile(path.join(d, 'cgroup.procs'), 'utf8')).split('\n').filter(Boolean).map(Number);
      } catch {
        break;
      }
      for (const p of pids) {
        try {
          process.kill(p, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
      try {
        await fs.rmdir(d);
        break;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') break;
        await sleep(100);
      }
    }
  }
}

/**
 * @param parent unique top-level group name (e.g. `pvt-kube-<rand>`), removed by destroy().
 * @param cpus CPUs of the container's cpuset (v1); all online CPUs when omitted.
 */
export async function createKubeletSandbox(parent: string, opts: { cpus?: string; uid?: string; runAsUser?: number; pod?: PodFilesystem } = {}): Promise<KubeletSandbox> {
  const layout = await detectCgroupLayout();
  const uid = opts.uid ?? randomUUID();
  const containerId = randomBytes(32).toString('hex');
  const netnsName = `${parent}-${uid.slice(0, 8)}`;
  const rel = [parent, `pod${uid}`, containerId];
  const created: string[] = [];
  const sharedDirs: string[] = [];
  const roots = layout.version === 1 ? [layout.cpuset, layout.memory] : [layout.root];
  let child: ChildProcess | undefined;
  const destroy = async () => {
    if (child?.pid) {
      try {
        process.kill(child.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    await removeGroups([...created].reverse());
    for (const d of sharedDirs) await fs.rmdir(d).catch(() => undefined);
    await exec('ip', ['netns', 'delete', netnsName]).catch(() => undefined);
  };
  try {
    for (const root of roots) {
      let dir = root;
      for (const part of rel) {
        const parentDir = dir;
        dir = path.join(dir, part);
        if (part === parent) {
          // Shared by the sandboxes of one test run: made once, removed by whoever leaves it empty.
          await fs.mkdir(dir).catch((e: NodeJS.ErrnoException) => {
            if (e.code !== 'EEXIST') throw e;
          });
          sharedDirs.push(dir);
        } else {
          await fs.mkdir(dir);
          created.push(dir);
        }
        if (layout.version === 1 && root === layout.cpuset) {
          await writeIfEmpty(path.join(dir, 'cpuset.mems'), path.join(parentDir, 'cpuset.mems'));
          if (opts.cpus && part === containerId) await fs.writeFile(path.join(dir, 'cpuset.cpus'), opts.cpus);
          else await writeIfEmpty(path.join(dir, 'cpuset.cpus'), path.join(parentDir, 'cpuset.cpus'));
        }
      }
    }
    await exec('ip', ['netns', 'add', netnsName]);
    await exec('ip', ['-n', netnsName, 'link', 'set', 'lo', 'up']);
    const user = String(opts.runAsUser ?? 107);
    const dirs = roots.map((r) => path.join(r, ...rel));
    if (opts.pod) {
      const pid = await startPodInit(opts.pod, netnsName, dirs, user, (c) => (child = c));
      return { uid, containerId, netnsName, pid, containerDirs: dirs, layout, destroy };
    }
    // The "container": a process in its own netns (and, through `ip netns exec`, its own mount ns),
    // non-root with no capabilities as a VM pod's container runs (default uid 107).
    child = spawn(
      'ip',
      ['netns', 'exec', netnsName, 'setpriv', `--reuid=${user}`, `--regid=${user}`, '--clear-groups', '--inh-caps=-all', '--bounding-set=-all', '--', 'sleep', 'infinity'],
      { stdio: 'ignore', detached: true },
    );
    child.unref();
    const pid = child.pid!;
    for (const d of dirs) await fs.writeFile(path.join(d, 'cgroup.procs'), String(pid));
    // `ip netns exec` execs sleep in place: wait until the pid is sleep inside the netns.
    await waitFor(
      async () => {
        const comm = (await fs.readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '')).trim();
        return comm === 'sleep' ? true : undefined;
      },
      { timeoutMs: 5000, what: 'sandbox process' },
    );
    return { uid, containerId, netnsName, pid, containerDirs: dirs, layout, destroy };
  } catch (e) {
    await destroy();
    throw e;
  }
}

const shq = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/**
 * Starts the pod's init: `unshare` makes a mount and pid namespace (and mounts a /proc of that pid
 * namespace), `nsenter` adds the pod's netns, then a root shell joins the container's cgroups
 * (`0` = itself), mounts the tmpfs dirs, makes the device nodes, and drops to the pod's uid with no
 * capabilities as `sh -c 'sleep infinity & wait'`: pid 1 of the pod, reaping what is orphaned into
 * it (QEMU, after the in-pod launcher's shell exits). Returns that process's host pid.
 */
async function startPodInit(pod: PodFilesystem, netnsName: string, cgroupDirs: string[], user: string, setChild: (c: ChildProcess) => void): Promise<number> {
  const lines = ['set -e'];
  for (const d of cgroupDirs) lines.push(`echo 0 > ${shq(path.join(d, 'cgroup.procs'))}`);
  const tmpfs = new Set([...(pod.emptyDirs ?? []), ...(pod.devices ?? []).map((d) => path.dirname(d.devicePath))]);
  for (const d of tmpfs) {
    await fs.mkdir(d, { recursive: true });
    lines.push(`mount -t tmpfs -o mode=0755,size=16m pvt-pod ${shq(d)}`);
  }
  for (const d of pod.devices ?? []) {
    const st = await fs.stat(d.hostDevice);
    if (!st.isBlockDevice()) throw new Error(`${d.hostDevice} is not a block device`);
    const major = Math.floor(st.rdev / 256) & 0xfff;
    const minor = (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00);
    lines.push(`mknod ${shq(d.devicePath)} b ${major} ${minor}`, `chown ${user}:${user} ${shq(d.devicePath)}`, `chmod 0660 ${shq(d.devicePath)}`);
  }
  lines.push(`exec setpriv --reuid=${user} --regid=${user} --clear-groups --inh-caps=-all --bounding-set=-all -- sh -c 'sleep infinity & wait'`);
  const c = spawn('unshare', ['--mount', '--propagation', 'private', '--pid', '--fork', '--mount-proc', 'nsenter', `--net=/run/netns/${netnsName}`, '--', 'sh', '-c', lines.join('\n')], {
    stdio: 'ignore',
    detached: true,
  });
  c.unref();
  setChild(c);
  // unshare waits for its child, the pod's init: ready once that runs as the pod's user with its sleep.
  return waitFor(
    async () => {
      const kids = (await fs.readFile(`/proc/${c.pid}/task/${c.pid}/children`, 'utf8').catch(() => '')).trim().split(/\s+/).filter(Boolean);
      const init = Number(kids[0]);
      if (!init) return undefined;
      const status = await fs.readFile(`/proc/${init}/status`, 'utf8').catch(() => '');
      if (!new RegExp(`^Uid:\\s+${user}\\s`, 'm').test(status)) return undefined;
      const grandkids = (await fs.readFile(`/proc/${init}/task/${init}/children`, 'utf8').catch(() => '')).trim().split(/\s+/).filter(Boolean);
      for (const g of grandkids) if ((await fs.readFile(`/proc/${g}/comm`, 'utf8').catch(() => '')).trim() === 'sleep') return init;
      return undefined;
    },
    { timeoutMs: 5000, what: 'pod init' },
  );
}
