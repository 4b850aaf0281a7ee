import { execText, type Exec, exec as defaultExec } from '../../lib/exec.js';
import { Sysfs, parseCpuList } from '../../lib/sysfs.js';
import type { HostNumaFacts, HugepageSize } from './types.js';

/**
 * Apply-side readers of the host facts the plan needs. Roots are injectable: tests point
 * them at fake trees.
 */

const HUGEPAGE_DIRS: Record<HugepageSize, string> = { '2Mi': 'hugepages-2048kB', '1Gi': 'hugepages-1048576kB' };

/**
 * CPU → node from `<sys>/devices/system/node/node<N>/cpulist`, SMT siblings from
 * `cpu<N>/topology/thread_siblings_list`, and free hugepages per node.
 * A kernel without NUMA support has no node directories: every online CPU is then node 0.
 */
export async function readNumaFacts(sysRoot = '/sys'): Promise<HostNumaFacts> {
  const sys = new Sysfs(sysRoot);
  const cpuNode: Record<number, number> = {};
  const hugepagesFree: NonNullable<HostNumaFacts['hugepagesFree']> = {};
  const nodes = (await sys.list('devices/system/node')).filter((n) => /^node\d+$/.test(n));
  for (const n of nodes) {
    const id = Number(n.slice(4));
    const list = await sys.read('devices/system/node', n, 'cpulist');
    for (const cpu of list ? parseCpuList(list) : []) cpuNode[cpu] = id;
    const free: Partial<Record<HugepageSize, number>> = {};
    for (const [size, dir] of Object.entries(HUGEPAGE_DIRS) as Array<[HugepageSize, string]>) {
      const v = await sys.read('devices/system/node', n, 'hugepages', dir, 'free_hugepages');
      if (v !== undefined) free[size] = Number(v);
    }
    hugepagesFree[id] = free;
  }
  if (nodes.length === 0) {
    const online = await sys.read('devices/system/cpu/online');
    for (const cpu of online ? parseCpuList(online) : []) cpuNode[cpu] = 0;
    const free: Partial<Record<HugepageSize, number>> = {};
    for (const [size, dir] of Object.entries(HUGEPAGE_DIRS) as Array<[HugepageSize, string]>) {
      const v = await sys.read('kernel/mm/hugepages', dir, 'free_hugepages');
      if (v !== undefined) free[size] = Number(v);
    }
    hugepagesFree[0] = free;
  }
  const siblings: Record<number, number[]> = {};
  for (const cpu of Object.keys(cpuNode).map(Number)) {
    const list = await sys.read('devices/system/cpu', `cpu${cpu}`, 'topology/thread_siblings_list');
    if (list) siblings[cpu] = parseCpuList(list);
  }
  return { cpuNode, hugepagesFree, ...(Object.keys(siblings).length ? { siblings } : {}) };
}

/** Parses `qemu-system-x86_64 -machine help`: `q35 ... (alias of pc-q35-7.2)` → `{ q35: 'pc-q35-7.2', 'pc-q35-7.2': 'pc-q35-7.2', ... }`. */
export function parseMachineHelp(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^(\S+)\s+.*?(?:\(alias of (\S+)\))?\s*$/.exec(line);
    if (!m || m[1] === 'Supported') continue;
    out[m[1]!] = m[2] ?? m[1]!;
  }
  return out;
}

const aliasCache = new Map<string, Record<string, string>>();

/** The machine types this QEMU binary offers (cached per binary). */
export async function qemuMachineAliases(qemuBinary = 'qemu-system-x86_64', run: Exec = defaultExec): Promise<Record<string, string>> {
  const hit = aliasCache.get(qemuBinary);
  if (hit) return hit;
  const text = run === defaultExec ? await execText(qemuBinary, ['-machine', 'help']) : (await run(qemuBinary, ['-machine', 'help'])).stdout;
  const aliases = parseMachineHelp(text);
  aliasCache.set(qemuBinary, aliases);
  return aliases;
}
