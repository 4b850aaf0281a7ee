import * as path from 'node:path';
import { promises as fs } from 'node:fs';
import { EventEmitter } from 'node:events';
import type { Logger } from '../../lib/log.js';
import { silentLogger } from '../../lib/log.js';
import { FailedPrecondition, InvalidArgument, errorMessage } from '../../lib/errors.js';
import type { QmpClient, QmpEvent } from '../qmp/index.js';
import { queryStatus } from '../qmp/index.js';
import { DEFAULT_MIGRATION_CONFIG, validateMigrationConfig, type MigrationConfig } from './config.js';
import { ControlServer, type Body } from './control.js';
import { planMigration, type MigrationPlan, type MirroredDisk } from './plan.js';
import { eventMs, runSteps } from './progress.js';
import { MigrationTls, type Owner } from './tls.js';

export interface TargetSideOptions {
  migrationId: string;
  token: string;
  /** QMP of the target QEMU, started with `-incoming defer` (and its vCPUs already pinned to the target's cpuset). */
  qmp: QmpClient;
  /** The target's address on the migration network: QEMU listens there for RAM and NBD. */
  migrationAddress: string;
  /** Block node names of the target VM's disks that must be filled from the source (node-local volumes). */
  localDiskNodes: string[];
  /**
   * Refuse a source that would leave one of `localDiskNodes` unfilled (the VM would run on an
   * empty volume). Off by default: local mode and the driver tests name only what they mirror.
   */
  fillAllLocalDisks?: boolean;
  /** Whether this QEMU may use userfaultfd. */
  postCopySupported: boolean;
  /** Where to keep the CA (root only) and the directory QEMU reads its credentials from. */
  tlsWorkDir: string;
  tlsQemuDir: string;
  /** `tlsQemuDir` as QEMU opens it, when QEMU runs in another mount namespace (a pod's); default `tlsQemuDir`. */
  tlsQemuView?: string;
  qemuOwner?: Owner;
  /**
   * Runs when the VM is about to run (or just started running) on the target: the network
   * hand-over (the CNI's activateTap). Failures are logged and reported, not fatal: the guest
   * is already here and the source is gone.
   */
  onResume?: () => Promise<void>;
  log?: Logger;
  tls?: MigrationTls;
}

/**
 * The target agent's half of a migration. Listens on the control endpoint; on `prepare` plans
 * the same migration as the source (the pure planner, from the source's config) and readies its
 * QEMU: credentials, capabilities, NBD exports of the fresh local volumes, `migrate-incoming`.
 * Then it watches its QEMU and hands the network over when the VM runs here.
 *
 * Events: `'resumed'`, `'failed'` (reason), `'status'` (QEMU migration status).
 */
export class TargetSide extends EventEmitter {
  readonly server: ControlServer;
  private plan: MigrationPlan | undefined;
  private settled: 'resumed' | 'failed' | undefined;
  private readonly log: Logger;
  private readonly tls: MigrationTls;
  private resumeHandled = false;
  /** QEMU's timestamp of the guest running here (RESUME), for the guest-visible downtime. */
  private resumedAtMs: number | undefined;
  private readonly onEvent = (ev: QmpEvent) => void this.qemuEvent(ev);
  private readonly onClose = () => this.fail('target QEMU exited');

  constructor(private readonly o: TargetSideOptions) {
    super();
    this.log = o.log ?? silentLogger;
    this.tls = o.tls ?? new MigrationTls();
    this.server = new ControlServer(o.migrationId, o.token, (type, body) => this.handle(type, body));
    this.server.on('rejected', (why: string) => this.log.warn({ why }, 'migration control: peer rejected'));
  }

  /** Starts the control endpoint; resolves with its port. */
  async listen(host: string, port = 0): Promise<number> {
    this.o.qmp.on('event', this.onEvent);
    this.o.qmp.on('close', this.onClose);
    return this.server.listen(host, port);
  }

  get outcome(): 'resumed' | 'failed' | undefined {
    return this.settled;
  }

  private async handle(type: string, body: Body): Promise<Body> {
    if (type === 'prepare') return this.prepare(body);
    if (type === 'abort') {
      this.fail(`source aborted: ${typeof body.reason === 'string' ? body.reason : 'no reason given'}`);
      return {};
    }
    if (type === 'disks-done') {
      if (!this.plan) throw new FailedPrecondition('migration not prepared');
      await runSteps(this.o.qmp, this.plan.targetDisksDone);
      return {};
    }
    if (type === 'status') return { settled: this.settled ?? null, status: (await this.o.qmp.execute<{ status?: string }>('query-migrate')).status ?? 'none' };
    throw new InvalidArgument(`migration control: unknown request ${type}`);
  }

  private async prepare(body: Body): Promise<Body> {
    if (this.plan) throw new FailedPrecondition('migration already prepared');
    const st = await queryStatus(this.o.qmp);
    if (st.status !== 'inmigrate') throw new FailedPrecondition(`target QEMU is ${st.status}, not waiting for an incoming migration`);
    const config = validateMigrationConfig({ ...DEFAULT_MIGRATION_CONFIG, ...(body.config as Partial<MigrationConfig>) });
    const disks = (Array.isArray(body.disks) ? body.disks : []) as MirroredDisk[];
    for (const d of disks) {
      if (!this.o.localDiskNodes.includes(d.targetNode)) throw new InvalidArgument(`migration: the target has no local disk node ${JSON.stringify(d.targetNode)} to fill`);
    }
    if (this.o.fillAllLocalDisks) {
      const unfilled = this.o.localDiskNodes.filter((n) => !disks.some((d) => d.targetNode === n));
      if (unfilled.length) throw new FailedPrecondition(`migration: the source does not mirror the target's node-local disk(s) ${unfilled.join(', ')}; the VM would find them empty`);
    }
    const hostname = String(body.tlsHostname ?? '');
    const plan = planMigration({
      config,
      migrationId: this.o.migrationId,
      memoryBytes: Number(body.memoryBytes),
      targetAddress: this.o.migrationAddress,
      disks,
      postCopySupported: this.o.postCopySupported && body.postCopySupported === true,
      ...(config.tls ? { tls: { sourceDir: '', targetDir: this.o.tlsQemuView ?? this.o.tlsQemuDir, hostname } } : {}),
    });
    const answer: Body = { migrateUri: plan.migrateUri, address: this.o.migrationAddress, capabilities: plan.capabilities, notes: plan.notes, postCopySupported: this.o.postCopySupported };
    if (config.tls) {
      if (typeof body.csr !== 'string') throw new InvalidArgument('migration: TLS requested without a client certificate request');
      const ca = await this.tls.createCa(path.join(this.o.tlsWorkDir, 'ca'), this.o.migrationId);
      await this.tls.createServerCreds(ca, this.o.tlsQemuDir, hostname, this.o.qemuOwner);
      answer.caCert = ca.certPem;
      answer.clientCert = await this.tls.signClient(ca, body.csr);
    }
    await runSteps(this.o.qmp, plan.target);
    this.plan = plan;
    this.log.info({ migrationId: this.o.migrationId, uri: plan.migrateUri, disks: disks.length, tls: config.tls }, 'migration target listening');
    return answer;
  }

  private async qemuEvent(ev: QmpEvent): Promise<void> {
    if (ev.event === 'MIGRATION') {
      const status = String(ev.data.status);
      this.emit('status', status);
      this.server.notify('target-status', { status });
      if (status === 'failed') this.fail('incoming migration failed on the target');
      if (status === 'completed' || status === 'postcopy-active') await this.maybeResume();
    } else if (ev.event === 'RESUME') {
      this.resumedAtMs ??= eventMs(ev.timestamp);
      await this.maybeResume();
    }
  }

  /** A target started with -S stays paused after the migration: hand the network over, then run it. */
  private async maybeResume(): Promise<void> {
    if (this.resumeHandled || this.settled) return;
    let st;
    try {
      st = await queryStatus(this.o.qmp);
    } catch {
      return;
    }
    if (st.status === 'inmigrate' || this.resumeHandled) return;
    this.resumeHandled = true;
    // The network hand-over and `cont` do not wait for each other: the guest runs again as soon as
    // it can (its pause is the guest-visible downtime), and is announced once its taps are open.
    const handOver = (async () => {
      try {
        if (this.o.onResume) await this.o.onResume();
      } catch (e) {
        this.log.error({ err: errorMessage(e) }, 'network hand-over failed on the target');
      }
    })();
    try {
      const resume = !st.running && (st.status === 'paused' || st.status === 'prelaunch') ? this.o.qmp.execute('cont') : Promise.resolve();
      await Promise.all([resume, handOver]);
      // RARP/GARP from every NIC so switches and the bridge learn the VM's MAC on this side.
      await this.o.qmp.execute('announce-self', { initial: 50, max: 550, rounds: 5, step: 100 });
    } catch (e) {
      this.log.error({ err: errorMessage(e) }, 'resuming the VM on the target failed');
      this.fail(`resume on target failed: ${errorMessage(e)}`);
      return;
    }
    await this.finishWhenCompleted();
  }

  private async finishWhenCompleted(): Promise<void> {
    // In post-copy the RAM still streams in: the NBD server must stay until QEMU says completed.
    for (;;) {
      const st = await this.o.qmp.execute<{ status?: string }>('query-migrate').catch(() => ({ status: 'failed' }));
      if (st.status === 'completed') break;
      if (st.status === 'failed') return this.fail('incoming migration failed on the target');
      await new Promise((r) => setTimeout(r, 100));
    }
    if (this.plan) await runSteps(this.o.qmp, [...this.plan.targetDisksDone, ...this.plan.targetFinish]).catch((e) => this.log.warn({ err: errorMessage(e) }, 'target clean-up'));
    await fs.rm(this.o.tlsQemuDir, { recursive: true, force: true });
    await fs.rm(path.join(this.o.tlsWorkDir, 'ca'), { recursive: true, force: true });
    this.settled = 'resumed';
    this.server.notify('resumed', this.resumedAtMs !== undefined ? { resumedAtMs: this.resumedAtMs } : {});
    this.emit('resumed');
  }

  private fail(reason: string): void {
    if (this.settled) return;
    this.settled = 'failed';
    this.server.notify('target-failed', { reason });
    this.emit('failed', reason);
  }

  /** Stops listening and watching; the caller owns the QEMU (kills it on failure). */
  async close(): Promise<void> {
    this.o.qmp.off('event', this.onEvent);
    this.o.qmp.off('close', this.onClose);
    await this.server.close();
    await fs.rm(this.o.tlsQemuDir, { recursive: true, force: true });
    await fs.rm(path.join(this.o.tlsWorkDir, 'ca'), { recursive: true, force: true });
  }
}
