import { z } from 'zod';
import { InvalidArgument } from '../../lib/errors.js';

/**
 * Migration tuning. Defaults fix what QEMU gets wrong for a VM manager: QEMU caps every
 * migration at 128 MiB/s and keeps pre-copying forever when the guest dirties memory faster
 * than the link; here the bandwidth is uncapped unless configured, and a migration that does
 * not converge switches to post-copy (or is cancelled, leaving the source running).
 */
export interface MigrationConfig {
  /** Bytes per second; 0 = uncapped. */
  maxBandwidth: number;
  /** Longest pause QEMU may plan for the switch-over (QEMU's default is 300 ms). */
  downtimeLimitMs: number;
  /** Parallel migration streams; 0 = one stream. Not combinable with post-copy on QEMU 7.2. */
  multifdChannels: number;
  /** Let QEMU throttle vCPUs of a guest that dirties memory faster than it can be sent. */
  autoConverge: boolean;
  /** Switch to post-copy when pre-copy does not converge (needs userfaultfd for QEMU's user). */
  postCopy: boolean;
  /** No drop of the remaining bytes for this long = stalled. */
  progressTimeoutS: number;
  /** Deadline for the whole migration, per GiB of guest memory plus mirrored disk data. */
  completionTimeoutPerGiBS: number;
  /** Pre-copy passes without a 10 % drop of the remaining bytes before switching to post-copy. */
  stallPasses: number;
  /** Encrypt the RAM stream and the disk mirror with per-migration x509 certificates. */
  tls: boolean;
  /** query-migrate polling period. */
  pollIntervalMs: number;
  /** TCP port of the RAM stream on the target's migration address (the NBD server uses port + 1). */
  port: number;
}

export const DEFAULT_MIGRATION_CONFIG: Readonly<MigrationConfig> = Object.freeze({
  maxBandwidth: 0,
  downtimeLimitMs: 100,
  multifdChannels: 0,
  autoConverge: true,
  postCopy: true,
  progressTimeoutS: 150,
  completionTimeoutPerGiBS: 150,
  stallPasses: 6,
  tls: true,
  pollIntervalMs: 400,
  port: 49152,
});

const UNITS: Record<string, number> = {
  '': 1,
  k: 1e3,
  K: 1e3,
  M: 1e6,
  G: 1e9,
  T: 1e12,
  Ki: 2 ** 10,
  Mi: 2 ** 20,
  Gi: 2 ** 30,
  Ti: 2 ** 40,
};

/** `128Mi`, `1G`, `1048576` (Kubernetes quantity suffixes; an optional `/s` for rates) → bytes. */
export function parseByteQuantity(v: string | number, field: string): number {
  if (typeof v === 'number') {
    if (!Number.isFinite(v) || v < 0) throw new InvalidArgument(`${field}: must be a non-negative number of bytes, got ${v}`);
    return Math.floor(v);
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|k|K|M|G|T|)(?:B)?(?:\/s)?\s*$/.exec(v);
  if (!m) throw new InvalidArgument(`${field}: not a byte quantity (e.g. 512Mi, 1Gi, 0): ${JSON.stringify(v)}`);
  return Math.floor(Number(m[1]) * UNITS[m[2]!]!);
}

/** `50ms`, `2s`, `5m`, or a bare number in `unit` → that unit. */
export function parseDuration(v: string | number, field: string, unit: 'ms' | 's'): number {
  if (typeof v === 'number') {
    if (!Number.isFinite(v) || v < 0) throw new InvalidArgument(`${field}: must be a non-negative number, got ${v}`);
    return v;
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|)\s*$/.exec(v);
  if (!m) throw new InvalidArgument(`${field}: not a duration (e.g. 50ms, 150s, 5m): ${JSON.stringify(v)}`);
  const n = Number(m[1]);
  const ms = m[2] === 'ms' ? n : m[2] === 's' ? n * 1000 : m[2] === 'm' ? n * 60_000 : unit === 'ms' ? n : n * 1000;
  return unit === 'ms' ? ms : ms / 1000;
}

const quantity = z.union([z.string(), z.number()]);

/**
 * The `migration:` block of a VM spec and the migration config file share these keys.
 * Strict: a misspelt key is an error that names it, not a silently ignored setting.
 */
export const migrationOverridesSchema = z
  .object({
    maxBandwidth: quantity,
    downtimeLimit: quantity,
    multifdChannels: z.number().int().min(0).max(64),
    autoConverge: z.boolean(),
    postCopy: z.boolean(),
    progressTimeout: quantity,
    completionTimeoutPerGiB: quantity,
    stallPasses: z.number().int().min(1).max(1000),
    tls: z.boolean(),
    pollInterval: quantity,
    port: z.number().int().min(1).max(65534),
  })
  .partial()
  .strict();

export type MigrationOverrides = z.input<typeof migrationOverridesSchema>;

/** Applies one layer of overrides (spec block, config file or flags) onto `base`; errors name the field. */
export function applyMigrationOverrides(base: MigrationConfig, raw: unknown, where: string): MigrationConfig {
  if (raw === undefined || raw === null) return base;
  const r = migrationOverridesSchema.safeParse(raw);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    const key = issue.path.length ? `${where}.${issue.path.join('.')}` : where;
    const extra = issue.code === 'unrecognized_keys' ? `: unknown key(s) ${issue.keys.join(', ')}` : `: ${issue.message}`;
    throw new InvalidArgument(`${key}${extra}`);
  }
  const o = r.data;
  const out: MigrationConfig = { ...base };
  if (o.maxBandwidth !== undefined) out.maxBandwidth = parseByteQuantity(o.maxBandwidth, `${where}.maxBandwidth`);
  if (o.downtimeLimit !== undefined) out.downtimeLimitMs = parseDuration(o.downtimeLimit, `${where}.downtimeLimit`, 'ms');
  if (o.multifdChannels !== undefined) out.multifdChannels = o.multifdChannels;
  if (o.autoConverge !== undefined) out.autoConverge = o.autoConverge;
  if (o.postCopy !== undefined) out.postCopy = o.postCopy;
  if (o.progressTimeout !== undefined) out.progressTimeoutS = parseDuration(o.progressTimeout, `${where}.progressTimeout`, 's');
  if (o.completionTimeoutPerGiB !== undefined) {
    out.completionTimeoutPerGiBS = parseDuration(o.completionTimeoutPerGiB, `${where}.completionTimeoutPerGiB`, 's');
  }
  if (o.stallPasses !== undefined) out.stallPasses = o.stallPasses;
  if (o.tls !== undefined) out.tls = o.tls;
  if (o.pollInterval !== undefined) out.pollIntervalMs = parseDuration(o.pollInterval, `${where}.pollInterval`, 'ms');
  if (o.port !== undefined) out.port = o.port;
  return validateMigrationConfig(out, where);
}

/** Cross-field checks; QEMU's own limits (downtime-limit ≤ 2000 s). */
export function validateMigrationConfig(c: MigrationConfig, where = 'migration'): MigrationConfig {
  if (c.downtimeLimitMs < 1 || c.downtimeLimitMs > 2_000_000) {
    throw new InvalidArgument(`${where}.downtimeLimit: must be between 1 ms and 2000 s, got ${c.downtimeLimitMs} ms`);
  }
  if (c.progressTimeoutS <= 0) throw new InvalidArgument(`${where}.progressTimeout: must be positive`);
  if (c.completionTimeoutPerGiBS <= 0) throw new InvalidArgument(`${where}.completionTimeoutPerGiB: must be positive`);
  if (c.pollIntervalMs < 10) throw new InvalidArgument(`${where}.pollInterval: must be at least 10 ms`);
  return c;
}

/**
 * Layers, lowest first: built-in defaults (TLS on; local mode passes `tls: false` as its base),
 * the config file, the VM spec's `migration:` block, then command-line flags.
 */
export function resolveMigrationConfig(layers: Array<{ where: string; value: unknown }>, base: MigrationConfig = DEFAULT_MIGRATION_CONFIG): MigrationConfig {
  let c: MigrationConfig = { ...base };
  for (const l of layers) c = applyMigrationOverrides(c, l.value, l.where);
  return c;
}
