import { Aborted } from '../lib/errors.js';

/**
 * Per-key try-locks: a second operation on a busy volume, snapshot or name fails at once with
 * ABORTED (the CO retries with backoff, as the spec intends) instead of queueing behind the first;
 * operations on different keys run in parallel.
 */
export class KeyedLocks {
  private readonly held = new Map<string, string>();

  async with<T>(keys: string[], what: string, fn: () => Promise<T>): Promise<T> {
    const uniq = [...new Set(keys)];
    for (const k of uniq) {
      const by = this.held.get(k);
      if (by !== undefined) throw new Aborted(`an operation (${by}) is already in progress for ${k}`);
    }
    for (const k of uniq) this.held.set(k, what);
    try {
      return await fn();
    } finally {
      for (const k of uniq) this.held.delete(k);
    }
  }
}
