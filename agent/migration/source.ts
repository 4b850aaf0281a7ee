import { EventEmitter } from 'node:events';
import { promises as fs } from 'node:fs';
import type { Logger } from '../../lib/log.js';
import { silentLogger } from '../../lib/log.js';
import { sleep } from '../../lib/backoff.js';
import { Aborted, DeadlineExceeded, FailedPrecondition, Unavailable, errorMessage } from '../../lib/errors.js';
import type { QmpClient, QmpEvent } from '../qmp/index.js';
import { queryStatus } from '../qmp/index.js';
import type { MigrationConfig } from './config.js';
import { ControlClient, type Body } from './control.js';
import { decideNext, initialDecideState } from './decide.js';
import { planMigration, sourceCleanupSteps, type MigrationPlan, type MirroredDisk } from './plan.js';
import { eventMs, runSteps, type BlockJobInfo, type MigrateInfo, type MigrationPhase, type MigrationProgress } from './progress.js';
import { MigrationTls, type Owner } from './tls.js';

export interface SourceSideOptions {
  migrationId: string;
  token: string;
  /** The target agent's control endpoint. */
  control: { host: string; port: number };
  qmp: QmpClient;
  config: MigrationConfig;
  memoryBytes: number;
  /** Node-local disks to mirror (empty when storage is shared). */
  disks: MirroredDisk[];
  postCopySupported: boolean;
  /** Name the target's server certificate carries (the source checks it). */
  tlsHostname: string;
  tlsQemuDir: string;
  /** `tlsQemuDir` as QEMU opens it, when QEMU runs in another mount namespace (a pod's); default `tlsQemuDir`. */
  tlsQemuView?: string;
  qemuOwner?: Owner;
  /** Aborting it cancels the migration (the source keeps running). */
  signal?: AbortSignal;
  log?: Logger;
  tls?: MigrationTls;
  /** How long to wait for the target's word after the source finished sending. */
  confirmTimeoutMs?: number;
}

export interface MigrationResult {
  outcome: 'completed' | 'failed' | 'cancelled';
  reason?: string;
  progress: MigrationProgress;
  /** Guest pause as QEMU measured it on the source (stop → last byte). */
  downtimeMs?: number;
  /** Source STOP → target RESUME, from both QEMUs' event timestamps (meaningful when both hosts share a clock). */
  observedDowntimeMs?: number;
  totalTimeMs?: number;
  postCopy: boolean;
  notes: string[];
}

const FINAL = new Set(['completed', 'failed', 'cancelled']);

/**
 * The source agent's half: asks the target agent to prepare, mirrors node-local disks into the
 * target's NBD exports, migrates RAM with the planned capabilities, watches progress (switching
 * to post-copy or cancelling as {@link decideNext} says), completes the mirrors at the
 * switch-over, and waits for the target to confirm the VM runs there. Any failure before that
 * leaves the source VM running: migrate_cancel, mirrors cancelled, `cont` if it was paused.
 *
 * Events: `'progress'` (MigrationProgress), `'event'` ({reason, message}) for the agent's event stream.
 */
export class SourceSide extends EventEmitter {
  private readonly log: Logger;
  private readonly tls: MigrationTls;
  private progress: MigrationProgress;
  private plan: MigrationPlan | undefined;
  private control: ControlClient | undefined;
  private readonly started = Date.now();
  private targetFailure: string | undefined;
  private targetResumed = false;
  private stopAtMs: number | undefined;
  private targetResumeAtMs: number | undefined;
  private wake: (() => void) | undefined;

  constructor(private readonly o: SourceSideOptions) {
    super();
    this.log = o.log ?? silentLogger;
    this.tls = o.tls ?? new MigrationTls();
    this.progress = {
      migrationId: o.migrationId,
      phase: 'Preparing',
      qemuStatus: 'none',
      bytesTransferred: 0,
      bytesRemaining: o.memoryBytes,
      bytesTotal: o.memoryBytes,
      dirtyRateBytesPerSec: 0,
      mbps: 0,
      pass: 0,
      postCopy: false,
      elapsedMs: 0,
    };
  }

  get current(): MigrationProgress {
    return { ...this.progress, elapsedMs: Date.now() - this.started };
  }

  private setPhase(phase: MigrationPhase, extra: Partial<MigrationProgress> = {}): void {
    this.progress = { ...this.progress, ...extra, phase };
    this.emit('progress', this.current);
  }

  private note(reason: string, message: string): void {
    this.log.info({ migrationId: this.o.migrationId, reason }, message);
    this.emit('event', { reason, message });
  }

  private interrupted(): string | undefined {
    if (this.o.signal?.aborted) return 'cancelled';
    return this.targetFailure;
  }

  async run(): Promise<MigrationResult> {
    const q = this.o.qmp;
    const onEvent = (ev: QmpEvent) => {
      if (ev.event === 'STOP') this.stopAtMs = eventMs(ev.timestamp);
      if (ev.event === 'MIGRATION' || ev.event === 'BLOCK_JOB_READY' || ev.event === 'BLOCK_JOB_COMPLETED' || ev.event === 'BLOCK_JOB_ERROR') this.wake?.();
    };
    const onAbort = () => this.wake?.();
    q.on('event', onEvent);
    this.o.signal?.addEventListener('abort', onAbort);
    let started = false;
    try {
      await this.prepare();
      await this.mirrorDisks();
      this.check();
      started = true;
      await runSteps(q, this.plan!.sourceMigrate);
      this.note('MigrationStarted', `migrating to ${this.plan!.migrateUri}${this.o.config.tls ? ' over TLS' : ''}`);
      await this.monitor();
      await this.confirm();
      return await this.finishOk();
    } catch (e) {
      return await this.abort(e, started);
    } finally {
      q.off('event', onEvent);
      this.o.signal?.removeEventListener('abort', onAbort);
      this.control?.close();
    }
  }

  private check(): void {
    const why = this.interrupted();
    if (why === 'cancelled') throw new Aborted('cancelled');
    if (why) throw new Unavailable(why);
  }

  private async prepare(): Promise<void> {
    const o = this.o;
    this.control = await ControlClient.connect({ host: o.control.host, port: o.control.port, migrationId: o.migrationId, token: o.token, timeoutMs: 10_000 });
    this.control.on('note', (type: string, body: Body) => {
      if (type === 'target-failed') this.targetFailure = `target: ${String(body.reason)}`;
      if (type === 'resumed') {
        this.targetResumed = true;
        if (typeof body.resumedAtMs === 'number') this.targetResumeAtMs = body.resumedAtMs;
      }
      this.wake?.();
    });
    this.control.on('close', () => {
      if (!this.targetResumed) this.targetFailure ??= 'lost the target agent';
      this.wake?.();
    });
    const st = await queryStatus(o.qmp);
    if (!st.running) throw new FailedPrecondition(`the source VM is ${st.status}, not running`);
    let csr: string | undefined;
    if (o.config.tls) csr = await this.tls.createClientRequest(o.tlsQemuDir, o.tlsHostname, o.qemuOwner);
    const answer = await this.control.request(
      'prepare',
      { config: o.config, memoryBytes: o.memoryBytes, disks: o.disks, postCopySupported: o.postCopySupported, tlsHostname: o.tlsHostname, ...(csr ? { csr } : {}) },
      60_000,
    );
    this.plan = planMigration({
      config: o.config,
      migrationId: o.migrationId,
      memoryBytes: o.memoryBytes,
      targetAddress: String(answer.address),
      disks: o.disks,
      postCopySupported: o.postCopySupported && answer.postCopySupported === true,
      ...(o.config.tls ? { tls: { sourceDir: o.tlsQemuView ?? o.tlsQemuDir, targetDir: '', hostname: o.tlsHostname } } : {}),
    });
    if (JSON.stringify(answer.capabilities) !== JSON.stringify(this.plan.capabilities)) {
      throw new FailedPrecondition('source and target planned different migration capabilities');
    }
    if (o.config.tls) await this.tls.installClientCreds(o.tlsQemuDir, String(answer.caCert), String(answer.clientCert), o.qemuOwner);
    for (const n of this.plan.notes) this.note('MigrationNote', n);
  }

  /** Waits on QEMU events or the poll period, whichever comes first. */
  private tick(ms: number): Promise<void> {
    return new Promise((r) => {
      const t = setTimeout(done, ms);
      function done() {
        clearTimeout(t);
        r();
      }
      this.wake = done;
    });
  }

  private async mirrorDisks(): Promise<void> {
    const plan = this.plan!;
    if (!plan.mirrorJobs.length) {
      await runSteps(this.o.qmp, plan.sourceMirror); // TLS object, used by the RAM stream
      return;
    }
    this.setPhase('MirroringDisks');
    await runSteps(this.o.qmp, plan.sourceMirror);
    const total = this.o.disks.reduce((s, d) => s + d.sizeBytes, 0);
    for (;;) {
      this.check();
      const jobs = (await this.o.qmp.execute<BlockJobInfo[]>('query-block-jobs')).filter((j) => plan.mirrorJobs.includes(j.device));
      const failed = jobs.find((j) => j.error || j.status === 'aborting' || j.status === 'concluded');
      if (failed) throw new Unavailable(`disk mirror ${failed.device} failed: ${failed.error ?? failed.status}`);
      if (jobs.length < plan.mirrorJobs.length) throw new Unavailable('a disk mirror job ended before it was ready');
      const copied = jobs.reduce((s, j) => s + j.offset, 0);
      this.progress = { ...this.progress, disks: { bytesCopied: copied, bytesTotal: total } };
      this.emit('progress', this.current);
      if (jobs.every((j) => j.ready)) break;
      await this.tick(this.o.config.pollIntervalMs);
    }
    this.note('DisksMirrored', `${plan.mirrorJobs.length} disk(s) mirrored; guest writes now go to both sides`);
  }

  private sample(info: MigrateInfo): void {
    const ram = info.ram;
    const status = info.status ?? 'none';
    const phase: MigrationPhase =
      status === 'postcopy-active' ? 'PostCopy' : status === 'pre-switchover' || status === 'device' ? 'SwitchingOver' : this.progress.phase === 'MirroringDisks' || this.progress.phase === 'Preparing' ? 'PreCopy' : this.progress.phase;
    if (status === 'postcopy-active' && !this.progress.postCopy) this.note('PostCopyStarted', 'the VM runs on the target; remaining memory follows on demand');
    this.progress = {
      ...this.progress,
      phase,
      qemuStatus: status,
      postCopy: this.progress.postCopy || status.startsWith('postcopy'),
      ...(ram
        ? {
            bytesTransferred: ram.transferred,
            bytesRemaining: ram.remaining,
            bytesTotal: ram.total,
            dirtyRateBytesPerSec: ram['dirty-pages-rate'] * (ram['page-size'] || 4096),
            mbps: ram.mbps,
            pass: ram['dirty-sync-count'],
          }
        : {}),
      ...(info['expected-downtime'] !== undefined ? { expectedDowntimeMs: info['expected-downtime'] } : {}),
    };
    this.emit('progress', this.current);
  }

  private async monitor(): Promise<void> {
    const q = this.o.qmp;
    const plan = this.plan!;
    let st = initialDecideState(Date.now());
    let switchedOver = false;
    let postCopyMissNoted = false;
    for (;;) {
      const info = await q.execute<MigrateInfo>('query-migrate');
      this.sample(info);
      const status = info.status ?? 'none';
      if (status === 'completed') return;
      if (status === 'failed') throw new Unavailable(`migration failed: ${info['error-desc'] ?? 'QEMU gave no reason'}${this.targetFailure ? ` (${this.targetFailure})` : ''}`);
      if (status === 'cancelled') throw new Aborted('migration cancelled');
      if (status !== 'postcopy-active') this.check();
      if (status === 'pre-switchover' && !switchedOver) {
        switchedOver = true;
        await this.completeMirrors();
        await runSteps(q, [plan.switchoverContinue]);
        continue;
      }
      const sample = {
        atMs: Date.now(),
        status,
        remainingBytes: info.ram?.remaining ?? 0,
        pass: info.ram?.['dirty-sync-count'] ?? 0,
        transferredBytes: info.ram?.transferred ?? 0,
        dirtyBytesPerSec: this.progress.dirtyRateBytesPerSec,
        sendBytesPerSec: ((info.ram?.mbps ?? 0) * 1e6) / 8,
      };
      const limits = { completionDeadlineMs: plan.completionDeadlineMs, progressTimeoutMs: plan.progressTimeoutMs, stallPasses: this.o.config.stallPasses, postCopyAllowed: plan.postCopyAllowed };
      const r = decideNext(st, sample, limits);
      // Would post-copy have taken over here? Then status says why it could not.
      const missed = !plan.postCopyAllowed && r.decision.action !== 'start-postcopy' ? decideNext(st, sample, { ...limits, postCopyAllowed: true }).decision : undefined;
      const missedReason = missed?.action === 'start-postcopy' ? missed.reason : undefined;
      const whyNoPostCopy = missedReason !== undefined ? this.postCopyOffReason() : undefined;
      if (whyNoPostCopy && !postCopyMissNoted) {
        postCopyMissNoted = true;
        this.note('MigrationNote', `post-copy would take over now (${missedReason}), but ${whyNoPostCopy}`);
      }
      st = r.state;
      if (r.decision.action === 'cancel') throw new DeadlineExceeded(`${r.decision.reason}${whyNoPostCopy ? `; post-copy would have taken over, but ${whyNoPostCopy}` : ''}`);
      if (r.decision.action === 'start-postcopy') {
        this.note('PostCopyRequested', `switching to post-copy: ${r.decision.reason}`);
        await q.execute('migrate-start-postcopy');
      }
      await this.tick(this.o.config.pollIntervalMs);
    }
  }

  /** Why the plan has no post-copy, for an operator who wonders why a migration did not converge. */
  private postCopyOffReason(): string {
    const note = this.plan?.notes.find((n) => n.startsWith('post-copy disabled: '));
    if (note) return `it is off: ${note.slice('post-copy disabled: '.length)}`;
    return this.o.config.postCopy ? 'it is not available on both hosts' : 'it is turned off (postCopy: false / --no-post-copy)';
  }

  /** vCPUs are stopped: cancelling a READY mirror makes it copy the last writes and finish cleanly. */
  private async completeMirrors(): Promise<void> {
    const jobs = this.plan!.mirrorJobs;
    if (!jobs.length) return;
    this.setPhase('SwitchingOver');
    const q = this.o.qmp;
    const done = jobs.map((job) => q.waitEvent('BLOCK_JOB_COMPLETED', { timeoutMs: 60_000, match: (ev) => ev.data.device === job }));
    for (const job of jobs) await q.execute('block-job-cancel', { device: job });
    for (const w of done) {
      const ev = await w.promise;
      if (ev.data.error) throw new Unavailable(`disk mirror ${String(ev.data.device)} failed at switch-over: ${String(ev.data.error)}`);
    }
    await runSteps(q, sourceCleanupSteps(this.plan!, false));
    await this.control!.request('disks-done', {}, 30_000);
  }

  /** The source sent everything; the VM must now run on the target. Without that word, take it back. */
  private async confirm(): Promise<void> {
    const deadline = Date.now() + (this.o.confirmTimeoutMs ?? 30_000);
    while (!this.targetResumed) {
      if (this.targetFailure) throw new Unavailable(this.targetFailure);
      if (Date.now() > deadline) throw new DeadlineExceeded('the target did not confirm that the VM runs there');
      await this.tick(200);
    }
  }

  private async finalInfo(): Promise<MigrateInfo> {
    // QEMU can say `completed` with total-time and downtime still 0 for a moment.
    let info: MigrateInfo = {};
    for (let i = 0; i < 50; i++) {
      info = await this.o.qmp.execute<MigrateInfo>('query-migrate');
      if ((info['total-time'] ?? 0) > 0 && info.downtime !== undefined) break;
      await sleep(20);
    }
    return info;
  }

  private async finishOk(): Promise<MigrationResult> {
    const info = await this.finalInfo();
    await this.cleanup();
    const observed = this.stopAtMs !== undefined && this.targetResumeAtMs !== undefined ? Math.max(0, this.targetResumeAtMs - this.stopAtMs) : undefined;
    this.setPhase('Completed', {
      qemuStatus: 'completed',
      bytesRemaining: 0,
      ...(info.downtime !== undefined ? { downtimeMs: info.downtime } : {}),
      ...(info['total-time'] !== undefined ? { totalTimeMs: info['total-time'] } : {}),
    });
    this.note('MigrationCompleted', `VM runs on the target (QEMU downtime ${info.downtime ?? '?'} ms, total ${info['total-time'] ?? '?'} ms${this.progress.postCopy ? ', post-copy' : ''})`);
    return {
      outcome: 'completed',
      progress: this.current,
      ...(info.downtime !== undefined ? { downtimeMs: info.downtime } : {}),
      ...(observed !== undefined ? { observedDowntimeMs: observed } : {}),
      ...(info['total-time'] !== undefined ? { totalTimeMs: info['total-time'] } : {}),
      postCopy: this.progress.postCopy,
      notes: this.plan?.notes ?? [],
    };
  }

  private async cleanup(): Promise<void> {
    if (this.plan) await runSteps(this.o.qmp, sourceCleanupSteps(this.plan, this.o.config.tls)).catch((e) => this.log.warn({ err: errorMessage(e) }, 'source clean-up'));
    if (this.o.config.tls) await fs.rm(this.o.tlsQemuDir, { recursive: true, force: true });
  }

  /**
   * A cancelled mirror ends asynchronously (longer when its NBD peer just died); until it has,
   * its NBD node cannot be deleted and would stay behind in the source QEMU.
   */
  private async mirrorsGone(): Promise<void> {
    const jobs = this.plan?.mirrorJobs ?? [];
    if (!jobs.length) return;
    for (let i = 0; i < 200; i++) {
      const left = (await this.o.qmp.execute<BlockJobInfo[]>('query-block-jobs')).filter((j) => jobs.includes(j.device));
      if (!left.length) return;
      await sleep(50);
    }
    this.log.warn({ migrationId: this.o.migrationId }, 'disk mirror jobs still ending after 10 s');
  }

  /** Leaves the source as it was: migration cancelled, mirrors gone, the VM running. */
  private async abort(e: unknown, started: boolean): Promise<MigrationResult> {
    const cancelled = this.o.signal?.aborted === true || e instanceof Aborted;
    const reason = cancelled ? 'cancelled' : errorMessage(e);
    const q = this.o.qmp;
    const now = q.isOpen ? ((await q.execute<MigrateInfo>('query-migrate').catch(() => ({}) as MigrateInfo)).status ?? '') : '';
    const wasPostCopy = this.progress.postCopy || now.startsWith('postcopy');
    this.log.warn({ migrationId: this.o.migrationId, reason }, 'migration failed; restoring the source');
    try {
      this.control?.notify('abort', { reason });
    } catch {
      /* the target may be gone */
    }
    let sourceState = 'unknown';
    if (q.isOpen) {
      try {
        if (started && !wasPostCopy) {
          if (this.plan) await runSteps(q, this.plan.sourceAbort);
          for (let i = 0; i < 100; i++) {
            const s = (await q.execute<MigrateInfo>('query-migrate')).status ?? 'none';
            if (FINAL.has(s) || s === 'none') break;
            await sleep(50);
          }
        } else if (this.plan) {
          await runSteps(q, this.plan.sourceAbort.slice(1));
        }
        await this.mirrorsGone();
        await this.cleanup();
        const st = await queryStatus(q);
        // QEMU resumes a cancelled migration's VM itself; a stop at pre-switchover or after completion needs `cont`.
        if (!st.running && !wasPostCopy && ['paused', 'postmigrate', 'finish-migrate'].includes(st.status)) await q.execute('cont');
        sourceState = (await queryStatus(q)).status;
      } catch (err) {
        this.log.error({ err: errorMessage(err) }, 'restoring the source after a failed migration');
      }
    }
    const why = wasPostCopy ? `${reason} (during post-copy: the VM state was split and the source cannot resume)` : reason;
    this.setPhase(cancelled ? 'Cancelled' : 'Failed', { reason: why });
    this.note(cancelled ? 'MigrationCancelled' : 'MigrationFailed', `${why}; source VM ${sourceState}`);
    return { outcome: cancelled ? 'cancelled' : 'failed', reason: why, progress: this.current, postCopy: wasPostCopy, notes: this.plan?.notes ?? [] };
  }
}
