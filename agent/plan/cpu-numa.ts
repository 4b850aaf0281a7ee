import { FailedPrecondition, InvalidArgument } from '../../lib/errors.js';
import type { HostNumaFacts, HugepageSize, NumaCell, PinMap } from './types.js';

export const HUGEPAGE_BYTES: Record<HugepageSize, number> = { '2Mi': 2 * 2 ** 20, '1Gi': 2 ** 30 };
const MiB = 2 ** 20;

const nodeOf = (numa: HostNumaFacts, cpu: number) => numa.cpuNode[cpu] ?? 0;
/** A core's identity: its lowest sibling (a CPU without sibling facts is its own core). */
const coreOf = (numa: HostNumaFacts, cpu: number) => Math.min(...(numa.siblings?.[cpu] ?? [cpu]));

/**
 * vCPU → host CPU, 1:1, onto the pod's exclusive CPUs. CPUs are taken in (node, core, cpu) order
 * so consecutive vCPUs share a node (each guest cell maps onto as few host nodes as possible) and
 * SMT siblings are adjacent (whole cores first, see `guestThreadsPerCore`).
 * Emulator and I/O threads get the CPUs left over; with `isolateEmulatorThread` at least one
 * must be left over (the pod must ask for cpus + 1), otherwise they share the vCPUs' CPUs.
 */
export function planPins(
  cpus: number,
  cpuset: readonly number[],
  numa: HostNumaFacts,
  isolateEmulatorThread: boolean,
  cells?: readonly NumaCell[],
): PinMap {
  const set = [...new Set(cpuset)];
  const need = cpus + (isolateEmulatorThread ? 1 : 0);
  if (set.length < need) {
    throw new FailedPrecondition(
      `the pod has ${set.length} exclusive CPU(s) (${set.join(',') || 'none'}) but the VM needs ${need}` +
        (isolateEmulatorThread ? ` (${cpus} vCPUs + 1 for the emulator thread)` : ` (one per vCPU)`),
    );
  }
  const ordered = set.sort((a, b) => nodeOf(numa, a) - nodeOf(numa, b) || coreOf(numa, a) - coreOf(numa, b) || a - b);
  const vcpuCpus = ordered.slice(0, cpus);
  const rest = ordered.slice(cpus);
  const cellOf = new Map<number, number>();
  if (cells) for (const c of cells) for (const v of c.vcpus) cellOf.set(v, c.id);
  const nodes = [...new Set(vcpuCpus.map((c) => nodeOf(numa, c)))];
  return {
    vcpus: vcpuCpus.map((cpu, index) => ({
      index,
      cpu,
      node: nodeOf(numa, cpu),
      cell: cellOf.get(index) ?? nodes.indexOf(nodeOf(numa, cpu)),
    })),
    emulator: rest.length > 0 ? rest : [...vcpuCpus].sort((a, b) => a - b),
  };
}

/**
 * Guest NUMA cells mirroring the host nodes of the pinned vCPUs: one cell per host node in
 * use, holding that node's vCPUs and a share of memory proportional to them, aligned to the
 * page size (the last cell takes the remainder).
 */
export function planCells(memoryBytes: number, pins: PinMap, hugepages: HugepageSize | undefined): NumaCell[] {
  const align = hugepages ? HUGEPAGE_BYTES[hugepages] : 2 * MiB;
  if (memoryBytes % MiB !== 0) throw new InvalidArgument(`spec.memory: must be a whole number of MiB`);
  const byCell = new Map<number, number[]>();
  for (const p of pins.vcpus) byCell.set(p.cell, [...(byCell.get(p.cell) ?? []), p.index]);
  const ids = [...byCell.keys()].sort((a, b) => a - b);
  const total = pins.vcpus.length;
  const cells: NumaCell[] = [];
  let left = memoryBytes;
  ids.forEach((id, i) => {
    const vcpus = byCell.get(id)!;
    const share = i === ids.length - 1 ? left : Math.floor((memoryBytes * vcpus.length) / total / align) * align;
    if (share <= 0) {
      throw new InvalidArgument(`spec.memory: ${memoryBytes} bytes cannot be split over ${ids.length} NUMA cells in ${align}-byte units`);
    }
    left -= share;
    cells.push({ id, vcpus, memoryBytes: share });
  });
  return cells;
}

/** Host nodes each guest cell's memory is bound to: the nodes of its vCPUs' CPUs. */
export function cellHostNodes(cells: readonly NumaCell[], pins: PinMap): Record<number, number[]> {
  const out: Record<number, number[]> = {};
  for (const c of cells) {
    const nodes = new Set(pins.vcpus.filter((p) => c.vcpus.includes(p.index)).map((p) => p.node));
    out[c.id] = [...nodes].sort((a, b) => a - b);
  }
  return out;
}

/** Fails before launch when the cells' nodes lack free hugepages (only when the facts know). */
export function checkHugepages(
  cells: readonly NumaCell[],
  hostNodes: Record<number, number[]>,
  size: HugepageSize,
  numa: HostNumaFacts,
): void {
  if (!numa.hugepagesFree) return;
  const page = HUGEPAGE_BYTES[size];
  const free = new Map<number, number>();
  for (const [n, sizes] of Object.entries(numa.hugepagesFree)) free.set(Number(n), sizes[size] ?? 0);
  for (const c of cells) {
    const need = c.memoryBytes / page;
    const nodes = hostNodes[c.id] ?? [];
    const have = nodes.reduce((s, n) => s + (free.get(n) ?? 0), 0);
    if (have < need) {
      throw new FailedPrecondition(
        `guest NUMA cell ${c.id} needs ${need} free ${size} hugepages on host node(s) ${nodes.join(',')} but ${have} are free`,
      );
    }
    // Later cells on the same nodes compete for what is left.
    let rest = need;
    for (const n of nodes) {
      const take = Math.min(rest, free.get(n) ?? 0);
      free.set(n, (free.get(n) ?? 0) - take);
      rest -= take;
    }
  }
}

/**
 * Guest threads per core: t > 1 when every vCPU sits on a host SMT core whose t siblings are all
 * vCPUs, consecutive in vCPU order (what `planPins` produces for whole cores), so the guest's
 * sibling pairs are the host's. Otherwise 1 (vCPUs as sockets).
 */
export function guestThreadsPerCore(pins: PinMap, numa: HostNumaFacts): number {
  if (!numa.siblings || pins.vcpus.length === 0) return 1;
  const group = (cpu: number) => [...(numa.siblings![cpu] ?? [cpu])].sort((a, b) => a - b);
  const t = group(pins.vcpus[0]!.cpu).length;
  if (t < 2 || pins.vcpus.length % t !== 0) return 1;
  for (let i = 0; i < pins.vcpus.length; i += t) {
    const block = pins.vcpus.slice(i, i + t).map((v) => v.cpu).sort((a, b) => a - b);
    const g = group(block[0]!);
    if (g.length !== t || g.some((c, k) => c !== block[k]) || new Set(pins.vcpus.slice(i, i + t).map((v) => v.cell)).size !== 1) return 1;
  }
  return t;
}
