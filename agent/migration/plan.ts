import { InvalidArgument } from '../../lib/errors.js';
import type { MigrationConfig } from './config.js';

/** One QMP command of a plan; `tolerate` lists QMP error classes that count as "already done". */
export interface QmpStep {
  execute: string;
  arguments?: Record<string, unknown>;
  tolerate?: string[];
}

/** A disk the target does not share with the source: copied with blockdev-mirror into the target's NBD export. */
export interface MirroredDisk {
  /** Source block node being mirrored (the VM's disk node). */
  sourceNode: string;
  /** Target block node to export (the target VM's same disk, backed by its own freshly provisioned volume). */
  targetNode: string;
  sizeBytes: number;
}

export interface MigrationPlanInput {
  config: MigrationConfig;
  /** Identifies the migration in object ids, export names and certificate names. */
  migrationId: string;
  memoryBytes: number;
  /** Target's address on the migration network (QEMU listens there). */
  targetAddress: string;
  disks: MirroredDisk[];
  /** Whether QEMU on both sides may use userfaultfd (root, or vm.unprivileged_userfaultfd=1). */
  postCopySupported: boolean;
  /** Credential directories as QEMU sees them; required when config.tls. */
  tls?: { sourceDir: string; targetDir: string; hostname: string };
}

export interface MigrationPlan {
  migrationId: string;
  migrateUri: string;
  nbd?: { host: string; port: number };
  /** Capabilities set on both sides (QEMU requires postcopy-ram/multifd to match). */
  capabilities: Array<{ capability: string; state: boolean }>;
  sourceParameters: Record<string, unknown>;
  targetParameters: Record<string, unknown>;
  /** Target: credentials, capabilities, parameters, NBD exports, then listen. */
  target: QmpStep[];
  /** Source before RAM migration: credentials, NBD client nodes, one mirror job per disk. */
  sourceMirror: QmpStep[];
  /** Source: capabilities, parameters, migrate. */
  sourceMigrate: QmpStep[];
  /** Source in `pre-switchover` (vCPUs stopped): complete the mirrors (cancel of a READY job = clean finish), then continue. */
  mirrorJobs: string[];
  switchoverContinue: QmpStep;
  /** Source after a failure: stop everything, drop what was added, keep the VM running. */
  sourceAbort: QmpStep[];
  /**
   * Target at the switch-over, after the mirrors finished and before the device state arrives:
   * the export must be gone when QEMU activates the disks, or its write permission would
   * conflict with the disk device's.
   */
  targetDisksDone: QmpStep[];
  /** Target after it resumed: drop credentials. */
  targetFinish: QmpStep[];
  /** Milliseconds; see {@link decideNext}. */
  completionDeadlineMs: number;
  progressTimeoutMs: number;
  postCopyAllowed: boolean;
  /** Choices the planner made that the operator should know about. */
  notes: string[];
}

export const GiB = 2 ** 30;
/** What QEMU 7.2 reads as "no cap": max-bandwidth must fit in size_t, so the largest exact JSON integer. */
export const UNCAPPED_BANDWIDTH = Number.MAX_SAFE_INTEGER;

const safeId = (s: string) => s.replace(/[^A-Za-z0-9_-]/g, '-').slice(0, 40);

/**
 * Pure: config + VM facts → the complete QMP conversation of a migration, for both QEMUs.
 * The driver executes it and only decides *when* (events, progress) — never *what*.
 */
export function planMigration(input: MigrationPlanInput): MigrationPlan {
  const c = input.config;
  const notes: string[] = [];
  if (!input.targetAddress) throw new InvalidArgument('migration: target address is empty');
  if (c.tls && !input.tls) throw new InvalidArgument('migration: tls is on but no credential directories were given');
  if (input.memoryBytes <= 0) throw new InvalidArgument('migration: memory size must be positive');
  const id = safeId(input.migrationId);
  const host = input.targetAddress.includes(':') ? `[${input.targetAddress}]` : input.targetAddress;
  const migrateUri = `tcp:${host}:${c.port}`;
  const nbdPort = c.port + 1;

  let postCopy = c.postCopy;
  if (postCopy && !input.postCopySupported) {
    postCopy = false;
    notes.push(
      'post-copy disabled: userfaultfd is not available to QEMU (vm.unprivileged_userfaultfd=0 and QEMU is not root); ' +
        'a guest that outruns the link can then only be slowed by auto-converge. Enable it with "sysctl vm.unprivileged_userfaultfd=1" on both hosts',
    );
  }
  const multifd = c.multifdChannels > 0;
  if (postCopy && multifd) {
    postCopy = false;
    notes.push('post-copy disabled: QEMU 7.2 cannot combine it with multifd; auto-converge and the deadlines apply');
  }
  if (!postCopy && !c.autoConverge) notes.push('neither post-copy nor auto-converge: a guest that dirties memory faster than the link will be cancelled at the deadline');

  const capabilities = [
    { capability: 'events', state: true },
    // Both sides must say the same about these; everything is listed so a reused QEMU carries nothing over.
    { capability: 'postcopy-ram', state: postCopy },
    { capability: 'multifd', state: multifd },
    { capability: 'auto-converge', state: c.autoConverge },
    // Post-copy needs it; without post-copy it only adds a wait at completion, while the source is
    // stopped, for the target's acknowledgement.
    { capability: 'return-path', state: postCopy },
    // The source stops at `pre-switchover` so disk mirrors finish while the vCPUs are stopped.
    { capability: 'pause-before-switchover', state: input.disks.length > 0 },
  ];

  const credsId = `pvmig-tls-${id}`;
  const tlsParams = (side: 'source' | 'target'): Record<string, unknown> =>
    c.tls ? { 'tls-creds': credsId, 'tls-hostname': side === 'source' ? input.tls!.hostname : '' } : { 'tls-creds': '' };

  const sourceParameters: Record<string, unknown> = {
    'max-bandwidth': c.maxBandwidth > 0 ? c.maxBandwidth : UNCAPPED_BANDWIDTH,
    'downtime-limit': Math.round(c.downtimeLimitMs),
    ...(multifd ? { 'multifd-channels': c.multifdChannels } : {}),
    ...tlsParams('source'),
  };
  const targetParameters: Record<string, unknown> = {
    ...(multifd ? { 'multifd-channels': c.multifdChannels } : {}),
    ...tlsParams('target'),
  };

  const credsObject = (side: 'source' | 'target'): QmpStep => ({
    execute: 'object-add',
    arguments: {
      'qom-type': 'tls-creds-x509',
      id: credsId,
      dir: side === 'source' ? input.tls!.sourceDir : input.tls!.targetDir,
      endpoint: side === 'source' ? 'client' : 'server',
      'verify-peer': true,
    },
  });

  const target: QmpStep[] = [];
  if (c.tls) target.push(credsObject('target'));
  target.push({ execute: 'migrate-set-capabilities', arguments: { capabilities } });
  target.push({ execute: 'migrate-set-parameters', arguments: targetParameters });
  if (input.disks.length) {
    target.push({
      execute: 'nbd-server-start',
      arguments: {
        addr: { type: 'inet', data: { host: input.targetAddress, port: String(nbdPort) } },
        ...(c.tls ? { 'tls-creds': credsId } : {}),
      },
    });
    for (const d of input.disks) {
      target.push({ execute: 'block-export-add', arguments: { type: 'nbd', id: `pvmig-exp-${d.targetNode}`, 'node-name': d.targetNode, name: d.targetNode, writable: true } });
    }
  }
  target.push({ execute: 'migrate-incoming', arguments: { uri: migrateUri } });

  const sourceMirror: QmpStep[] = [];
  const mirrorJobs: string[] = [];
  if (c.tls) sourceMirror.push(credsObject('source'));
  for (const d of input.disks) {
    const nbdNode = `pvmig-nbd-${d.sourceNode}`.slice(0, 31);
    const job = `pvmig-mirror-${d.sourceNode}`.slice(0, 31);
    mirrorJobs.push(job);
    sourceMirror.push({
      execute: 'blockdev-add',
      arguments: {
        driver: 'nbd',
        'node-name': nbdNode,
        server: { type: 'inet', host: input.targetAddress, port: String(nbdPort) },
        export: d.targetNode,
        ...(c.tls ? { 'tls-creds': credsId, 'tls-hostname': input.tls!.hostname } : {}),
      },
    });
    sourceMirror.push({
      execute: 'blockdev-mirror',
      arguments: {
        'job-id': job,
        device: d.sourceNode,
        target: nbdNode,
        sync: 'full',
        // Guest writes during the copy go to both sides synchronously once READY, so the final sync is tiny.
        'copy-mode': 'write-blocking',
        'auto-finalize': true,
        'auto-dismiss': true,
        ...(c.maxBandwidth > 0 ? { speed: c.maxBandwidth } : {}),
      },
    });
  }

  const sourceMigrate: QmpStep[] = [
    { execute: 'migrate-set-capabilities', arguments: { capabilities } },
    { execute: 'migrate-set-parameters', arguments: sourceParameters },
    { execute: 'migrate', arguments: { uri: migrateUri } },
  ];

  const sourceAbort: QmpStep[] = [
    { execute: 'migrate_cancel', tolerate: ['GenericError'] },
    ...mirrorJobs.map((job) => ({ execute: 'block-job-cancel', arguments: { device: job, force: true }, tolerate: ['GenericError', 'DeviceNotActive'] })),
  ];

  const targetDisksDone: QmpStep[] = [];
  if (input.disks.length) {
    for (const d of input.disks) targetDisksDone.push({ execute: 'block-export-del', arguments: { id: `pvmig-exp-${d.targetNode}`, mode: 'hard' }, tolerate: ['GenericError'] });
    targetDisksDone.push({ execute: 'nbd-server-stop', tolerate: ['GenericError'] });
  }
  const targetFinish: QmpStep[] = [];
  // The parameter outlives the object: a later migration out of this VM must not go looking for it.
  if (c.tls) targetFinish.push({ execute: 'migrate-set-parameters', arguments: { 'tls-creds': '', 'tls-hostname': '' }, tolerate: ['GenericError'] });
  if (c.tls) targetFinish.push({ execute: 'object-del', arguments: { id: credsId }, tolerate: ['GenericError'] });

  const diskBytes = input.disks.reduce((s, d) => s + d.sizeBytes, 0);
  const completionDeadlineMs = Math.round(c.completionTimeoutPerGiBS * 1000 * Math.max(1, (input.memoryBytes + diskBytes) / GiB));

  return {
    migrationId: input.migrationId,
    migrateUri,
    ...(input.disks.length ? { nbd: { host: input.targetAddress, port: nbdPort } } : {}),
    capabilities,
    sourceParameters,
    targetParameters,
    target,
    sourceMirror,
    sourceMigrate,
    mirrorJobs,
    switchoverContinue: { execute: 'migrate-continue', arguments: { state: 'pre-switchover' } },
    sourceAbort,
    targetDisksDone,
    targetFinish,
    completionDeadlineMs,
    progressTimeoutMs: Math.round(c.progressTimeoutS * 1000),
    postCopyAllowed: postCopy,
    notes,
  };
}

/** The source's steps that undo {@link MigrationPlan.sourceMirror} after the jobs are gone. */
export function sourceCleanupSteps(plan: MigrationPlan, tls: boolean): QmpStep[] {
  const steps: QmpStep[] = [];
  for (const s of plan.sourceMirror) {
    if (s.execute === 'blockdev-add') steps.push({ execute: 'blockdev-del', arguments: { 'node-name': s.arguments!['node-name'] }, tolerate: ['GenericError'] });
  }
  if (tls) {
    steps.push({ execute: 'migrate-set-parameters', arguments: { 'tls-creds': '', 'tls-hostname': '' }, tolerate: ['GenericError'] });
    steps.push({ execute: 'object-del', arguments: { id: `pvmig-tls-${safeId(plan.migrationId)}` }, tolerate: ['GenericError'] });
  }
  return steps;
}
