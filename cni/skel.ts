/**
 * The protocol layer (libcni `skel` semantics): validates the environment and stdin, dispatches
 * the verb and turns the outcome into stdout + exit code. Pure with respect to its inputs: the
 * standalone executable and the server both call `handleCniRequest` with an explicit env.
 */
import { cmdAdd } from './add.js';
import { cmdCheck } from './check.js';
import { parseCniArgs } from './cni-args.js';
import { CniCode, CniError, toCniError } from './cni-error.js';
import type { CniContext, CniDeps } from './context.js';
import { cmdDel } from './del.js';
import type { CniLogger } from './logger.js';
import { configVersion, decodeConfig, ifnameProblem, parseNetConf, type NetConf } from './netconf.js';
import { formatResult } from './result.js';
import { cmdGc, cmdStatus } from './status-gc.js';
import { compareVersions, CURRENT_VERSION, SUPPORTED_VERSIONS } from './versions.js';

export interface CniRequest {
  env: Record<string, string | undefined>;
  stdin: Buffer;
}

export interface CniResponse {
  exitCode: number;
  stdout: string;
  stderr: string;
}

const VERBS = ['ADD', 'DEL', 'CHECK', 'STATUS', 'GC'] as const;
type Verb = (typeof VERBS)[number];

const REQUIRED: Record<Verb, string[]> = {
  ADD: ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME', 'CNI_PATH'],
  CHECK: ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME', 'CNI_PATH'],
  DEL: ['CNI_CONTAINERID', 'CNI_IFNAME', 'CNI_PATH'],
  STATUS: ['CNI_PATH'],
  GC: ['CNI_PATH'],
};

const CONTAINER_ID_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;
// Paths go into ip/tc batch lines, which split on whitespace and treat quotes specially.
const NETNS_RE = /^\/[^\s"'\\#]+$/;

export const ABOUT = `podvirt-cni: VM networking (tap / migration) for podvirt\nCNI protocol versions supported: ${SUPPORTED_VERSIONS.join(', ')}\n`;

const envError = (msg: string): CniError => new CniError(CniCode.InvalidEnvironment, msg);

function ok(stdout = ''): CniResponse {
  return { exitCode: 0, stdout, stderr: '' };
}

function validateEnv(verb: Verb, env: CniRequest['env']): void {
  const missing = REQUIRED[verb].filter((k) => !env[k]);
  if (missing.length) throw envError(`required env variables [${missing.join(',')}] missing`);
  const cid = env.CNI_CONTAINERID;
  if (cid !== undefined && cid !== '' && !CONTAINER_ID_RE.test(cid)) throw envError('invalid characters in containerID');
  const ifname = env.CNI_IFNAME;
  if (REQUIRED[verb].includes('CNI_IFNAME') && ifname !== undefined) {
    const p = ifnameProblem(ifname);
    if (p) throw envError(`invalid CNI_IFNAME: interface name ${p}`);
  }
  const netns = env.CNI_NETNS;
  if (netns && (verb === 'ADD' || verb === 'CHECK' || verb === 'DEL') && !NETNS_RE.test(netns)) {
    throw envError('CNI_NETNS must be an absolute path without whitespace or quotes');
  }
}

export interface HandlerOptions {
  logger: CniLogger;
  deps: CniDeps;
  /** Environment that delegates inherit besides the request's CNI_* (PATH etc.). */
  baseEnv?: Record<string, string | undefined>;
}

export async function handleCniRequest(req: CniRequest, opts: HandlerOptions): Promise<CniResponse> {
  const env = req.env;
  const command = env.CNI_COMMAND;
  let version = CURRENT_VERSION;
  try {
    if (!command) return { exitCode: 0, stdout: '', stderr: ABOUT };
    if (command === 'VERSION') {
      // The input version is decoded only to reject garbage; the answer names the plugin's own.
      if (req.stdin.length) configVersion(decodeConfig(req.stdin));
      return ok(JSON.stringify({ cniVersion: CURRENT_VERSION, supportedVersions: SUPPORTED_VERSIONS }));
    }
    if (!(VERBS as readonly string[]).includes(command)) throw envError(`unknown CNI_COMMAND: ${command}`);
    const verb = command as Verb;
    validateEnv(verb, env);
    const raw = decodeConfig(req.stdin);
    try {
      version = configVersion(raw);
    } catch {
      /* reported by parseNetConf */
    }
    const conf = parseNetConf(raw);
    version = conf.cniVersion;
    if (verb === 'CHECK' && compareVersions(version, '0.4.0') < 0) {
      throw new CniError(CniCode.IncompatibleVersion, 'config version does not allow CHECK');
    }
    if ((verb === 'STATUS' || verb === 'GC') && compareVersions(version, '1.1.0') < 0) {
      throw new CniError(CniCode.IncompatibleVersion, `config version does not allow ${verb}`);
    }
    const ctx: CniContext = {
      command: verb,
      containerId: env.CNI_CONTAINERID ?? '',
      netns: env.CNI_NETNS ?? '',
      ifname: env.CNI_IFNAME ?? '',
      cniArgs: parseCniArgs(env.CNI_ARGS),
      cniPath: (env.CNI_PATH ?? '').split(':').filter(Boolean),
      env: { ...opts.baseEnv, ...env },
      stdin: req.stdin,
      logger: opts.logger,
      deps: opts.deps,
    };
    return await dispatch(verb, ctx, conf);
  } catch (e) {
    const err = toCniError(e);
    if (err.code === CniCode.Internal) opts.logger.error({ command, details: err.details }, err.message);
    else opts.logger.debug({ command, code: err.code, details: err.details }, err.message);
    return { exitCode: 1, stdout: JSON.stringify(err.toJSON(version)), stderr: '' };
  }
}

async function dispatch(verb: Verb, ctx: CniContext, conf: NetConf): Promise<CniResponse> {
  switch (verb) {
    case 'ADD':
      return ok(JSON.stringify(formatResult(await cmdAdd(ctx, conf), conf.cniVersion)));
    case 'DEL':
      await cmdDel(ctx, conf);
      return ok();
    case 'CHECK':
      await cmdCheck(ctx, conf);
      return ok();
    case 'STATUS':
      await cmdStatus(ctx, conf);
      return ok();
    case 'GC':
      await cmdGc(ctx, conf);
      return ok();
  }
}
