import type { QmpClient } from '../qmp/index.js';
import { QmpError } from '../qmp/index.js';
import type { QmpStep } from './plan.js';

/** Phases reported in status and on the CLI, in order. */
export type MigrationPhase =
  | 'Preparing'
  | 'MirroringDisks'
  | 'PreCopy'
  | 'PostCopy'
  | 'SwitchingOver'
  | 'Completed'
  | 'Failed'
  | 'Cancelled';

/** What `podvirt status` shows under `migration` and what the CLI draws its bar from. */
export interface MigrationProgress {
  migrationId: string;
  phase: MigrationPhase;
  /** QEMU's migration status on the source (`active`, `postcopy-active`, ...). */
  qemuStatus: string;
  bytesTransferred: number;
  bytesRemaining: number;
  bytesTotal: number;
  dirtyRateBytesPerSec: number;
  mbps: number;
  pass: number;
  expectedDowntimeMs?: number;
  /** Final figures, once completed. */
  downtimeMs?: number;
  totalTimeMs?: number;
  disks?: { bytesCopied: number; bytesTotal: number };
  postCopy: boolean;
  elapsedMs: number;
  reason?: string;
}

/** `query-migrate` as QEMU 7.2 answers it (fields appear only when meaningful). */
export interface MigrateInfo {
  status?: string;
  'total-time'?: number;
  'expected-downtime'?: number;
  downtime?: number;
  'setup-time'?: number;
  'error-desc'?: string;
  ram?: {
    transferred: number;
    remaining: number;
    total: number;
    mbps: number;
    'dirty-pages-rate': number;
    'dirty-sync-count': number;
    'page-size': number;
    'postcopy-requests'?: number;
  };
}

export interface BlockJobInfo {
  device: string;
  type: string;
  len: number;
  offset: number;
  ready: boolean;
  status: string;
  error?: string;
}

/** Runs plan steps in order; an error whose class the step tolerates counts as done. */
export async function runSteps(q: QmpClient, steps: QmpStep[]): Promise<void> {
  for (const s of steps) {
    try {
      await q.execute(s.execute, s.arguments);
    } catch (e) {
      if (e instanceof QmpError && s.tolerate?.includes(e.qmpClass)) continue;
      throw e;
    }
  }
}

/** Seconds+microseconds of a QMP event → milliseconds since the epoch (QEMU's wall clock). */
export function eventMs(ts: { seconds: number; microseconds: number }): number {
  return ts.seconds * 1000 + ts.microseconds / 1000;
}
