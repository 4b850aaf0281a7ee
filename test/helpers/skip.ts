import type { Context } from 'mocha';

/** Skips the running test, printing why: a missing host feature must never pass silently. */
export function skipBecause(ctx: Context, reason: string): never {
  const test = ctx.currentTest ?? ctx.test;
  if (test) (test as unknown as { skipReason: string }).skipReason = reason;
  process.stdout.write(`      skipped: ${reason}\n`);
  ctx.skip();
}
