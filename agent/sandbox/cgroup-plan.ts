import * as path from 'node:path';
import { InvalidArgument } from '../../lib/errors.js';
import { formatCpuList } from '../../lib/sysfs.js';
import type { CgroupLayout } from './cgroup-layout.js';

/** One step on a cgroup filesystem. */
export type CgroupOp =
  | { op: 'mkdir'; path: string }
  | {
      op: 'write';
      path: string;
      value: string;
      /** Write this file's content instead when `value` is empty (a v1 cpuset parent inherits the root's). */
      inheritFrom?: string;
      /** Skip when the file does not exist (a knob the kernel may not offer, e.g. without swap accounting). */
      optional?: boolean;
    }
  | { op: 'rmdir'; path: string };

export interface PodCgroupSpec {
  /** Parent group under each hierarchy root, e.g. `podvirt` (tests use a unique one). */
  parent: string;
  /** The pod's group name. */
  pod: string;
  cpus: readonly number[];
  mems: readonly number[];
  memoryBytes: number;
}

/** The pod's cgroup directories: the one QEMU's pid is written into, per controller. */
export interface PodCgroupPaths {
  /** What status shows as `cgroup` (the cpuset group). */
  display: string;
  /** Every directory whose `cgroup.procs` takes the pid (one per v1 hierarchy, one on v2). */
  procs: string[];
  /** Where the effective cpuset is read back (`cpuset.cpus` on v1, `cpuset.cpus.effective` on v2). */
  cpusFile: string;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;

function checkName(what: string, v: string): void {
  for (const part of v.split('/')) {
    if (!NAME.test(part)) throw new InvalidArgument(`cgroup ${what} "${v}" is not a safe cgroup name`);
  }
}

export function podCgroupPaths(layout: CgroupLayout, parent: string, pod: string): PodCgroupPaths {
  checkName('parent', parent);
  checkName('pod', pod);
  if (layout.version === 1) {
    const cs = path.join(layout.cpuset, parent, pod);
    const procs = [cs, path.join(layout.memory, parent, pod)];
    if (layout.devices) procs.push(path.join(layout.devices, parent, pod));
    return { display: cs, procs, cpusFile: path.join(cs, 'cpuset.cpus') };
  }
  const g = path.join(layout.root, parent, pod);
  return { display: g, procs: [g], cpusFile: path.join(g, 'cpuset.cpus.effective') };
}

/**
 * Ops that create the pod's cgroup with its exclusive CPUs, its NUMA nodes and a memory limit (pure).
 * v1: the parent's cpuset starts empty, so it inherits the root's cpus/mems before the child can be
 * given any. v2: the controllers must be enabled in every ancestor's `cgroup.subtree_control`.
 * Exclusivity comes from the carving (no two pods get a CPU), as with kubelet's static CPU manager:
 * a v2 partition root would need every ancestor to be one too, which a shared host cannot promise.
 */
export function planPodCgroup(layout: CgroupLayout, spec: PodCgroupSpec): CgroupOp[] {
  if (spec.cpus.length === 0) throw new InvalidArgument('pod cgroup needs at least one CPU');
  if (spec.mems.length === 0) throw new InvalidArgument('pod cgroup needs at least one memory node');
  if (!Number.isSafeInteger(spec.memoryBytes) || spec.memoryBytes <= 0) {
    throw new InvalidArgument(`memory limit must be a positive byte count, got ${spec.memoryBytes}`);
  }
  const cpus = formatCpuList(spec.cpus);
  const mems = formatCpuList(spec.mems);
  podCgroupPaths(layout, spec.parent, spec.pod); // validates the names
  const ops: CgroupOp[] = [];
  if (layout.version === 1) {
    const csParent = path.join(layout.cpuset, spec.parent);
    const memParent = path.join(layout.memory, spec.parent);
    const cs = path.join(csParent, spec.pod);
    const mem = path.join(memParent, spec.pod);
    ops.push(
      { op: 'mkdir', path: csParent },
      { op: 'write', path: path.join(csParent, 'cpuset.cpus'), value: '', inheritFrom: path.join(layout.cpuset, 'cpuset.cpus') },
      { op: 'write', path: path.join(csParent, 'cpuset.mems'), value: '', inheritFrom: path.join(layout.cpuset, 'cpuset.mems') },
      { op: 'mkdir', path: cs },
      { op: 'write', path: path.join(cs, 'cpuset.cpus'), value: cpus },
      { op: 'write', path: path.join(cs, 'cpuset.mems'), value: mems },
      // Memory strictly from the pod's nodes, moved along if the nodes change.
      { op: 'write', path: path.join(cs, 'cpuset.mem_hardwall'), value: '1' },
      { op: 'mkdir', path: memParent },
      { op: 'mkdir', path: mem },
      { op: 'write', path: path.join(mem, 'memory.limit_in_bytes'), value: String(spec.memoryBytes) },
    );
    return ops;
  }
  const parent = path.join(layout.root, spec.parent);
  const g = path.join(parent, spec.pod);
  ops.push(
    { op: 'write', path: path.join(layout.root, 'cgroup.subtree_control'), value: '+cpuset +memory' },
    { op: 'mkdir', path: parent },
    { op: 'write', path: path.join(parent, 'cgroup.subtree_control'), value: '+cpuset +memory' },
    { op: 'mkdir', path: g },
    { op: 'write', path: path.join(g, 'cpuset.cpus'), value: cpus },
    { op: 'write', path: path.join(g, 'cpuset.mems'), value: mems },
    { op: 'write', path: path.join(g, 'memory.max'), value: String(spec.memoryBytes) },
    { op: 'write', path: path.join(g, 'memory.swap.max'), value: '0', optional: true },
  );
  return ops;
}

/** Ops that remove the pod's cgroup (the processes in it must be gone). The shared parent stays. */
export function planPodCgroupRemoval(layout: CgroupLayout, parent: string, pod: string): CgroupOp[] {
  return podCgroupPaths(layout, parent, pod).procs.map((p) => ({ op: 'rmdir', path: p }));
}

/** Device nodes every QEMU needs whatever it was allocated (null, zero, full, random, urandom, tty, ptmx). */
export const BASE_DEVICE_RULES = ['c 1:3 rwm', 'c 1:5 rwm', 'c 1:7 rwm', 'c 1:8 rwm', 'c 1:9 rwm', 'c 5:0 rwm', 'c 5:2 rwm', 'c 136:* rwm'];

/** A devices-cgroup rule for a device node (`c 10:200 rwm`). */
export function deviceRule(kind: 'c' | 'b', major: number, minor: number, access = 'rwm'): string {
  if (!/^[rwm]{1,3}$/.test(access)) throw new InvalidArgument(`bad device access "${access}"`);
  return `${kind} ${major}:${minor} ${access}`;
}

/**
 * Ops that confine the pod to the listed device nodes (cgroup v1 devices controller): deny all, then
 * allow each rule; what a container runtime does for a container's devices. Called again with more
 * rules as devices are allocated and volumes published (allowing is additive). cgroup v2 controls
 * devices with eBPF programs attached to the group, which podvirt does not load: no ops there.
 */
export function planPodDevices(layout: CgroupLayout, parent: string, pod: string, rules: readonly string[], first: boolean): CgroupOp[] {
  if (layout.version !== 1 || !layout.devices) return [];
  podCgroupPaths(layout, parent, pod);
  const dir = path.join(layout.devices, parent, pod);
  const ops: CgroupOp[] = [];
  if (first) {
    ops.push({ op: 'mkdir', path: path.join(layout.devices, parent) }, { op: 'mkdir', path: dir }, { op: 'write', path: path.join(dir, 'devices.deny'), value: 'a' });
  }
  for (const r of rules) ops.push({ op: 'write', path: path.join(dir, 'devices.allow'), value: r });
  return ops;
}
