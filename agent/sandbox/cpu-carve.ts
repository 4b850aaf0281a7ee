import { InvalidArgument, ResourceExhausted } from '../../lib/errors.js';
import { formatCpuList } from '../../lib/sysfs.js';

export interface CarveRequest {
  /** CPUs the node has online. */
  online: readonly number[];
  /** CPUs kept for the system and the agent (kubelet's `--reserved-cpus`): never handed out. */
  reserved: readonly number[];
  /** CPUs already held by other pods. */
  taken: readonly number[];
  /** How many exclusive CPUs the pod needs. */
  count: number;
  /** Physical core id of each CPU (SMT siblings share one); absent = every CPU its own core. */
  coreOf?: ReadonlyMap<number, string>;
}

/**
 * Picks `count` exclusive CPUs the way kubelet's static CPU manager prefers them: whole free
 * cores first (so siblings go to the same pod), then single CPUs, lowest numbers first so the
 * choice is stable. Pure; the caller records the result so no other pod gets these CPUs.
 */
export function carveCpus(req: CarveRequest): number[] {
  if (!Number.isInteger(req.count) || req.count < 1) {
    throw new InvalidArgument(`cpu count must be a positive integer, got ${req.count}`);
  }
  const blocked = new Set([...req.reserved, ...req.taken]);
  const free = [...new Set(req.online)].filter((c) => !blocked.has(c)).sort((a, b) => a - b);
  if (free.length < req.count) {
    throw new ResourceExhausted(
      `need ${req.count} exclusive CPU(s) but only ${free.length} free (online ${formatCpuList(req.online)}, ` +
        `reserved ${formatCpuList(req.reserved) || 'none'}, taken ${formatCpuList(req.taken) || 'none'})`,
    );
  }
  const core = (c: number) => req.coreOf?.get(c) ?? `cpu${c}`;
  const cores = new Map<string, number[]>();
  for (const c of [...new Set(req.online)].sort((a, b) => a - b)) {
    const k = core(c);
    cores.set(k, [...(cores.get(k) ?? []), c]);
  }
  const picked: number[] = [];
  // Whole cores whose every thread is free, as long as the whole core still fits.
  for (const threads of cores.values()) {
    if (threads.every((t) => !blocked.has(t)) && picked.length + threads.length <= req.count) {
      picked.push(...threads);
    }
  }
  for (const c of free) {
    if (picked.length >= req.count) break;
    if (!picked.includes(c)) picked.push(c);
  }
  return picked.slice(0, req.count).sort((a, b) => a - b);
}
