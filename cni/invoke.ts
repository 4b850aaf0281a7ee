/**
 * Runs a CNI plugin executable the way a container runtime does (libcni `invoke`), for the node
 * agent's local mode and for tests.
 *
 * API
 *   invokeCni(opts: InvokeOptions): Promise<InvokeOutcome>
 *     Runs `opts.plugin` with CNI_COMMAND/CNI_CONTAINERID/CNI_NETNS/CNI_IFNAME/CNI_ARGS/CNI_PATH
 *     set from opts, the config as stdin, and a minimal environment (PATH only, plus opts.env;
 *     runtimes do not pass their own environment, so e.g. NODE_EXTRA_CA_CERTS is absent).
 *     Never throws for a plugin failure: the outcome carries exit code, raw stdout/stderr, the
 *     parsed `result` (exit 0 with JSON output) or the parsed spec `error`.
 *   invokeCniOrThrow(opts): Promise<Record<string, unknown> | undefined>
 *     Same, but resolves to the parsed result (undefined for verbs without output) and rejects
 *     with a CniError carrying the plugin's code/msg/details (999 when the output is not JSON).
 *
 *   InvokeOptions {
 *     plugin: string                      path of the executable
 *     command: 'ADD'|'DEL'|'CHECK'|'VERSION'|'STATUS'|'GC'
 *     config: object | string | Buffer    stdin (objects are JSON-encoded)
 *     containerId?, netns?, ifname?: string
 *     args?: string | Record<string, string>   CNI_ARGS ("K=V;K2=V2" or a map)
 *     path?: string | string[]            CNI_PATH (list joined with ':')
 *     env?: Record<string, string | undefined>  extra variables (e.g. PODVIRT_CNI_SOCKET)
 *     timeoutMs?: number                  kill after this long (default 120 s)
 *   }
 *   InvokeOutcome { exitCode: number | null; stdout; stderr; ms; result?: Record<string, unknown>;
 *                   error?: { code: number; msg: string; details?: string } }
 */
import { exec } from '../lib/exec.js';
import { CniCode, CniError } from './cni-error.js';

export type CniCommand = 'ADD' | 'DEL' | 'CHECK' | 'VERSION' | 'STATUS' | 'GC';

export interface InvokeOptions {
  plugin: string;
  command: CniCommand;
  config: object | string | Buffer;
  containerId?: string;
  netns?: string;
  ifname?: string;
  args?: string | Record<string, string>;
  path?: string | string[];
  env?: Record<string, string | undefined>;
  timeoutMs?: number;
}

export interface CniErrorJson {
  code: number;
  msg: string;
  details?: string;
}

export interface InvokeOutcome {
  exitCode: number | null;
  stdout: string;
  stderr: string;
  /** Wall-clock time of the plugin process, milliseconds. */
  ms: number;
  result?: Record<string, unknown>;
  error?: CniErrorJson;
}

const MINIMAL_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export function invokeEnv(opts: InvokeOptions): Record<string, string> {
  const env: Record<string, string> = { PATH: MINIMAL_PATH, CNI_COMMAND: opts.command };
  if (opts.containerId !== undefined) env.CNI_CONTAINERID = opts.containerId;
  if (opts.netns !== undefined) env.CNI_NETNS = opts.netns;
  if (opts.ifname !== undefined) env.CNI_IFNAME = opts.ifname;
  if (opts.args !== undefined) {
    env.CNI_ARGS = typeof opts.args === 'string' ? opts.args : Object.entries(opts.args).map(([k, v]) => `${k}=${v}`).join(';');
  }
  if (opts.path !== undefined) env.CNI_PATH = Array.isArray(opts.path) ? opts.path.join(':') : opts.path;
  for (const [k, v] of Object.entries(opts.env ?? {})) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  return env;
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function asError(v: unknown): CniErrorJson | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  const o = v as Record<string, unknown>;
  if (typeof o.code !== 'number' || typeof o.msg !== 'string') return undefined;
  return { code: o.code, msg: o.msg, ...(typeof o.details === 'string' ? { details: o.details } : {}) };
}

export async function invokeCni(opts: InvokeOptions): Promise<InvokeOutcome> {
  const input = Buffer.isBuffer(opts.config) ? opts.config : typeof opts.config === 'string' ? opts.config : JSON.stringify(opts.config);
  const started = process.hrtime.bigint();
  const r = await exec(opts.plugin, [], { env: invokeEnv(opts), input, allowFailure: true, timeoutMs: opts.timeoutMs ?? 120_000 });
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  const out: InvokeOutcome = { exitCode: r.code, stdout: r.stdout, stderr: r.stderr, ms };
  const parsed = r.stdout.trim() ? parseJson(r.stdout) : undefined;
  if (r.code === 0) {
    if (typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed)) out.result = parsed as Record<string, unknown>;
  } else {
    const err = asError(parsed) ?? asError(parseJson(r.stderr));
    if (err) out.error = err;
  }
  return out;
}

export async function invokeCniOrThrow(opts: InvokeOptions): Promise<Record<string, unknown> | undefined> {
  const o = await invokeCni(opts);
  if (o.exitCode === 0) return o.result;
  if (o.error) throw new CniError(o.error.code, o.error.msg, o.error.details ?? '');
  throw new CniError(CniCode.Internal, `${opts.plugin} ${opts.command} failed (exit ${o.exitCode})`, (o.stderr || o.stdout).trim());
}
