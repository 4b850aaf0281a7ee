import { exec } from '../../lib/exec.js';

/**
 * Waits until `ip` answers one echo request, sending one a second until `deadlineS`.
 * A TCG guest on a loaded 2-core CI box may need a few seconds after its link comes up
 * (or after a migration's announce) before the first reply; a single 3 s probe made
 * tests flaky without proving anything more.
 */
export async function pingUntilReply(ip: string, opts: { netns?: string; deadlineS?: number } = {}): Promise<void> {
  const argv = ['-c', '1', '-w', String(opts.deadlineS ?? 20), ip];
  if (opts.netns) await exec('ip', ['netns', 'exec', opts.netns, 'ping', ...argv]);
  else await exec('ping', argv);
}
