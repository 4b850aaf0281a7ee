/**
 * IPAM delegation (SPEC.md §4-5): the plugin named by `ipam.type` is looked up in CNI_PATH and run
 * with the same environment and the complete config on stdin. Its version is negotiated: the
 * config's own version first; on "incompatible CNI versions" the delegate is asked (VERSION)
 * and the request is retried at the highest version both sides speak.
 */
import { accessSync, constants } from 'node:fs';
import * as path from 'node:path';
import { stripPodvirtArgs } from './cni-args.js';
import { CniCode, CniError } from './cni-error.js';
import type { CniContext } from './context.js';
import type { NetConf } from './netconf.js';
import { parseResult, type CniResult } from './result.js';
import { compareVersions, highestCommon, SUPPORTED_VERSIONS } from './versions.js';

const TIMEOUT_MS = 60_000;

export function findInPath(type: string, dirs: string[]): string {
  for (const dir of dirs) {
    if (!dir) continue;
    const p = path.join(dir, type);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  throw new CniError(CniCode.InvalidNetworkConfig, `failed to find plugin "${type}" in path [${dirs.join(' ')}]`);
}

interface Raw {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * How one delegation differs from the request: `containerId` replaces CNI_CONTAINERID (an IPAM
 * owner key, cni/ipam-owner.ts), `raw` replaces the config (GC's translated attachment list).
 */
export interface DelegateOptions {
  containerId?: string;
  raw?: Record<string, unknown>;
}

async function run(ctx: CniContext, bin: string, command: string, stdin: string, o: DelegateOptions = {}): Promise<Raw> {
  const env: Record<string, string | undefined> = { ...ctx.env, CNI_COMMAND: command };
  if (o.containerId !== undefined) env.CNI_CONTAINERID = o.containerId;
  env.CNI_ARGS = stripPodvirtArgs(env.CNI_ARGS);
  if (env.CNI_ARGS === undefined) delete env.CNI_ARGS;
  return ctx.deps.pool?.exec(bin, env, stdin) ?? ctx.deps.exec(bin, [], { env, input: stdin, allowFailure: true, timeoutMs: TIMEOUT_MS });
}

/** A delegate's error: its JSON from stdout, else its stderr text (libcni raw_exec does the same). */
export function delegateError(bin: string, r: Raw): CniError {
  for (const text of [r.stdout, r.stderr]) {
    try {
      const e = JSON.parse(text) as { code?: unknown; msg?: unknown; details?: unknown };
      if (typeof e.code === 'number' && typeof e.msg === 'string') {
        return new CniError(e.code, e.msg, typeof e.details === 'string' ? e.details : '');
      }
    } catch {
      /* not JSON */
    }
  }
  const text = (r.stderr || r.stdout).trim();
  return new CniError(CniCode.Internal, `${path.basename(bin)} failed (exit ${r.code})`, text);
}

async function delegateVersions(ctx: CniContext, bin: string): Promise<string[]> {
  const cached = ctx.deps.delegateVersions.get(bin);
  if (cached) return cached;
  const r = await run(ctx, bin, 'VERSION', JSON.stringify({ cniVersion: '0.4.0' }));
  let versions: string[] = [];
  try {
    const v = JSON.parse(r.stdout) as { supportedVersions?: unknown };
    if (Array.isArray(v.supportedVersions)) versions = v.supportedVersions.filter((x): x is string => typeof x === 'string');
  } catch {
    /* treated as none */
  }
  ctx.deps.delegateVersions.set(bin, versions);
  return versions;
}

/** The request's own stdin, or the config re-serialised with another `cniVersion`. */
function withVersion(ctx: CniContext, conf: NetConf, version: string, override?: Record<string, unknown>): string {
  if (version === conf.cniVersion && !override) return ctx.stdin.toString('utf8');
  const raw: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(override ?? conf.raw)) raw[k.toLowerCase() === 'cniversion' ? 'cniVersion' : k] = v;
  raw.cniVersion = version;
  return JSON.stringify(raw);
}

/** Does the delegate speak at least `min` (e.g. 1.1.0 for STATUS/GC)? */
export async function delegateSupports(ctx: CniContext, conf: NetConf, min: string): Promise<boolean> {
  if (!conf.ipamType) return false;
  const bin = findInPath(conf.ipamType, ctx.cniPath);
  return (await delegateVersions(ctx, bin)).some((v) => compareVersions(v, min) >= 0);
}

/**
 * Runs the IPAM plugin for `command`. ADD returns its (normalised) result; other verbs return
 * undefined. Errors are the delegate's own code and message.
 */
export async function delegateIpam(
  ctx: CniContext,
  conf: NetConf,
  command: 'ADD' | 'DEL' | 'CHECK' | 'STATUS' | 'GC',
  o: DelegateOptions = {},
): Promise<CniResult | undefined> {
  if (!conf.ipamType) return undefined;
  const bin = findInPath(conf.ipamType, ctx.cniPath);
  let version = conf.cniVersion;
  const known = ctx.deps.delegateVersions.get(bin);
  if (known && !known.includes(version)) version = pickVersion(known, conf.cniVersion);
  let r = await run(ctx, bin, command, withVersion(ctx, conf, version, o.raw), o);
  if (r.code !== 0) {
    const err = delegateError(bin, r);
    if (err.code !== CniCode.IncompatibleVersion || known) throw err;
    const theirs = await delegateVersions(ctx, bin);
    const v2 = pickVersion(theirs, conf.cniVersion);
    if (v2 === version) throw err;
    ctx.logger.debug({ ipam: conf.ipamType, version: v2 }, 'IPAM plugin speaks an older CNI version');
    r = await run(ctx, bin, command, withVersion(ctx, conf, v2, o.raw), o);
    if (r.code !== 0) throw delegateError(bin, r);
  }
  if (command !== 'ADD') return undefined;
  try {
    return parseResult(JSON.parse(r.stdout));
  } catch (e) {
    if (e instanceof CniError) throw e;
    throw new CniError(CniCode.DecodingFailure, `failed to decode the result of ${conf.ipamType}`, (e as Error).message);
  }
}

/** Highest version both speak, not above the config's own. */
function pickVersion(theirs: string[], configVersion: string): string {
  const ours = SUPPORTED_VERSIONS.filter((v) => compareVersions(v, configVersion) <= 0);
  const v = highestCommon(ours, theirs);
  if (!v) {
    throw new CniError(CniCode.IncompatibleVersion, 'incompatible CNI versions', `IPAM plugin supports ${JSON.stringify(theirs)}, config is "${configVersion}"`);
  }
  return v;
}
