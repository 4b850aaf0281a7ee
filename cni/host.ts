/**
 * The thin apply layer: runs planned `ip`/`tc` batches in the host or a pod netns, each batch one
 * child process (never setns in this process: it would move only one thread).
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { exec as defaultExec, ExecError, type Exec } from '../lib/exec.js';
import { CniCode, CniError } from './cni-error.js';
import { missingBridgeAddrs, planBridgeGateway, type BatchOp, type BridgeAddr } from './plan.js';
import { batchHandle, type BatchOutcome, type PendingBatch, type WarmPool } from './warm-pool.js';

export interface HostDeps {
  exec: Exec;
  /** Root of sysfs for host-netns reads. */
  sysRoot: string;
  /** A path naming the host netns (where the bridge lives) from inside another netns. */
  hostNetns: string;
  /** Warm batch processes (the server has one; a one-shot plugin process does not). */
  pool?: WarmPool;
}

export const defaultHostDeps: HostDeps = { exec: defaultExec, sysRoot: '/sys', hostNetns: `/proc/${process.pid}/ns/net` };

const TIMEOUT_MS = 30_000;

/** argv running `tool` in `netns` (null = the current netns). */
export function inNetns(netns: string | null, tool: 'ip' | 'tc', args: string[]): [string, string[]] {
  if (netns === null) return [tool, args];
  const m = /^(?:\/var)?\/run\/netns\/([^/]+)$/.exec(netns);
  // `ip -n NAME` saves an exec but only knows names under /run/netns.
  if (m?.[1]) return [tool, ['-n', m[1], ...args]];
  return ['nsenter', [`--net=${netns}`, '--', tool, ...args]];
}

export type { BatchOutcome, PendingBatch };

/** Runs lines as one `-batch`; the batch stops at the first failing line, whose number ip/tc print. */
export async function runBatch(deps: HostDeps, netns: string | null, tool: 'ip' | 'tc', lines: string[], force = false): Promise<BatchOutcome> {
  if (lines.length === 0) return { done: 0 };
  if (deps.pool && netns !== null) return startBatch(deps, netns, tool, force).feed(lines);
  const [cmd, args] = inNetns(netns, tool, [...(force ? ['-force'] : []), '-batch', '-']);
  const res = await deps.exec(cmd, args, { input: lines.join('\n') + '\n', allowFailure: true, timeoutMs: TIMEOUT_MS });
  if (res.code === 0) return { done: lines.length };
  const m = /Command failed -:(\d+)/.exec(res.stderr);
  const done = m ? Number(m[1]) - 1 : 0;
  return { done, error: new ExecError([cmd, ...args, ...(m ? [`(line ${m[1]}: ${lines[done] ?? ''})`] : [])], res) };
}

/**
 * A batch process started before its lines are known. `ip`/`tc` read batch lines from stdin
 * as they come, so starting one early takes its process start-up (fork, exec, dynamic
 * loading, netns switch) off the critical path: ADD starts the pod's `tc` together with `ip`
 * and feeds it once the devices exist. In the server, a parked process from the warm pool.
 */
export function startBatch(deps: HostDeps, netns: string | null, tool: 'ip' | 'tc', force = false): PendingBatch {
  const cold = (): PendingBatch => {
    const [cmd, args] = inNetns(netns, tool, [...(force ? ['-force'] : []), '-batch', '-']);
    return batchHandle(spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] }), [cmd, ...args]);
  };
  return deps.pool && netns !== null ? deps.pool.take(tool, netns, force, cold) : cold();
}

/** Runs ops; on failure undoes the ones that succeeded (in reverse) and throws the failure. */
export async function applyOps(deps: HostDeps, netns: string | null, ops: BatchOp[]): Promise<string[]> {
  const out = await runBatch(deps, netns, 'ip', ops.map((o) => o.line));
  const undo = undoLines(ops.slice(0, out.done));
  if (out.error) {
    await runBatch(deps, netns, 'ip', undo, true).catch(() => undefined);
    throw out.error;
  }
  return undo;
}

export function undoLines(done: BatchOp[]): string[] {
  return done
    .map((o) => o.undo)
    .filter((u): u is string => u !== undefined)
    .reverse();
}

export async function applyLines(deps: HostDeps, netns: string | null, tool: 'ip' | 'tc', lines: string[]): Promise<void> {
  const out = await runBatch(deps, netns, tool, lines);
  if (out.error) throw out.error;
}

export function linkExists(deps: HostDeps, name: string): boolean {
  return existsSync(`${deps.sysRoot}/class/net/${name}`);
}

export function readLinkAttr(deps: HostDeps, name: string, attr: string): string | undefined {
  try {
    return readFileSync(`${deps.sysRoot}/class/net/${name}/${attr}`, 'utf8').trim();
  } catch {
    return undefined;
  }
}

/**
 * Creates the host bridge when absent. Concurrent ADDs may race to create it, so "File exists"
 * counts as success. The bridge is shared: a failed ADD never removes it, and an existing
 * bridge is used as it is (its state is the operator's).
 */
export async function ensureBridge(deps: HostDeps, name: string, mac: string, mtu: number | undefined): Promise<void> {
  if (!linkExists(deps, name)) {
    const out = await runBatch(deps, null, 'ip', [`link add ${name} address ${mac}${mtu === undefined ? '' : ` mtu ${mtu}`} type bridge`]);
    if (out.error && !/File exists/.test(out.error.result.stderr)) throw out.error;
    if (!out.error) await applyLines(deps, null, 'ip', [`link set dev ${name} up`]);
  }
  if (!existsSync(`${deps.sysRoot}/class/net/${name}/bridge`)) {
    throw new CniError(CniCode.InvalidNetworkConfig, `host link "${name}" exists and is not a bridge`);
  }
}

/** The addresses a host link carries now (`ip -j addr show`). */
export async function readLinkAddrs(deps: HostDeps, name: string): Promise<BridgeAddr[]> {
  const res = await deps.exec('ip', ['-j', 'addr', 'show', 'dev', name], { timeoutMs: TIMEOUT_MS });
  const links = JSON.parse(res.stdout || '[]') as { addr_info?: { local?: string; prefixlen?: number }[] }[];
  return (links[0]?.addr_info ?? []).flatMap((a) => (a.local !== undefined && a.prefixlen !== undefined ? [{ ip: a.local, prefix: a.prefixlen }] : []));
}

/**
 * `isGateway`: makes sure the bridge carries `want`. Concurrent ADDs of one network race to add
 * the same address; the loser's "File exists" is success, which the re-read proves. Nothing ever
 * removes these addresses: every attachment on the bridge uses them.
 */
export async function ensureBridgeGateway(deps: HostDeps, bridge: string, want: BridgeAddr[]): Promise<void> {
  const lines = planBridgeGateway(bridge, want, await readLinkAddrs(deps, bridge));
  if (lines.length === 0) return;
  const out = await runBatch(deps, null, 'ip', lines, true);
  if (!out.error) return;
  const missing = missingBridgeAddrs(want, await readLinkAddrs(deps, bridge));
  if (missing.length) throw new CniError(CniCode.Internal, `cannot give bridge ${bridge} its gateway address`, out.error.message);
}
