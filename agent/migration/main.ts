import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import { parseFlags } from '../../lib/cli-args.js';
import { InvalidArgument, PodvirtError, Unimplemented } from '../../lib/errors.js';
import { sleep } from '../../lib/backoff.js';
import { callControl } from '../local/control.js';
import { PATH_FLAGS, controlSocket, localPaths } from '../local/paths.js';
import { ensureAgent } from '../local/spawn-agent.js';
import type { MigrationOverrides } from './config.js';
import type { LocalMigrationRecord } from './local.js';
import { progressWriter } from './render.js';

const USAGE =
  'usage: podvirt migrate NAME [--to NODE] [--cancel] [--tls] [--json] [--config FILE] [--max-bandwidth 1Gi] [--downtime-limit 100ms] ' +
  '[--multifd N] [--no-post-copy] [--no-auto-converge] [--progress-timeout 150s] [--completion-timeout-per-gib 150s]';

const FLAGS = {
  ...PATH_FLAGS,
  to: { type: 'string' },
  cancel: { type: 'boolean' },
  tls: { type: 'boolean' },
  json: { type: 'boolean' },
  config: { type: 'string' },
  'max-bandwidth': { type: 'string' },
  'downtime-limit': { type: 'string' },
  multifd: { type: 'string' },
  'no-post-copy': { type: 'boolean' },
  'no-auto-converge': { type: 'boolean' },
  'progress-timeout': { type: 'string' },
  'completion-timeout-per-gib': { type: 'string' },
} as const;

/** Flags → the highest config layer (validated by the agent with the other layers). */
export function flagOverrides(f: Record<string, string | boolean | undefined>): MigrationOverrides {
  const o: MigrationOverrides = {};
  if (f.tls) o.tls = true;
  if (typeof f['max-bandwidth'] === 'string') o.maxBandwidth = f['max-bandwidth'];
  if (typeof f['downtime-limit'] === 'string') o.downtimeLimit = f['downtime-limit'];
  if (typeof f.multifd === 'string') {
    const n = Number(f.multifd);
    if (!Number.isInteger(n) || n < 0) throw new InvalidArgument(`--multifd must be a whole number of channels, got "${f.multifd}"`);
    o.multifdChannels = n;
  }
  if (f['no-post-copy']) o.postCopy = false;
  if (f['no-auto-converge']) o.autoConverge = false;
  if (typeof f['progress-timeout'] === 'string') o.progressTimeout = f['progress-timeout'];
  if (typeof f['completion-timeout-per-gib'] === 'string') o.completionTimeoutPerGiB = f['completion-timeout-per-gib'];
  return o;
}

/**
 * `podvirt migrate NAME`: asks the local agent to move the VM into a second local pod and follows
 * it to the end (a bar on a terminal, JSON progress lines otherwise); Ctrl-C or `--cancel` stops it
 * and the VM stays where it was.
 */
export async function main(argv: string[]): Promise<number> {
  const { values: f, positionals } = parseFlags(argv, FLAGS, true);
  if (positionals.length !== 1) throw new InvalidArgument(USAGE);
  const name = positionals[0]!;
  if (f.to !== undefined && f.to !== os.hostname() && f.to !== 'local') {
    throw new InvalidArgument(`--to ${f.to}: local mode has one node (${os.hostname()}); in a cluster use kubectl podvirt migrate`);
  }
  const p = localPaths(f);
  await ensureAgent(p);
  const sock = controlSocket(p);
  const call = async <T>(method: 'GET' | 'POST', path: string, body?: unknown): Promise<T> => {
    try {
      return await callControl<T>(sock, method, path, body);
    } catch (e) {
      if (e instanceof PodvirtError && e.kind === 'NotFound' && /no such control endpoint/.test(e.message)) {
        throw new Unimplemented('this local agent has no migration endpoint yet (docs/migration.md, "Local mode")');
      }
      throw e;
    }
  };
  const base = `/pods/${encodeURIComponent(name)}`;
  if (f.cancel) {
    const r = await call<LocalMigrationRecord>('POST', `${base}/migrate/cancel`);
    process.stdout.write(`cancelling migration ${r.id} of ${name}\n`);
    return 0;
  }
  // yaml is loaded only when needed: it costs the CLI a tenth of a second on a slow host.
  const file = f.config !== undefined ? ((await import('yaml')).parse(await fs.readFile(f.config, 'utf8')) as unknown) : undefined;
  const started = await call<LocalMigrationRecord>('POST', `${base}/migrate`, { file, flags: flagOverrides(f) });
  const out = progressWriter(process.stdout, { json: f.json === true });
  let cancelled = false;
  const onInt = () => {
    if (cancelled) return;
    cancelled = true;
    void call('POST', `${base}/migrate/cancel`).catch(() => undefined);
  };
  process.on('SIGINT', onInt);
  // Long poll (answered on every change); an agent from an older build has only the plain GET.
  let rev = started.rev ?? -1;
  let longPoll = true;
  let notesShown = 0;
  const next = async (): Promise<LocalMigrationRecord> => {
    if (longPoll) {
      try {
        return await callControl<LocalMigrationRecord>(sock, 'POST', `${base}/migration/wait`, { after: rev, timeoutMs: 10_000 });
      } catch (e) {
        if (!(e instanceof PodvirtError && e.kind === 'NotFound' && /no such control endpoint/.test(e.message))) throw e;
        longPoll = false;
      }
    }
    await sleep(250);
    return call<LocalMigrationRecord>('GET', `${base}/migration`);
  };
  try {
    for (;;) {
      const r = await next();
      if (r.id !== started.id) throw new PodvirtError('Aborted', `another migration of ${name} replaced ${started.id}`);
      rev = r.rev ?? rev;
      for (const n of (r.notes ?? []).slice(notesShown)) process.stderr.write(`${process.stderr.isTTY ? '\r\x1b[2K' : ''}note: ${n}\n`);
      notesShown = Math.max(notesShown, r.notes?.length ?? 0);
      if (r.progress) out.update(r.progress);
      if (r.result) {
        out.end();
        if (r.result.outcome === 'completed') {
          process.stderr.write(`${name} migrated: the VM now runs in pod ${r.target}\n`);
          return 0;
        }
        process.stderr.write(`migration ${r.result.outcome}: ${r.result.reason ?? ''}; the VM keeps running in pod ${name}\n`);
        return 1;
      }
    }
  } finally {
    process.off('SIGINT', onInt);
  }
}
