import type { MigrationProgress } from './progress.js';

/** How the CLI shows a migration: a redrawn bar on a terminal, one JSON object per line otherwise. */

const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

export function formatBytes(n: number): string {
  if (!Number.isFinite(n) || n < 0) return '?';
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
}

/** Fraction done: disks while mirroring, RAM otherwise (its total grows with re-sent dirty pages). */
export function fractionDone(p: MigrationProgress): number {
  if (p.phase === 'Completed') return 1;
  if (p.phase === 'MirroringDisks' && p.disks && p.disks.bytesTotal > 0) return Math.min(1, p.disks.bytesCopied / p.disks.bytesTotal);
  const sent = p.bytesTransferred;
  const denom = sent + p.bytesRemaining;
  return denom > 0 ? Math.min(1, Math.max(0, sent / denom)) : 0;
}

/** One terminal line (no newline), at most `width` columns. */
export function renderBar(p: MigrationProgress, width = 100): string {
  const f = fractionDone(p);
  const barW = 24;
  const filled = Math.round(f * barW);
  const bar = `[${'#'.repeat(filled)}${'-'.repeat(barW - filled)}]`;
  const parts = [`${bar} ${(f * 100).toFixed(0).padStart(3)}%`, p.phase];
  if (p.phase === 'MirroringDisks' && p.disks) parts.push(`disks ${formatBytes(p.disks.bytesCopied)}/${formatBytes(p.disks.bytesTotal)}`);
  else if (p.phase !== 'Completed' && p.phase !== 'Failed' && p.phase !== 'Cancelled') {
    parts.push(`sent ${formatBytes(p.bytesTransferred)}, left ${formatBytes(p.bytesRemaining)}`);
    if (p.mbps > 0) parts.push(`${formatBytes((p.mbps * 1e6) / 8)}/s`);
    if (p.dirtyRateBytesPerSec > 0) parts.push(`dirty ${formatBytes(p.dirtyRateBytesPerSec)}/s`);
    if (p.pass > 1) parts.push(`pass ${p.pass}`);
    if (p.expectedDowntimeMs !== undefined && p.phase === 'PreCopy') parts.push(`exp. downtime ${p.expectedDowntimeMs} ms`);
  }
  if (p.phase === 'Completed') parts.push(`downtime ${p.downtimeMs ?? '?'} ms, total ${p.totalTimeMs ?? p.elapsedMs} ms${p.postCopy ? ', post-copy' : ''}`);
  if (p.reason) parts.push(p.reason);
  const line = parts.join('  ');
  return line.length > width ? line.slice(0, Math.max(0, width - 1)) + '…' : line;
}

/** A progress sink for a stream: TTY → bar redrawn in place; anything else → JSON lines. */
export function progressWriter(out: NodeJS.WritableStream & { isTTY?: boolean; columns?: number }, opts: { json?: boolean } = {}): { update(p: MigrationProgress): void; end(): void } {
  let drawn = false;
  const bar = out.isTTY === true && !opts.json;
  let last = '';
  return {
    update(p) {
      if (bar) {
        const line = renderBar(p, out.columns ?? 100);
        if (line === last) return;
        last = line;
        out.write(`\r\x1b[2K${line}`);
        drawn = true;
      } else {
        out.write(JSON.stringify(p) + '\n');
      }
    },
    end() {
      if (drawn) out.write('\n');
    },
  };
}
