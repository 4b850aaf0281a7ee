/**
 * IPAM reservations owned by a key instead of the pod (sticky IPs across live migration).
 *
 * Without a key the delegate sees CNI_CONTAINERID = the pod sandbox's ID, so the reservation is
 * the pod's: a migration target pod gets another one, and the source pod's DEL frees the address
 * the guest still uses. With `runtimeConfig.ipamKey` (else `args.cni.ipamKey`, which Multus fills
 * from a network-selection element's `cni-args`) the delegate is called with CNI_CONTAINERID =
 * the key, and this module keeps, per (network, key, ifname), a record in the state dir:
 *
 *   <stateDir>/ipam-owners/<network>/<key>@<ifname>.json
 *   { network, key, ifname, ipamType, holders: [containerId...], result: <the delegate's ADD result> }
 *
 * The first ADD asks the delegate and records its result; a second ADD with the same key (the
 * migration target on the same node) is answered from the record and joins `holders`; DEL leaves
 * `holders` and only the last one releases the reservation through the delegate. Holders are a
 * set, so a replayed ADD or DEL changes nothing. Every record change is one atomic file write
 * under a per-record lock (in-process queue + lock file across processes: the CNI server and the
 * fallback bundle may both run).
 */
import { promises as fs, readlinkSync } from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { writeJsonAtomic } from '../lib/fs-atomic.js';
import { CniCode, CniError } from './cni-error.js';
import type { CniContext } from './context.js';
import { delegateIpam } from './ipam.js';
import type { Attachment, NetConf } from './netconf.js';
import { parseResult, type CniResult } from './result.js';

/** Plugin-specific (100+) CNI codes of keyed IPAM. */
export const IPAM_KEY_CONFLICT = 101;

const LOCK_WAIT_MS = 60_000;
/** A lock file older than this belongs to a dead or stuck holder (one delegate call is capped at 60 s). */
const LOCK_STALE_MS = 130_000;

export interface OwnerRecord {
  network: string;
  key: string;
  ifname: string;
  ipamType: string;
  /** Container IDs of the attachments sharing the reservation. Empty only while it is being released. */
  holders: string[];
  result: CniResult | undefined;
  updatedAt: string;
}

/** The attachment's explicit IPAM owner key, or undefined (the reservation is the pod's). */
export function ipamKeyOf(conf: NetConf): string | undefined {
  if (!conf.ipamType) return undefined;
  return conf.runtimeConfig.ipamKey ?? conf.args.ipamKey;
}

export function ownersDir(stateDir: string, network: string): string {
  return path.join(stateDir, 'ipam-owners', network);
}

export function recordPath(stateDir: string, network: string, key: string, ifname: string): string {
  return path.join(ownersDir(stateDir, network), `${key}@${encodeURIComponent(ifname)}.json`);
}

/** Addresses the request asks IPAM for (any of the three ways), without prefix lengths. */
export function requestedIps(ctx: CniContext, conf: NetConf): string[] {
  const fromEnv = ctx.cniArgs.get('IP')?.split(',') ?? [];
  return [...(conf.runtimeConfig.ips ?? []), ...(conf.args.ips ?? []), ...fromEnv].map((ip) => ip.trim().split('/')[0]!).filter(Boolean);
}

/** A cached result serves a request only when it holds every address the request names. */
export function conflictingIps(requested: string[], result: CniResult | undefined): string[] {
  const have = new Set((result?.ips ?? []).map((i) => i.address.split('/')[0]));
  return requested.filter((ip) => !have.has(ip));
}

async function readRecord(file: string): Promise<OwnerRecord | undefined> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  try {
    const r = JSON.parse(text) as OwnerRecord;
    if (!Array.isArray(r.holders)) throw new Error('no holders list');
    return { ...r, result: r.result === undefined ? undefined : parseResult(r.result) };
  } catch (e) {
    throw new CniError(CniCode.Internal, `IPAM owner record ${file} is unreadable`, (e as Error).message);
  }
}

// ---- locking ---------------------------------------------------------------------------------

const queues = new Map<string, Promise<unknown>>();

let pidNs: string | undefined;
function ownPidNs(): string {
  if (pidNs === undefined) {
    try {
      pidNs = readlinkSync('/proc/self/ns/pid');
    } catch {
      pidNs = '';
    }
  }
  return pidNs;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** A lock whose holder died in our pid namespace, or that nobody released for LOCK_STALE_MS. */
async function staleLock(file: string): Promise<string | undefined> {
  let text: string;
  let mtime: number;
  try {
    [text, mtime] = await Promise.all([fs.readFile(file, 'utf8'), fs.stat(file).then((s) => s.mtimeMs)]);
  } catch {
    return undefined; // gone: retry at once
  }
  if (Date.now() - mtime > LOCK_STALE_MS) return text;
  try {
    const l = JSON.parse(text) as { pid?: number; pidNs?: string };
    if (typeof l.pid === 'number' && l.pidNs === ownPidNs() && ownPidNs() !== '' && !alive(l.pid)) return text;
  } catch {
    /* being written, or torn by a crash: the age rule decides */
  }
  return undefined;
}

async function takeFileLock(file: string): Promise<() => Promise<void>> {
  await fs.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const me = JSON.stringify({ pid: process.pid, pidNs: ownPidNs(), token: randomBytes(6).toString('hex') });
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (let delay = 2; ; delay = Math.min(delay * 2, 50)) {
    try {
      await fs.writeFile(file, me, { flag: 'wx', mode: 0o600 });
      return async () => {
        // Only our own lock: a stale-breaker may have taken it (then it is theirs now).
        const now = await fs.readFile(file, 'utf8').catch(() => '');
        if (now === me) await fs.rm(file, { force: true });
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    const stale = await staleLock(file);
    if (stale !== undefined) {
      // Move it aside first: only the one who moved the stale content away may delete it; a live
      // lock moved by mistake (it changed in between) is put back, never clobbering a newer one.
      const aside = `${file}.${randomBytes(4).toString('hex')}.stale`;
      if (await fs.rename(file, aside).then(() => true, () => false)) {
        const moved = await fs.readFile(aside, 'utf8').catch(() => stale);
        if (moved !== stale) await fs.link(aside, file).catch(() => undefined);
        await fs.rm(aside, { force: true });
      }
      continue;
    }
    if (Date.now() > deadline) throw new CniError(CniCode.TryAgainLater, `IPAM owner record is locked: ${file}`);
    await new Promise((r) => setTimeout(r, delay));
  }
}

/** Runs `fn` holding the record's lock (FIFO within this process). */
export async function withRecordLock<T>(file: string, fn: () => Promise<T>): Promise<T> {
  const prev = queues.get(file) ?? Promise.resolve();
  const run = prev.catch(() => undefined).then(async () => {
    const unlock = await takeFileLock(`${file}.lock`);
    try {
      return await fn();
    } finally {
      await unlock();
    }
  });
  queues.set(file, run);
  try {
    return await run;
  } finally {
    if (queues.get(file) === run) queues.delete(file);
  }
}

// ---- verbs -----------------------------------------------------------------------------------

/**
 * ADD's IPAM step: the delegate's result, from the key's record when another attachment holds it.
 * `joined` says whether this call made the attachment a holder; only then may a failed ADD undo it
 * (a repeated ADD of a live attachment must not release what the first one holds).
 */
export async function acquireIpam(ctx: CniContext, conf: NetConf): Promise<{ result: CniResult | undefined; joined: boolean }> {
  const key = ipamKeyOf(conf);
  if (key === undefined) return { result: await delegateIpam(ctx, conf, 'ADD'), joined: true };
  const file = recordPath(conf.stateDir, conf.name, key, ctx.ifname);
  return withRecordLock(file, async () => {
    const rec = await readRecord(file);
    if (rec && rec.holders.length > 0) {
      const wrong = conflictingIps(requestedIps(ctx, conf), rec.result);
      if (wrong.length) {
        throw new CniError(
          IPAM_KEY_CONFLICT,
          `IPAM key ${key} holds ${(rec.result?.ips ?? []).map((i) => i.address).join(', ') || 'no address'} on ${conf.name}/${ctx.ifname}, not the requested ${wrong.join(', ')}`,
          `holders: ${rec.holders.join(', ')}`,
        );
      }
      const joined = !rec.holders.includes(ctx.containerId);
      if (joined) {
        rec.holders.push(ctx.containerId);
        rec.updatedAt = new Date().toISOString();
        await writeJsonAtomic(file, rec);
      }
      ctx.logger.info({ key, network: conf.name, ifname: ctx.ifname, holders: rec.holders }, 'IPAM reservation shared by key');
      return { result: rec.result, joined };
    }
    const result = await delegateIpam(ctx, conf, 'ADD', { containerId: key });
    const fresh: OwnerRecord = { network: conf.name, key, ifname: ctx.ifname, ipamType: conf.ipamType ?? '', holders: [ctx.containerId], result, updatedAt: new Date().toISOString() };
    try {
      await writeJsonAtomic(file, fresh);
    } catch (e) {
      await delegateIpam(ctx, conf, 'DEL', { containerId: key }).catch(() => undefined);
      throw e;
    }
    return { result, joined: true };
  });
}

/**
 * DEL's IPAM step (also ADD's rollback). With a key: leave the holders; the last one releases the
 * reservation. The record is written with no holders before the delegate's DEL and removed after
 * it, so a crash or a failed delegate DEL is finished by the next DEL. No record at all (the ADD
 * died between the delegate's ADD and the record write): the delegate's DEL by key, idempotent.
 */
export async function releaseIpam(ctx: CniContext, conf: NetConf): Promise<void> {
  const key = ipamKeyOf(conf);
  if (key === undefined) {
    await delegateIpam(ctx, conf, 'DEL');
    return;
  }
  const file = recordPath(conf.stateDir, conf.name, key, ctx.ifname);
  await withRecordLock(file, async () => {
    const rec = await readRecord(file);
    if (rec) {
      if (!rec.holders.includes(ctx.containerId) && rec.holders.length > 0) {
        ctx.logger.debug({ key, containerId: ctx.containerId, holders: rec.holders }, 'DEL: not a holder of the key (already released)');
        return;
      }
      rec.holders = rec.holders.filter((h) => h !== ctx.containerId);
      rec.updatedAt = new Date().toISOString();
      await writeJsonAtomic(file, rec);
      if (rec.holders.length > 0) {
        ctx.logger.info({ key, network: conf.name, ifname: ctx.ifname, holders: rec.holders }, 'IPAM reservation kept for the remaining holders');
        return;
      }
    }
    await delegateIpam(ctx, conf, 'DEL', { containerId: key });
    await fs.rm(file, { force: true });
  });
}

/** CHECK's IPAM step: the attachment must hold the key, and the delegate must still have the key's reservation. */
export async function checkIpam(ctx: CniContext, conf: NetConf, fail: (msg: string) => CniError): Promise<void> {
  const key = ipamKeyOf(conf);
  if (key === undefined) {
    await delegateIpam(ctx, conf, 'CHECK');
    return;
  }
  const rec = await readRecord(recordPath(conf.stateDir, conf.name, key, ctx.ifname));
  if (!rec?.holders.includes(ctx.containerId)) throw fail(`attachment ${ctx.containerId}/${ctx.ifname} holds no reservation under IPAM key ${key}`);
  await delegateIpam(ctx, conf, 'CHECK', { containerId: key });
}

/**
 * GC's IPAM step: drops holders that are not valid attachments any more and releases keys nobody
 * holds. Returns the attachment list to hand a GC-capable delegate: the valid attachments plus
 * (key, ifname) of every key still held, since the delegate knows those reservations by key.
 */
export async function gcOwners(ctx: CniContext, conf: NetConf): Promise<{ attachments: Attachment[]; errors: unknown[] }> {
  const valid = conf.validAttachments ?? [];
  const attachments: Attachment[] = [...valid];
  const errors: unknown[] = [];
  // Without the runtime's list nothing can be judged stale; a reservation is not dropped on a guess.
  if (!conf.ipamType || conf.validAttachments === undefined) return { attachments, errors };
  const dir = ownersDir(conf.stateDir, conf.name);
  let files: string[] = [];
  try {
    files = (await fs.readdir(dir)).filter((f) => f.endsWith('.json'));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') errors.push(e);
  }
  for (const f of files) {
    const file = path.join(dir, f);
    try {
      await withRecordLock(file, async () => {
        const rec = await readRecord(file);
        if (!rec) return;
        const keep = rec.holders.filter((h) => valid.some((a) => a.containerID === h && a.ifname === rec.ifname));
        if (keep.length > 0) {
          attachments.push({ containerID: rec.key, ifname: rec.ifname });
          if (keep.length !== rec.holders.length) await writeJsonAtomic(file, { ...rec, holders: keep, updatedAt: new Date().toISOString() });
          return;
        }
        ctx.logger.info({ key: rec.key, network: conf.name, ifname: rec.ifname, holders: rec.holders }, 'GC: releasing an IPAM key no valid attachment holds');
        await writeJsonAtomic(file, { ...rec, holders: [], updatedAt: new Date().toISOString() });
        await delegateIpam({ ...ctx, ifname: rec.ifname, env: { ...ctx.env, CNI_IFNAME: rec.ifname } }, conf, 'DEL', { containerId: rec.key });
        await fs.rm(file, { force: true });
      });
    } catch (e) {
      errors.push(e);
    }
  }
  return { attachments, errors };
}

/** The config for a delegate's GC: the valid-attachment lists replaced by `attachments`. */
export function gcDelegateConfig(raw: Record<string, unknown>, attachments: Attachment[]): Record<string, unknown> {
  const out: Record<string, unknown> = { ...raw, 'cni.dev/valid-attachments': attachments };
  if ('cni.dev/attachments' in raw) out['cni.dev/attachments'] = attachments;
  return out;
}
