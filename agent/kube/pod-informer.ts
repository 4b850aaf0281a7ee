/**
 * The node's pods, kept current: client-node's ListWatch on `/api/v1/pods` with the field
 * selector `spec.nodeName=<node>`. ListWatch itself re-watches after a clean end of the stream and
 * re-lists after `410 Gone`; any other error (connection reset, 5xx, timeout) stops it, so this
 * supervisor restarts it with backoff. A restart re-lists, and the list diff yields only real
 * changes, so consumers see no duplicated adds.
 */
import { EventEmitter } from 'node:events';
import { CoreV1Api, ListWatch, Watch, type KubeConfig, type V1Pod } from '@kubernetes/client-node';
import { Backoff, sleep } from '../../lib/backoff.js';
import { errorMessage } from '../../lib/errors.js';
import type { Logger } from '../../lib/log.js';

export type PodEvent = 'add' | 'update' | 'delete';

export const podKey = (p: V1Pod) => `${p.metadata?.namespace ?? ''}/${p.metadata?.name ?? ''}`;

export class PodInformer extends EventEmitter {
  private readonly lw: ListWatch<V1Pod>;
  private readonly ac = new AbortController();
  private synced = false;
  private restarts = 0;
  private restarting = false;
  private readonly backoff = new Backoff(200, 10_000);

  constructor(
    kc: KubeConfig,
    node: string,
    private readonly log: Logger,
  ) {
    super();
    const core = kc.makeApiClient(CoreV1Api);
    const fieldSelector = `spec.nodeName=${node}`;
    // One ListWatch for the agent's life: restarting it keeps its cache and resourceVersion, so
    // a restart re-watches from where it was (or re-lists and diffs after 410).
    this.lw = new ListWatch<V1Pod>(
      '/api/v1/pods',
      new Watch(kc),
      async () => {
        const l = await core.listPodForAllNamespaces({ fieldSelector });
        // ListWatch diffs the list into add/update/delete after this resolves.
        setImmediate(() => this.markSynced());
        return l;
      },
      false,
      undefined,
      fieldSelector,
    );
    this.lw.on('add', (p) => this.emit('add', p));
    this.lw.on('update', (p) => this.emit('update', p));
    this.lw.on('delete', (p) => this.emit('delete', p));
    this.lw.on('connect', () => this.emit('connect'));
    this.lw.on('error', (e) => void this.restart(e));
  }

  get hasSynced(): boolean {
    return this.synced;
  }

  get restartCount(): number {
    return this.restarts;
  }

  get(key: string): V1Pod | undefined {
    const i = key.indexOf('/');
    return this.lw.get(key.slice(i + 1), key.slice(0, i));
  }

  list(): readonly V1Pod[] {
    return this.lw.list();
  }

  /** Starts watching; resolves after the first successful list (or on stop()). */
  async start(): Promise<void> {
    const firstSync = new Promise<void>((resolve) => this.once('synced', resolve));
    await this.lw.start();
    await Promise.race([firstSync, new Promise((r) => this.ac.signal.addEventListener('abort', r, { once: true }))]);
  }

  async stop(): Promise<void> {
    this.ac.abort();
    await this.lw.stop();
  }

  private markSynced(): void {
    this.backoff.reset();
    if (!this.synced) {
      this.synced = true;
      this.emit('synced');
    }
  }

  private async restart(err: unknown): Promise<void> {
    if (this.restarting || this.ac.signal.aborted) return;
    this.restarting = true;
    try {
      this.restarts++;
      const delay = this.backoff.next();
      this.log.warn({ err: errorMessage(err), delayMs: delay, restarts: this.restarts }, 'pod watch failed; restarting');
      this.emit('restart', err);
      if (!(await sleep(delay, this.ac.signal))) return;
    } finally {
      this.restarting = false;
    }
    await this.lw.start();
  }
}
