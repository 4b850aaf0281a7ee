import { InvalidArgument } from '../../lib/errors.js';
import { quantityBytes, quantityWholeCpus } from '../spec/quantity.js';

/** A Kubernetes quantity (`512Mi`, `1G`, `1073741824`) in bytes, rounded up; `what` names the field in errors. */
export function parseBytes(q: unknown, what: string): number {
  const v = quantityBytes(q);
  if (v === undefined) throw new InvalidArgument(`${what}: "${String(q)}" is not a size (e.g. 1Gi, 512Mi)`);
  return v;
}

/** A CPU quantity that must be a whole number of CPUs (`2`, `2000m`); undefined for fractions. */
export const wholeCpus = quantityWholeCpus;
