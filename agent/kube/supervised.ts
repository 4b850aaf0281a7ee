/**
 * Keeps an in-process server running: start it, and when it cannot start (a socket dir missing,
 * kubelet not up yet) or reports that it died, try again with backoff. Readiness reads `up`.
 */
import { Backoff, sleep } from '../../lib/backoff.js';
import { errorMessage } from '../../lib/errors.js';
import type { Logger } from '../../lib/log.js';

export interface ServerHandle {
  stop(): Promise<void>;
  /** Resolves or rejects when the server ended on its own (optional: most servers never do). */
  ended?: Promise<unknown>;
}

export class Supervised {
  up = false;
  starts = 0;
  lastError: string | undefined;
  private handle: ServerHandle | undefined;
  private readonly ac = new AbortController();
  private loop: Promise<void> | undefined;

  constructor(
    readonly name: string,
    private readonly startFn: () => Promise<ServerHandle>,
    private readonly log: Logger,
    private readonly backoff = new Backoff(500, 30_000),
  ) {}

  /** Starts the restart loop; resolves after the first attempt (successful or not). */
  async start(): Promise<void> {
    let first!: () => void;
    const firstDone = new Promise<void>((r) => (first = r));
    this.loop = (async () => {
      while (!this.ac.signal.aborted) {
        try {
          this.handle = await this.startFn();
          this.starts++;
          this.up = true;
          this.lastError = undefined;
          this.backoff.reset();
          this.log.info({ server: this.name }, 'server up');
          first();
          const ended = this.handle.ended ?? new Promise(() => undefined);
          const outcome = await Promise.race([
            ended.then(
              () => 'ended',
              (e: unknown) => `failed: ${errorMessage(e)}`,
            ),
            new Promise<string>((r) => this.ac.signal.addEventListener('abort', () => r('stop'), { once: true })),
          ]);
          this.up = false;
          if (outcome === 'stop') break;
          this.lastError = outcome;
          this.log.warn({ server: this.name, outcome }, 'server ended; restarting');
          await this.handle.stop().catch(() => undefined);
          this.handle = undefined;
        } catch (e) {
          this.up = false;
          this.lastError = errorMessage(e);
          this.log.warn({ server: this.name, err: this.lastError }, 'server failed to start; retrying');
          first();
        }
        await sleep(this.backoff.next(), this.ac.signal);
      }
    })();
    await firstDone;
  }

  async stop(): Promise<void> {
    this.ac.abort();
    await this.loop;
    const h = this.handle;
    this.handle = undefined;
    this.up = false;
    if (h) await h.stop().catch((e: unknown) => this.log.warn({ server: this.name, err: errorMessage(e) }, 'stop failed'));
  }
}
