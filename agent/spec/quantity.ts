const SUFFIX: Record<string, number> = {
  '': 1,
  k: 1e3,
  M: 1e6,
  G: 1e9,
  T: 1e12,
  P: 1e15,
  Ki: 2 ** 10,
  Mi: 2 ** 20,
  Gi: 2 ** 30,
  Ti: 2 ** 40,
  Pi: 2 ** 50,
};

/** A Kubernetes byte quantity (`512Mi`, `1Gi`, `1G`, `1048576`) in bytes; undefined when it is not one. */
export function quantityBytes(q: unknown): number | undefined {
  const s = typeof q === 'number' ? String(q) : q;
  if (typeof s !== 'string') return undefined;
  const m = /^\s*(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?\s*$/.exec(s);
  if (!m) return undefined;
  const v = Math.ceil(Number(m[1]) * SUFFIX[m[2] ?? '']!);
  return Number.isSafeInteger(v) && v > 0 ? v : undefined;
}

/** A CPU quantity that is a whole number of CPUs (`2`, `2000m`); undefined otherwise (fractions included). */
export function quantityWholeCpus(q: unknown): number | undefined {
  const s = String(q).trim();
  let v: number;
  if (/^\d+m$/.test(s)) v = Number(s.slice(0, -1)) / 1000;
  else if (/^\d+(\.\d+)?$/.test(s)) v = Number(s);
  else return undefined;
  return Number.isInteger(v) && v > 0 ? v : undefined;
}
