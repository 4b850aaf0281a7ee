import { InvalidArgument } from '../../lib/errors.js';

const SUFFIX: Record<string, number> = {
  '': 1, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15,
  Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50,
};

/** A Kubernetes quantity (`512Mi`, `1G`, `1073741824`) in bytes, rounded up; `what` names the field in errors. */
export function parseBytes(q: unknown, what: string): number {
  const s = typeof q === 'number' ? String(q) : q;
  const m = typeof s === 'string' ? /^\s*(\d+(?:\.\d+)?)([kMGTP]i?|Ki)?\s*$/.exec(s) : null;
  const mult = m ? SUFFIX[m[2] ?? ''] : undefined;
  if (!m || mult === undefined) throw new InvalidArgument(`${what}: "${String(q)}" is not a size (e.g. 1Gi, 512Mi)`);
  const v = Math.ceil(Number(m[1]) * mult);
  if (!Number.isSafeInteger(v) || v <= 0) throw new InvalidArgument(`${what}: "${String(q)}" is out of range`);
  return v;
}

/** A CPU quantity that must be a whole number of CPUs (`2`, `2000m`); undefined for fractions. */
export function wholeCpus(q: unknown): number | undefined {
  const s = String(q).trim();
  let v: number;
  if (/^\d+m$/.test(s)) v = Number(s.slice(0, -1)) / 1000;
  else if (/^\d+(\.\d+)?$/.test(s)) v = Number(s);
  else return undefined;
  return Number.isInteger(v) && v > 0 ? v : undefined;
}
