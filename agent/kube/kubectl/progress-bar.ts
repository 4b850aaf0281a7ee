/**
 * A one-line progress bar on a terminal (redrawn with \r), or plain lines when the output is not a
 * terminal (a new line only when the phase or the tenth of progress changes, so logs stay short).
 */
export interface Progress {
  phase: string;
  percent?: number | undefined;
  transferredBytes?: number | undefined;
  remainingBytes?: number | undefined;
}

const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;

export function renderBar(p: Progress, width = 30): string {
  const pct = Math.max(0, Math.min(100, p.percent ?? 0));
  const filled = Math.round((pct / 100) * width);
  const bytes = p.transferredBytes !== undefined ? `  ${mib(p.transferredBytes)}${p.remainingBytes !== undefined ? ` sent, ${mib(p.remainingBytes)} left` : ''}` : '';
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${pct.toFixed(0).padStart(3)}%  ${p.phase}${bytes}`;
}

export class ProgressBar {
  private last = '';
  private lastKey = '';
  constructor(private readonly out: NodeJS.WritableStream & { isTTY?: boolean }) {}

  update(p: Progress): void {
    const line = renderBar(p);
    if (this.out.isTTY) {
      if (line !== this.last) this.out.write(`\r${line}\x1b[K`);
    } else {
      const key = `${p.phase}|${Math.floor((p.percent ?? 0) / 10)}`;
      if (key !== this.lastKey) this.out.write(line + '\n');
      this.lastKey = key;
    }
    this.last = line;
  }

  done(): void {
    if (this.out.isTTY && this.last) this.out.write('\n');
  }
}
