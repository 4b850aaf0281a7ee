import { EventEmitter } from 'node:events';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { isSeq, parseAllDocuments, type Document } from 'yaml';
import { AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, errorMessage } from '../../lib/errors.js';
import { silentLogger, type Logger } from '../../lib/log.js';
import { IPAM_KEY_ANNOTATION, vmIpamKey } from '../local/networks.js';
import type { QmpClient } from '../qmp/index.js';
import type { MigrationConfig } from './config.js';
import { newMigrationToken } from './control.js';
import type { MirroredDisk } from './plan.js';
import type { MigrationProgress } from './progress.js';
import { SourceSide, type MigrationResult } from './source.js';
import { TargetSide } from './target.js';
import type { Owner } from './tls.js';

export const MIGRATE_FROM_ANNOTATION = 'vm.podvirt.io/migrate-from';

/**
 * What local mode must provide so a VM can move to a second local pod. Every method maps onto
 * existing local-mode steps; the orchestration below only sequences them.
 */
export interface LocalMigrationHost {
  /** The running source pod: its manifest, its VM's QMP (held by the agent), memory, node-local disks. */
  source(name: string): Promise<{ manifest: string; qmp: QmpClient; netns: string; memoryBytes: number; disks: Array<{ node: string; sizeBytes: number }> }>;
  /**
   * Runs the target pod from `manifest` (which carries `vm.podvirt.io/migrate-from`): fresh
   * sandbox with its own cpuset, fresh volumes, taps as silent migration targets, QEMU from the
   * source's recorded topology with `-incoming defer`, vCPUs pinned, not resumed.
   */
  startTarget(manifest: string, hooks?: TargetHooks): Promise<{ name: string; qmp: QmpClient; netns: string; taps: string[]; diskNodes: string[] }>;
  /** A `"mode": "migration"` attachment in the pod's netns; its IPv4 address. */
  addMigrationNetwork(pod: string, netns: string): Promise<{ ip: string; remove: () => Promise<void> }>;
  /** Opens a silent tap at switch-over (the CNI plugin's activateTap). */
  activateTap(netns: string, ifname: string): Promise<void>;
  stopPod(name: string, opts: { deleteVolumes: boolean }): Promise<void>;
  /** A directory QEMU of `pod` can read (its TLS credentials go there); default: under the orchestrator's state dir. */
  qemuDir?(pod: string): string;
  /** uid/gid QEMU runs as (its TLS credential files are handed to it). */
  qemuOwner?: Owner;
  postCopySupported: boolean;
}

/** Optional calls from inside {@link LocalMigrationHost.startTarget}. */
export interface TargetHooks {
  /** A step of the target pod's start ended (the migration's timing breakdown). */
  onStep?: (step: string) => void;
  /**
   * The target pod's sandbox exists (its netns can take attachments) while its volumes, networks
   * and QEMU are still being set up: the orchestrator adds the migration network then, in parallel.
   */
  onSandbox?: (pod: string, netns: string) => void;
}

export interface LocalMigrationRecord {
  id: string;
  source: string;
  target: string | undefined;
  startedAt: string;
  progress: MigrationProgress | undefined;
  result: MigrationResult | undefined;
  /** When each step of the whole job ended, in ms since `start` was called (where the time goes). */
  steps?: Array<{ step: string; ms: number }>;
  /** Grows with every change of the record (progress, target, result): what a watcher waits on. */
  rev?: number;
  /** The planner's choices the operator should know about (e.g. why post-copy is off), as they are made. */
  notes?: string[];
}

/**
 * Local mode's orchestrator: plays the part the Kubernetes agent plays in a cluster. Creates the
 * target pod, hands both halves the per-migration token through a 0600 state file, follows the
 * migration, then removes whichever pod lost.
 */
export class LocalMigrations {
  private readonly running = new Map<string, { rec: LocalMigrationRecord; abort: AbortController; done: Promise<LocalMigrationRecord> }>();
  /** The last finished migration per source pod, so a client polling for the end sees the result. */
  private readonly finished = new Map<string, LocalMigrationRecord>();
  private readonly log: Logger;
  /** Emits the source pod's name whenever its migration record changes. */
  private readonly changes = new EventEmitter().setMaxListeners(0);

  constructor(
    private readonly host: LocalMigrationHost,
    private readonly stateDir: string,
    log?: Logger,
  ) {
    this.log = log ?? silentLogger;
  }

  /** Starts migrating pod `name`; resolves once it runs (poll {@link get}, or await {@link wait}). */
  async start(name: string, config: MigrationConfig): Promise<LocalMigrationRecord> {
    if (this.running.has(name)) throw new AlreadyExists(`pod ${name} is already migrating`);
    this.finished.delete(name);
    const t0 = performance.now();
    const src = await this.host.source(name);
    const id = `mig-${randomBytes(4).toString('hex')}`;
    const rec: LocalMigrationRecord = { id, source: name, target: undefined, startedAt: new Date(Date.now() - (performance.now() - t0)).toISOString(), progress: undefined, result: undefined, steps: [], rev: 0 };
    const mark = (step: string) => rec.steps!.push({ step, ms: Math.round((performance.now() - t0) * 10) / 10 });
    mark('source facts read');
    const abort = new AbortController();
    const done = this.follow(rec, src, config, abort.signal, mark);
    this.running.set(name, { rec, abort, done });
    void done.finally(() => {
      this.running.delete(name);
      this.finished.set(name, rec);
    });
    return rec;
  }

  /** The migration in progress, else the last finished one. */
  get(name: string): LocalMigrationRecord {
    const r = this.running.get(name)?.rec ?? this.finished.get(name);
    if (!r) throw new NotFound(`no migration of pod ${name}`);
    return r;
  }

  /**
   * The record once it is newer than revision `after` (or has a result), else after `timeoutMs`:
   * a client follows a migration without polling, so it sees the end as soon as it happens.
   */
  async watch(name: string, after: number, timeoutMs: number): Promise<LocalMigrationRecord> {
    const now = this.get(name);
    if (now.result || (now.rev ?? 0) > after) return now;
    await new Promise<void>((resolve) => {
      const onChange = (pod: string) => {
        if (pod !== name) return;
        const r = this.running.get(name)?.rec ?? this.finished.get(name);
        if (r && (r.result || (r.rev ?? 0) > after)) done();
      };
      const timer = setTimeout(done, Math.max(0, Math.min(timeoutMs, 60_000)));
      function done() {
        clearTimeout(timer);
        changes.off('change', onChange);
        resolve();
      }
      const changes = this.changes;
      changes.on('change', onChange);
    });
    return this.get(name);
  }

  private touch(rec: LocalMigrationRecord): void {
    rec.rev = (rec.rev ?? 0) + 1;
    this.changes.emit('change', rec.source);
  }

  async wait(name: string): Promise<LocalMigrationRecord> {
    const r = this.running.get(name);
    if (!r) throw new NotFound(`no migration of pod ${name} in progress`);
    return r.done;
  }

  cancel(name: string): LocalMigrationRecord {
    const r = this.running.get(name);
    if (!r) throw new NotFound(`no migration of pod ${name} in progress`);
    r.abort.abort();
    return r.rec;
  }

  private async follow(
    rec: LocalMigrationRecord,
    src: Awaited<ReturnType<LocalMigrationHost['source']>>,
    config: MigrationConfig,
    signal: AbortSignal,
    mark: (step: string) => void,
  ): Promise<LocalMigrationRecord> {
    const dir = path.join(this.stateDir, rec.id);
    // Clean-up steps; independent of each other, so they run together.
    const undo: Array<() => Promise<unknown>> = [];
    let target: Awaited<ReturnType<LocalMigrationHost['startTarget']>> | undefined;
    let result: MigrationResult;
    // Per pod, so the loser's can go after the pod itself (below).
    const migrationNets = new Map<string, () => Promise<void>>();
    const addMigrationNetwork = async (pod: string, netns: string, side: string) => {
      const m = await this.host.addMigrationNetwork(pod, netns);
      migrationNets.set(pod, () => m.remove());
      mark(`migration network: ${side}`);
      return m;
    };
    try {
      await fs.mkdir(dir, { recursive: true, mode: 0o700 });
      undo.push(() => fs.rm(dir, { recursive: true, force: true }));
      const token = newMigrationToken();
      // The orchestrator's hand-off of the secret: a root-only file both halves read.
      const tokenFile = path.join(dir, 'token.json');
      // Created 0600 (never readable by others, not even for a moment); it lives as long as the
      // migration and is useless after an agent restart, so it needs no fsync.
      await fs.writeFile(tokenFile, JSON.stringify({ migrationId: rec.id, source: rec.source, token }), { mode: 0o600, flag: 'wx' });
      mark('token written');

      // The source's migration attachment and the target pod are independent; the target's own
      // migration attachment only needs its netns, so it goes in while its volumes, taps and QEMU
      // are being set up.
      let dstMigration: Promise<{ ip: string }> | undefined;
      const srcMigration = addMigrationNetwork(rec.source, src.netns, 'source');
      const starting = this.host.startTarget(targetManifest(src.manifest, rec.source, rec.id), {
        onStep: (step) => mark(`target pod: ${step}`),
        onSandbox: (pod, netns) => {
          dstMigration = addMigrationNetwork(pod, netns, 'target');
          dstMigration.catch(() => undefined); // awaited below
        },
      });
      const [started, srcMig] = await Promise.allSettled([starting, srcMigration]);
      if (started.status === 'fulfilled') {
        target = started.value;
        rec.target = target.name;
        this.touch(rec);
        mark('target pod running');
        // A host that does not report its sandbox early: the attachment goes in now.
        dstMigration ??= addMigrationNetwork(target.name, target.netns, 'target');
      }
      const [dstMig] = dstMigration ? await Promise.allSettled([dstMigration]) : [];
      for (const r of [started, srcMig, dstMig]) if (r?.status === 'rejected') throw r.reason;
      if (dstMig?.status !== 'fulfilled' || srcMig.status !== 'fulfilled') throw new FailedPrecondition('the target pod has no migration network');
      const t = target!;

      const { token: tok } = JSON.parse(await fs.readFile(tokenFile, 'utf8')) as { token: string };
      const disks: MirroredDisk[] = src.disks.map((d) => ({ sourceNode: d.node, targetNode: d.node, sizeBytes: d.sizeBytes }));
      const targetSide = new TargetSide({
        migrationId: rec.id,
        token: tok,
        qmp: t.qmp,
        migrationAddress: dstMig.value.ip,
        localDiskNodes: t.diskNodes,
        postCopySupported: this.host.postCopySupported,
        tlsWorkDir: path.join(dir, 'target-ca'),
        tlsQemuDir: this.host.qemuDir ? path.join(this.host.qemuDir(t.name), `${rec.id}-tls`) : path.join(dir, 'target-tls'),
        ...(this.host.qemuOwner ? { qemuOwner: this.host.qemuOwner } : {}),
        onResume: async () => {
          await Promise.all(t.taps.map((tap) => this.host.activateTap(t.netns, tap)));
        },
        log: this.log,
      });
      const port = await targetSide.listen('127.0.0.1', 0);
      undo.push(() => targetSide.close());
      targetSide.on('status', (st: string) => mark(`target QEMU: ${st}`));
      targetSide.on('resumed', () => mark('target: VM runs, confirmed'));
      mark('target side listening');
      const sourceSide = new SourceSide({
        migrationId: rec.id,
        token: tok,
        control: { host: '127.0.0.1', port },
        qmp: src.qmp,
        config,
        memoryBytes: src.memoryBytes,
        disks,
        postCopySupported: this.host.postCopySupported,
        tlsHostname: `${t.name}.migration.podvirt.local`.slice(0, 200),
        tlsQemuDir: this.host.qemuDir ? path.join(this.host.qemuDir(rec.source), `${rec.id}-tls`) : path.join(dir, 'source-tls'),
        ...(this.host.qemuOwner ? { qemuOwner: this.host.qemuOwner } : {}),
        signal,
        log: this.log,
      });
      let lastPhase = '';
      sourceSide.on('progress', (p: MigrationProgress) => {
        rec.progress = p;
        if (p.phase !== lastPhase) mark(`source: ${(lastPhase = p.phase)}`);
        this.touch(rec);
      });
      sourceSide.on('event', (ev: { reason: string; message: string }) => {
        mark(`source: ${ev.reason}`);
        if (ev.reason === 'MigrationNote') {
          (rec.notes ??= []).push(ev.message);
          this.touch(rec);
        }
      });
      result = await sourceSide.run();
      rec.progress = result.progress;
      mark('source side done');
    } catch (e) {
      const reason = errorMessage(e);
      this.log.warn({ source: rec.source, err: reason }, 'migration could not run');
      const progress = rec.progress ?? ({ migrationId: rec.id, phase: 'Failed', qemuStatus: 'none', bytesTransferred: 0, bytesRemaining: 0, bytesTotal: 0, dirtyRateBytesPerSec: 0, mbps: 0, pass: 0, postCopy: false, elapsedMs: 0 } as MigrationProgress);
      rec.progress = { ...progress, phase: signal.aborted ? 'Cancelled' : 'Failed', reason };
      result = { outcome: signal.aborted ? 'cancelled' : 'failed', reason, progress: rec.progress, postCopy: false, notes: [] };
    }
    this.touch(rec);
    // The loser goes: the source after a success (its volumes were copied), the target otherwise.
    // Its migration attachment is released after it (its netns is gone then, and the attachment
    // with it), everything else in parallel with it.
    const loser = result.outcome === 'completed' ? rec.source : target?.name;
    const loserNet = loser !== undefined ? migrationNets.get(loser) : undefined;
    if (loser !== undefined) migrationNets.delete(loser);
    const warn = (what: string) => (e: unknown) => this.log.warn({ err: errorMessage(e) }, what);
    await Promise.all([
      Promise.allSettled([...undo, ...migrationNets.values()].map((u) => u().catch(warn('migration clean-up step failed')))).then(() => mark('migration networks and control removed')),
      (async () => {
        if (loser === undefined) return;
        await this.host.stopPod(loser, { deleteVolumes: true }).catch((e: unknown) => this.log.error({ err: errorMessage(e), pod: loser }, result.outcome === 'completed' ? 'stopping the migrated source' : 'removing the migration target'));
        mark(result.outcome === 'completed' ? 'source pod removed' : 'target pod removed');
        await loserNet?.().catch(warn('migration clean-up step failed'));
        mark(`migration network of ${result.outcome === 'completed' ? 'the source' : 'the target'} released`);
      })(),
    ]);
    this.log.info({ migrationId: rec.id, steps: rec.steps }, 'migration steps');
    // Only now: a client that sees the result must find the loser gone.
    rec.result = result;
    this.touch(rec);
    return rec;
  }
}

/**
 * The target pod's manifest (pure): the source's documents with the Pod renamed and annotated with
 * `vm.podvirt.io/migrate-from`, and every PersistentVolumeClaim renamed with the same suffix, so
 * the target gets fresh node-local volumes (filled by the disk mirror) instead of re-using the
 * source's. The Pod also carries the VM's IPAM owner key (`vm.podvirt.io/ipam-key`: the
 * source's, or the one its first pod derived from its name), so the target's CNI ADD shares the
 * source's address reservation instead of taking a new one; it never changes across migrations.
 */
export function targetManifest(manifest: string, source: string, migrationId: string, namespace = 'default'): string {
  const docs = parseAllDocuments(manifest);
  const suffix = `-m${migrationId.slice(-4)}`;
  const strip = (n: string) => n.replace(/-m[0-9a-f]{4}$/, '');
  const claims = new Map<string, string>();
  let pod: Document | undefined;
  for (const d of docs) {
    if (d.errors.length) throw new InvalidArgument(`source manifest: ${d.errors[0]!.message}`);
    const kind = d.getIn(['kind']);
    if (kind === 'PersistentVolumeClaim') {
      const old = String(d.getIn(['metadata', 'name']));
      const renamed = `${strip(old).slice(0, 200)}${suffix}`;
      claims.set(old, renamed);
      d.setIn(['metadata', 'name'], renamed);
    } else if (kind === 'Pod' || (kind === undefined && docs.length === 1)) {
      pod = d;
    }
  }
  if (!pod) throw new InvalidArgument('source manifest has no Pod document');
  pod.setIn(['metadata', 'name'], `${strip(source).slice(0, 40)}${suffix}`);
  pod.setIn(['metadata', 'annotations', MIGRATE_FROM_ANNOTATION], `${namespace}/${source}`);
  const key = pod.getIn(['metadata', 'annotations', IPAM_KEY_ANNOTATION]);
  if (typeof key !== 'string' || key === '') pod.setIn(['metadata', 'annotations', IPAM_KEY_ANNOTATION], vmIpamKey({ name: source, annotations: {} }));
  const vols = pod.getIn(['spec', 'volumes']);
  if (isSeq(vols)) {
    vols.items.forEach((_v, i) => {
      const claim = pod!.getIn(['spec', 'volumes', i, 'persistentVolumeClaim', 'claimName']);
      if (typeof claim === 'string' && claims.has(claim)) pod!.setIn(['spec', 'volumes', i, 'persistentVolumeClaim', 'claimName'], claims.get(claim));
    });
  }
  return docs.map((d, i) => {
    const t = d.toString();
    return i > 0 && !t.startsWith('---') ? `---\n${t}` : t;
  }).join('');
}
