import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { readJsonIfExists, writeJsonAtomic } from '../../lib/fs-atomic.js';
import { AlreadyExists, InvalidArgument } from '../../lib/errors.js';
import { Sysfs, parseCpuList } from '../../lib/sysfs.js';
import { carveCpus } from './cpu-carve.js';
import { detectCgroupLayout, type CgroupLayout } from './cgroup-layout.js';
import {
  BASE_DEVICE_RULES,
  deviceRule,
  planPodCgroup,
  planPodCgroupRemoval,
  planPodDevices,
  podCgroupPaths,
  type PodCgroupPaths,
} from './cgroup-plan.js';
import { applyCgroupOps, cgroupPids } from './cgroup-apply.js';
import { Netns } from './netns.js';

/** What a pod got: its own netns and a cgroup holding exclusive CPUs. */
export interface PodSandbox {
  pod: string;
  netnsName: string;
  netns: string;
  cgroup: PodCgroupPaths;
  cpus: number[];
  mems: number[];
  memoryBytes: number;
}

export interface SandboxManagerOptions {
  /** Directory of the allocation book (`sandboxes.json`). */
  stateDir: string;
  /** Parent cgroup name under each hierarchy (default `podvirt`). */
  cgroupParent?: string;
  /** Prefix of netns names (default `podvirt-`). */
  netnsPrefix?: string;
  /** CPUs never handed to pods (kubelet's `--reserved-cpus`). */
  reservedCpus: readonly number[];
  sysRoot?: string;
  /** Injected for tests with fake trees; detected from /proc/self/mountinfo otherwise. */
  layout?: CgroupLayout;
  netnsTool?: Netns;
}

interface Book {
  pods: Record<string, PodSandbox>;
}

/**
 * Creates and removes pod sandboxes and keeps the CPU book: every CPU is held by at most one pod,
 * so a pod's cpuset is exclusive among podvirt pods (the kubelet static CPU manager's guarantee).
 * Callers serialise calls (the local agent daemon runs one at a time).
 */
export class SandboxManager {
  private readonly book: string;
  private readonly parent: string;
  private readonly prefix: string;
  private readonly sys: Sysfs;
  private readonly netns: Netns;
  private layout: CgroupLayout | undefined;

  constructor(private readonly opts: SandboxManagerOptions) {
    this.book = path.join(opts.stateDir, 'sandboxes.json');
    this.parent = opts.cgroupParent ?? 'podvirt';
    this.prefix = opts.netnsPrefix ?? 'podvirt-';
    this.sys = new Sysfs(opts.sysRoot ?? '/sys');
    this.netns = opts.netnsTool ?? new Netns();
    this.layout = opts.layout;
  }

  async cgroupLayout(): Promise<CgroupLayout> {
    this.layout ??= await detectCgroupLayout();
    return this.layout;
  }

  async list(): Promise<PodSandbox[]> {
    return Object.values((await this.load()).pods);
  }

  async get(pod: string): Promise<PodSandbox | undefined> {
    return (await this.load()).pods[pod];
  }

  /** Creates the sandbox, rolling back whatever was made when a step fails. */
  async create(pod: string, cpuCount: number, memoryBytes: number): Promise<PodSandbox> {
    const book = await this.load();
    if (book.pods[pod]) throw new AlreadyExists(`pod ${pod} already has a sandbox`);
    const online = parseCpuList((await this.sys.read('devices/system/cpu/online')) ?? '0');
    const taken = Object.values(book.pods).flatMap((p) => p.cpus);
    const cpus = carveCpus({
      online,
      reserved: this.opts.reservedCpus,
      taken,
      count: cpuCount,
      coreOf: await this.coreMap(online),
    });
    const mems = await this.nodesOf(cpus);
    const layout = await this.cgroupLayout();
    const netnsName = `${this.prefix}${pod}`;
    const sb: PodSandbox = {
      pod,
      netnsName,
      netns: Netns.path(netnsName),
      cgroup: podCgroupPaths(layout, this.parent, pod),
      cpus,
      mems,
      memoryBytes,
    };
    // Book first: a crash half-way leaves an entry that destroy() can clean.
    book.pods[pod] = sb;
    await this.save(book);
    try {
      await this.netns.create(netnsName);
      await applyCgroupOps(planPodCgroup(layout, { parent: this.parent, pod, cpus, mems, memoryBytes }));
      await applyCgroupOps(planPodDevices(layout, this.parent, pod, BASE_DEVICE_RULES, true));
    } catch (e) {
      await this.destroy(pod).catch(() => undefined);
      throw e;
    }
    return sb;
  }

  /** Kills whatever is left in the pod's cgroup, removes cgroup and netns, frees the CPUs. Idempotent. */
  async destroy(pod: string): Promise<void> {
    const book = await this.load();
    const sb = book.pods[pod];
    const layout = await this.cgroupLayout();
    const paths = sb?.cgroup ?? podCgroupPaths(layout, this.parent, pod);
    for (const dir of paths.procs) {
      for (const pid of await cgroupPids(dir)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* already gone */
        }
      }
    }
    await applyCgroupOps(planPodCgroupRemoval(layout, this.parent, pod));
    await this.netns.delete(sb?.netnsName ?? `${this.prefix}${pod}`);
    if (sb) {
      delete book.pods[pod];
      await this.save(book);
    }
  }

  /** Lets the pod's processes open these device nodes (allocated devices, published block volumes). */
  async allowDevices(pod: string, nodes: readonly string[]): Promise<void> {
    const rules: string[] = [];
    for (const n of nodes) {
      const st = await fs.stat(n);
      if (!st.isCharacterDevice() && !st.isBlockDevice()) continue;
      rules.push(deviceRule(st.isCharacterDevice() ? 'c' : 'b', Math.floor(st.rdev / 256) & 0xfff, (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00)));
    }
    await applyCgroupOps(planPodDevices(await this.cgroupLayout(), this.parent, pod, rules, false));
  }

  /** The pod's CPUs as the kernel sees them now (what pinning must use). */
  async effectiveCpus(pod: string): Promise<number[]> {
    const sb = await this.get(pod);
    if (!sb) throw new InvalidArgument(`pod ${pod} has no sandbox`);
    return parseCpuList(await fs.readFile(sb.cgroup.cpusFile, 'utf8'));
  }

  private async coreMap(online: number[]): Promise<Map<number, string>> {
    const m = new Map<number, string>();
    for (const c of online) {
      const pkg = await this.sys.read(`devices/system/cpu/cpu${c}/topology/physical_package_id`);
      const core = await this.sys.read(`devices/system/cpu/cpu${c}/topology/core_id`);
      if (pkg !== undefined && core !== undefined) m.set(c, `${pkg}/${core}`);
    }
    return m;
  }

  /** NUMA nodes holding these CPUs; node 0 when the host exposes no node directories. */
  private async nodesOf(cpus: number[]): Promise<number[]> {
    const nodes: number[] = [];
    for (const n of await this.sys.list('devices/system/node')) {
      const m = /^node(\d+)$/.exec(n);
      if (!m) continue;
      const list = parseCpuList((await this.sys.read(`devices/system/node/${n}/cpulist`)) ?? '');
      if (list.some((c) => cpus.includes(c))) nodes.push(Number(m[1]));
    }
    return nodes.length ? nodes.sort((a, b) => a - b) : [0];
  }

  private async load(): Promise<Book> {
    return (await readJsonIfExists<Book>(this.book)) ?? { pods: {} };
  }

  private async save(b: Book): Promise<void> {
    await writeJsonAtomic(this.book, b);
  }
}
