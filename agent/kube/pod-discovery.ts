/**
 * Finds a running pod's sandbox on the node from its UID, the way a hostPID agent can: every
 * process of a pod sits in a cgroup whose path names the pod (`pod<uid>` with cgroupfs,
 * `kubepods-<qos>-pod<uid with _>.slice` with the systemd driver), and the container's own cgroup
 * is the next path element (its runtime ID, possibly wrapped as `cri-containerd-<id>.scope`).
 * The VM is launched by entering one of those processes' namespaces and joining its cgroups.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { NotFound } from '../../lib/errors.js';
import type { CgroupLayout } from '../sandbox/cgroup-layout.js';
import type { PodCgroupPaths } from '../sandbox/cgroup-plan.js';

/** One line of /proc/<pid>/cgroup: hierarchy id, controllers (`[]` on v2), path. */
export interface CgroupLine {
  hierarchy: string;
  controllers: string[];
  path: string;
}

export function parseProcCgroup(text: string): CgroupLine[] {
  const out: CgroupLine[] = [];
  for (const line of text.split('\n')) {
    const m = /^(\d+):([^:]*):(.*)$/.exec(line.trim());
    if (!m) continue;
    out.push({ hierarchy: m[1]!, controllers: m[2] ? m[2].split(',') : [], path: m[3]! });
  }
  return out;
}

export interface PodCgroupMatch {
  podUid: string;
  /** Path up to and including the pod's element. */
  podPath: string;
  /** The container element's runtime ID (hex), when the process sits in a container group. */
  containerId: string | undefined;
  /** Full path of the process's group (pod element plus container element). */
  containerPath: string | undefined;
}

const POD_CGROUPFS = /^pod([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$/;
const POD_SYSTEMD = /-pod([0-9a-f]{8}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{12})\.slice$/;
const CONTAINER = /^(?:[a-z-]+-)?([0-9a-f]{12,64})(?:\.scope)?$/;

/** Pod UID and container of one cgroup path, if it belongs to a pod (pure). */
export function matchPodCgroup(cgPath: string): PodCgroupMatch | undefined {
  const parts = cgPath.split('/');
  for (let i = 0; i < parts.length; i++) {
    const p = parts[i]!;
    const uid = POD_CGROUPFS.exec(p)?.[1] ?? POD_SYSTEMD.exec(p)?.[1]?.replace(/_/g, '-');
    if (!uid) continue;
    const podPath = parts.slice(0, i + 1).join('/');
    const next = parts[i + 1];
    const cm = next !== undefined ? CONTAINER.exec(next) : null;
    return {
      podUid: uid,
      podPath,
      containerId: cm ? cm[1] : undefined,
      containerPath: next !== undefined ? parts.slice(0, i + 2).join('/') : undefined,
    };
  }
  return undefined;
}

/** A process found in the pod, with its groups per hierarchy. */
export interface PodProcess {
  pid: number;
  containerId: string | undefined;
  lines: CgroupLine[];
}

/** What the VM core needs to launch into an existing pod. */
export interface DiscoveredSandbox {
  podUid: string;
  /** The process whose namespaces QEMU enters (a container's first process). */
  pid: number;
  containerId: string | undefined;
  /** `/proc/<pid>/ns/net` (under the injected proc root). */
  netns: string;
  /** The container's groups: QEMU's pid goes into every `procs` dir. */
  cgroup: PodCgroupPaths;
  /** The pod-level group on the cpuset (v1) or unified (v2) hierarchy. */
  podCgroup: string;
}

export interface DiscoveryOptions {
  procRoot?: string;
  layout: CgroupLayout;
}

/** Scans `<procRoot>/*\/cgroup` for processes of the pod (apply side). */
export async function findPodProcesses(podUid: string, procRoot = '/proc'): Promise<PodProcess[]> {
  const out: PodProcess[] = [];
  for (const e of await fs.readdir(procRoot)) {
    if (!/^\d+$/.test(e)) continue;
    let text: string;
    try {
      text = await fs.readFile(path.join(procRoot, e, 'cgroup'), 'utf8');
    } catch {
      continue; // exited while scanning
    }
    if (!text.includes(podUid) && !text.includes(podUid.replace(/-/g, '_'))) continue;
    const lines = parseProcCgroup(text);
    const m = lines.map((l) => matchPodCgroup(l.path)).find((x) => x?.podUid === podUid);
    if (m) out.push({ pid: Number(e), containerId: m.containerId, lines });
  }
  return out.sort((a, b) => a.pid - b.pid);
}

/** Picks the process: the wanted container's (by runtime ID), else any container process (pure). */
export function choosePodProcess(procs: PodProcess[], wantContainerId: string | undefined): PodProcess | undefined {
  if (wantContainerId) return procs.find((p) => p.containerId !== undefined && wantContainerId.startsWith(p.containerId));
  return procs[0];
}

/** Host directories of a process's groups for the layout's controllers (pure). */
export function cgroupPathsFor(layout: CgroupLayout, lines: CgroupLine[]): { paths: PodCgroupPaths; podCgroup: string } {
  const rel = (ctl: string | undefined) => {
    const l = ctl === undefined ? lines.find((x) => x.hierarchy === '0' && x.controllers.length === 0) : lines.find((x) => x.controllers.includes(ctl));
    if (!l) throw new NotFound(`process has no ${ctl ?? 'unified'} cgroup`);
    return l.path;
  };
  const podOf = (p: string) => matchPodCgroup(p)?.podPath ?? p;
  if (layout.version === 1) {
    const cs = path.join(layout.cpuset, rel('cpuset'));
    const mem = path.join(layout.memory, rel('memory'));
    return {
      paths: { display: cs, procs: [cs, mem], cpusFile: path.join(cs, 'cpuset.cpus') },
      podCgroup: path.join(layout.cpuset, podOf(rel('cpuset'))),
    };
  }
  const g = path.join(layout.root, rel(undefined));
  return {
    paths: { display: g, procs: [g], cpusFile: path.join(g, 'cpuset.cpus.effective') },
    podCgroup: path.join(layout.root, podOf(rel(undefined))),
  };
}

/**
 * The pod's sandbox: the process of container `containerId` (from the pod's containerStatuses,
 * `containerd://<id>` stripped) or, without one, the pod's lowest PID. NotFound while the
 * container is not running yet (the caller retries).
 */
export async function discoverPodSandbox(podUid: string, containerId: string | undefined, opts: DiscoveryOptions): Promise<DiscoveredSandbox> {
  const procRoot = opts.procRoot ?? '/proc';
  const procs = await findPodProcesses(podUid, procRoot);
  const p = choosePodProcess(procs, containerId);
  if (!p) {
    throw new NotFound(
      containerId
        ? `no process of container ${containerId.slice(0, 12)} of pod ${podUid} on this node (${procs.length} other pod processes)`
        : `no process of pod ${podUid} on this node`,
    );
  }
  const { paths, podCgroup } = cgroupPathsFor(opts.layout, p.lines);
  return { podUid, pid: p.pid, containerId: p.containerId, netns: path.join(procRoot, String(p.pid), 'ns', 'net'), cgroup: paths, podCgroup };
}

/** Runtime ID from a containerStatus `containerID` (`containerd://abc`, `cri-o://abc`, `docker://abc`). */
export function runtimeIdOf(containerID: string | undefined): string | undefined {
  if (!containerID) return undefined;
  const i = containerID.indexOf('://');
  return i >= 0 ? containerID.slice(i + 3) : containerID;
}
