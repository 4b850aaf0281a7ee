/**
 * The monitor's judgement, pure: progress samples in, "go on / switch to post-copy / give up" out.
 * Modeled on KubeVirt's monitor (progress timeout reset whenever the remaining bytes drop,
 * a completion deadline per GiB) plus a stall detector over pre-copy passes, so a guest that
 * dirties memory faster than the link goes to post-copy in seconds instead of minutes.
 */

/** One `query-migrate` reading, reduced to what the decision needs. */
export interface ProgressSample {
  atMs: number;
  /** QEMU migration status (`active`, `postcopy-active`, `pre-switchover`, ...). */
  status: string;
  remainingBytes: number;
  /** `ram.dirty-sync-count`: the pre-copy pass number. */
  pass: number;
  /** `ram.transferred`: tells a slow guest from a dead link. */
  transferredBytes: number;
  /** QEMU's dirty-page rate and send rate (`ram.dirty-pages-rate` × page size, `ram.mbps`), bytes/s; 0 = unknown. */
  dirtyBytesPerSec?: number;
  sendBytesPerSec?: number;
}

export interface DecideState {
  startedAtMs: number;
  /** Lowest remaining seen, and when it was seen (the progress clock). */
  lowestRemaining: number;
  lowestAtMs: number;
  /** Remaining bytes at the start of each pass, per pass number. */
  passStarts: Array<{ pass: number; remaining: number }>;
  postCopyRequested: boolean;
  lastTransferred: number;
  lastTransferAtMs: number;
}

export interface DecideLimits {
  completionDeadlineMs: number;
  progressTimeoutMs: number;
  stallPasses: number;
  postCopyAllowed: boolean;
}

export type Decision =
  | { action: 'continue' }
  | { action: 'start-postcopy'; reason: string }
  | { action: 'cancel'; reason: string };

export function initialDecideState(startedAtMs: number): DecideState {
  return { startedAtMs, lowestRemaining: Number.POSITIVE_INFINITY, lowestAtMs: startedAtMs, passStarts: [], postCopyRequested: false, lastTransferred: 0, lastTransferAtMs: startedAtMs };
}

const POSTCOPY_STATES = new Set(['postcopy-active', 'postcopy-paused', 'postcopy-recover']);
/** Below this a pass counts as progress; 10 % mirrors "the remaining bytes keep shrinking". */
const STALL_RATIO = 0.9;
const LINK_ALIVE_MS = 1_000;

/** Returns the next state and what to do now. Never cancels once post-copy runs (that would lose the VM). */
export function decideNext(prev: DecideState, s: ProgressSample, lim: DecideLimits): { state: DecideState; decision: Decision } {
  const state: DecideState = { ...prev, passStarts: prev.passStarts };
  if (s.remainingBytes < state.lowestRemaining) {
    state.lowestRemaining = s.remainingBytes;
    state.lowestAtMs = s.atMs;
  }
  if (s.transferredBytes > state.lastTransferred) {
    state.lastTransferred = s.transferredBytes;
    state.lastTransferAtMs = s.atMs;
  }
  if (s.pass > 0 && !state.passStarts.some((p) => p.pass === s.pass)) {
    state.passStarts = [...state.passStarts, { pass: s.pass, remaining: s.remainingBytes }];
  }
  if (POSTCOPY_STATES.has(s.status) || s.status !== 'active') {
    return { state, decision: { action: 'continue' } };
  }
  // Checked even after post-copy was requested: QEMU only enters it when the stream moves, and
  // until it does a cancel still gives the source back intact.
  if (s.atMs - state.lastTransferAtMs > lim.progressTimeoutMs) {
    return { state, decision: { action: 'cancel', reason: `migration stream stalled: nothing sent for ${Math.round(lim.progressTimeoutMs / 1000)} s` } };
  }
  if (state.postCopyRequested) return { state, decision: { action: 'continue' } };

  // Post-copy over a dead link would split the VM between two hosts: only a stream that moved
  // within the last second may switch (a cut link stops moving once the socket buffer is full).
  const linkAlive = s.atMs - state.lastTransferAtMs < LINK_ALIVE_MS;
  const escalate = (reason: string): Decision =>
    lim.postCopyAllowed && linkAlive ? { action: 'start-postcopy', reason } : { action: 'cancel', reason };

  let decision: Decision = { action: 'continue' };
  if (s.atMs - state.startedAtMs > lim.completionDeadlineMs) {
    decision = escalate(`not completed within ${Math.round(lim.completionDeadlineMs / 1000)} s`);
  } else if (s.atMs - state.lowestAtMs > lim.progressTimeoutMs) {
    decision = escalate(`no progress for ${Math.round(lim.progressTimeoutMs / 1000)} s`);
  } else if (lim.postCopyAllowed && linkAlive && outpaced(s)) {
    // Only reasons to switch, never to cancel: auto-converge may still get there before the deadlines.
    decision = { action: 'start-postcopy', reason: `the guest dirties memory as fast as it can be sent (${mib(s.dirtyBytesPerSec!)} vs ${mib(s.sendBytesPerSec!)} MiB/s)` };
  } else if (lim.postCopyAllowed && linkAlive && stalled(state.passStarts, lim.stallPasses)) {
    decision = { action: 'start-postcopy', reason: `pre-copy not converging after ${state.passStarts.length} passes` };
  }
  if (decision.action === 'start-postcopy') state.postCopyRequested = true;
  return { state, decision };
}

const mib = (b: number) => (b / 2 ** 20).toFixed(1);

/** From the third pass on (the rates describe a whole pass): dirtying at ≥ 90 % of the send rate never converges. */
function outpaced(s: ProgressSample): boolean {
  const d = s.dirtyBytesPerSec ?? 0;
  const t = s.sendBytesPerSec ?? 0;
  return s.pass >= 3 && t > 0 && d >= 0.9 * t;
}

/** True when the last `n` passes all started with no less than 90 % of the best earlier pass start. */
function stalled(passes: DecideState['passStarts'], n: number): boolean {
  if (passes.length < n + 1) return false;
  const ordered = [...passes].sort((a, b) => a.pass - b.pass);
  const window = ordered.slice(-n);
  const before = ordered.slice(0, -n);
  const bestBefore = Math.min(...before.map((p) => p.remaining));
  return window.every((p) => p.remaining >= bestBefore * STALL_RATIO);
}
