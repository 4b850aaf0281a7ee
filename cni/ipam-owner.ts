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
 *
 * Cluster-wide IPAM (`ipamScope`, see ipamScopeOf): the same key names ONE reservation for all
 * nodes, so a node's record also says whether this node owns it (`owner`): a migration target's
 * fresh hold is provisional (owner null: its DEL releases nothing, the reservation is the
 * source's) until the agent promotes it at success; the source's hold is disowned ("handed
 * over") at success, so the source node's last DEL releases nothing either. With a node-local
 * IPAM (host-local, static) each node's store is its own and the last DEL always frees it.
 */
import { promises as fs, readlinkSync } from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { writeJsonAtomic } from '../lib/fs-atomic.js';
import { isMigrationTarget } from './attachment.js';
import { CniCode, CniError } from './cni-error.js';
import type { CniContext } from './context.js';
import { delegateIpam } from './ipam.js';
import type { CniLogger } from './logger.js';
import type { Attachment, IpamScope, NetConf } from './netconf.js';
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
  /** The IPAM scope when the record was made; absent in older records (the config decides). */
  scope?: IpamScope;
  /**
   * Cluster scope: the holder through which this node owns the cluster-wide reservation, or null
   * when the node does not own it (a migration target not promoted yet, or a source that handed
   * the VM over): the last DEL then releases nothing. Absent (older records): owned.
   */
  owner?: string | null;
  /** Why `owner` is null: set by a hand-over, absent for a provisional target. */
  handedOverAt?: string;
  /** Written before the delegate's ADD: whether the reservation exists is not known yet. */
  pending?: boolean;
}

/** IPAM plugins whose store is per node (host-local's files, static's config). */
const NODE_LOCAL_IPAM = new Set(['host-local', 'static']);

export function defaultIpamScope(ipamType: string | undefined): IpamScope {
  return NODE_LOCAL_IPAM.has(ipamType ?? '') ? 'node' : 'cluster';
}

/** Config `ipamScope`, else node for host-local and static, cluster for any other IPAM plugin. */
export function ipamScopeOf(conf: NetConf): IpamScope {
  return conf.ipamScope ?? defaultIpamScope(conf.ipamType);
}

/** Whether the last holder leaving releases the reservation through the delegate. */
function releasesOnLastLeave(rec: OwnerRecord, conf: NetConf | undefined): boolean {
  const scope = rec.scope ?? (conf ? ipamScopeOf(conf) : defaultIpamScope(rec.ipamType));
  return scope === 'node' || rec.owner !== null;
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
 *
 * A fresh hold is written down (`pending`) before the delegate is asked, so any reservation the
 * delegate may make under the key has a record, and a DEL that finds no record knows that this
 * node reserved nothing (which matters for a cluster-wide IPAM, where releasing by key would free
 * another node's hold).
 */
export async function acquireIpam(ctx: CniContext, conf: NetConf): Promise<{ result: CniResult | undefined; joined: boolean }> {
  const key = ipamKeyOf(conf);
  if (key === undefined) return { result: await delegateIpam(ctx, conf, 'ADD'), joined: true };
  const file = recordPath(conf.stateDir, conf.name, key, ctx.ifname);
  return withRecordLock(file, async () => {
    const rec = await readRecord(file);
    if (rec && rec.holders.length > 0 && !rec.pending) {
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
    // Fresh on this node, or the leftover of an ADD that died while asking the delegate.
    const scope = ipamScopeOf(conf);
    // A migration target's first hold on a node, with one reservation for the cluster: the
    // delegate answers with the source's reservation, which this node must not release.
    const provisional = scope === 'cluster' && isMigrationTarget(ctx, conf);
    // Only a pending leftover's holders and owner carry over; a record with no holders is a
    // finished lifecycle (a release that a crash interrupted) and this ADD starts a new one.
    const leftover = rec?.pending && rec.holders.length > 0 ? rec : undefined;
    const holders = leftover ? [...new Set([...leftover.holders, ctx.containerId])] : [ctx.containerId];
    const owner = leftover && leftover.owner !== undefined ? leftover.owner : provisional ? null : ctx.containerId;
    const intent: OwnerRecord = { network: conf.name, key, ifname: ctx.ifname, ipamType: conf.ipamType ?? '', scope, owner, holders, result: undefined, pending: true, updatedAt: new Date().toISOString() };
    await writeJsonAtomic(file, intent);
    let result: CniResult | undefined;
    try {
      result = await delegateIpam(ctx, conf, 'ADD', { containerId: key });
    } catch (e) {
      // A failed delegate ADD reserved nothing (a plugin cleans up its own failure): forget the intent.
      const left = holders.filter((h) => h !== ctx.containerId);
      if (left.length) await writeJsonAtomic(file, { ...intent, holders: left });
      else await fs.rm(file, { force: true });
      throw e;
    }
    const fresh: OwnerRecord = { ...intent, result, updatedAt: new Date().toISOString() };
    delete fresh.pending;
    try {
      await writeJsonAtomic(file, fresh);
    } catch (e) {
      // The intent record stays: leaving it as DEL does releases what this ADD reserved (if this node owns it).
      await leave(ctx, conf, file, intent).catch(() => undefined);
      throw e;
    }
    if (provisional) ctx.logger.info({ key, network: conf.name, ifname: ctx.ifname }, 'IPAM hold of a migration target: provisional until the agent promotes it');
    return { result, joined: true };
  });
}

/**
 * DEL's IPAM step (also ADD's rollback). With a key: leave the holders; the last one releases the
 * reservation, unless this node does not own it (cluster scope: a provisional migration target,
 * or a source that handed the VM over). The record is written with no holders before the
 * delegate's DEL and removed after it, so a crash or a failed delegate DEL is finished by the
 * next DEL. No record at all: node scope releases by key (idempotent; a reservation of an ADD
 * from before records were written first); cluster scope releases nothing, since every ADD that
 * may have reserved under the key leaves a record first, and releasing by key would free the hold
 * of whichever node has the VM now.
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
    if (!rec) {
      if (ipamScopeOf(conf) === 'cluster') {
        ctx.logger.debug({ key, containerId: ctx.containerId }, 'DEL: no record of the key on this node: nothing to release');
        return;
      }
      await delegateIpam(ctx, conf, 'DEL', { containerId: key });
      return;
    }
    await leave(ctx, conf, file, rec);
  });
}

/** `ctx.containerId` leaves `rec` (under its lock); the last holder releases if this node owns the reservation. */
async function leave(ctx: CniContext, conf: NetConf, file: string, rec: OwnerRecord): Promise<void> {
  const key = rec.key;
  if (!rec.holders.includes(ctx.containerId) && rec.holders.length > 0) {
    ctx.logger.debug({ key, containerId: ctx.containerId, holders: rec.holders }, 'DEL: not a holder of the key (already released)');
    return;
  }
  const next: OwnerRecord = { ...rec, holders: rec.holders.filter((h) => h !== ctx.containerId), updatedAt: new Date().toISOString() };
  await writeJsonAtomic(file, next);
  if (next.holders.length > 0) {
    ctx.logger.info({ key, network: conf.name, ifname: ctx.ifname, holders: next.holders }, 'IPAM reservation kept for the remaining holders');
    return;
  }
  if (releasesOnLastLeave(next, conf)) {
    await delegateIpam(ctx, conf, 'DEL', { containerId: key });
  } else {
    ctx.logger.info(
      { key, network: conf.name, ifname: ctx.ifname, why: next.handedOverAt ? 'handed over to another node' : 'provisional migration target' },
      'IPAM reservation not released: another node owns it',
    );
  }
  await fs.rm(file, { force: true });
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
        const release = releasesOnLastLeave(rec, conf);
        ctx.logger.info({ key: rec.key, network: conf.name, ifname: rec.ifname, holders: rec.holders, release }, 'GC: dropping an IPAM key no valid attachment holds');
        await writeJsonAtomic(file, { ...rec, holders: [], updatedAt: new Date().toISOString() });
        if (release) await delegateIpam({ ...ctx, ifname: rec.ifname, env: { ...ctx.env, CNI_IFNAME: rec.ifname } }, conf, 'DEL', { containerId: rec.key });
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

// ---- hand-over (the node agent, after a migration's outcome) ---------------------------------

/** One attachment's hold of a key on one node: where its record is and which holder it is. */
export interface HoldRef {
  stateDir: string;
  network: string;
  key: string;
  ifname: string;
  containerId: string;
}

/**
 * What a mark did: `marked` changed the record; `unchanged` found it so already (a replay) or
 * owned through another holder on this node (same-node migration); `node-scope` leaves a
 * node-local IPAM alone (each node frees its own store); `no-record` / `not-a-holder`: nothing
 * of that attachment here.
 */
export type HoldChange = 'marked' | 'unchanged' | 'node-scope' | 'no-record' | 'not-a-holder';

async function changeHold(ref: HoldRef, logger: CniLogger | undefined, f: (rec: OwnerRecord) => OwnerRecord | undefined): Promise<HoldChange> {
  const file = recordPath(ref.stateDir, ref.network, ref.key, ref.ifname);
  return withRecordLock(file, async () => {
    const rec = await readRecord(file);
    if (!rec) return 'no-record';
    if ((rec.scope ?? defaultIpamScope(rec.ipamType)) === 'node') return 'node-scope';
    if (!rec.holders.includes(ref.containerId)) return 'not-a-holder';
    const next = f(rec);
    if (!next) return 'unchanged';
    await writeJsonAtomic(file, { ...next, updatedAt: new Date().toISOString() });
    logger?.info({ key: ref.key, network: ref.network, ifname: ref.ifname, containerId: ref.containerId, owner: next.owner }, 'IPAM hold changed');
    return 'marked';
  });
}

/**
 * The VM left attachment `containerId` for another node (a successful migration's source): this
 * node no longer owns the key's cluster-wide reservation, so its last DEL releases nothing. A
 * record owned through another holder (the target on this same node) stays owned.
 */
export function handOverHold(ref: HoldRef, logger?: CniLogger): Promise<HoldChange> {
  return changeHold(ref, logger, (rec) => (rec.owner === ref.containerId || rec.owner === undefined ? { ...rec, owner: null, handedOverAt: new Date().toISOString() } : undefined));
}

/**
 * A migration target whose ADD was not flagged as one: its hold becomes provisional (the node
 * does not own the reservation) until `promoteHold`, so a failed migration's DEL releases nothing.
 */
export function provisionalHold(ref: HoldRef, logger?: CniLogger): Promise<HoldChange> {
  return changeHold(ref, logger, (rec) => {
    if (rec.owner !== ref.containerId) return undefined;
    const next: OwnerRecord = { ...rec, owner: null };
    delete next.handedOverAt;
    return next;
  });
}

/** The VM runs in attachment `containerId` now (a successful migration's target): this node owns the reservation. */
export function promoteHold(ref: HoldRef, logger?: CniLogger): Promise<HoldChange> {
  return changeHold(ref, logger, (rec) => {
    if (rec.owner === ref.containerId) return undefined;
    const next: OwnerRecord = { ...rec, owner: ref.containerId };
    delete next.handedOverAt;
    return next;
  });
}

/** A key's record on a node (the agent's view, tests). */
export function readOwnerRecord(stateDir: string, network: string, key: string, ifname: string): Promise<OwnerRecord | undefined> {
  return readRecord(recordPath(stateDir, network, key, ifname));
}
