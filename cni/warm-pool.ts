/**
 * Warm processes for the long-running CNI server.
 *
 * A request's work is a few `ip`/`tc` batch lines and one IPAM plugin run, but each process
 * costs a fork of the (large) server process, an exec and library loading before it does
 * anything; on a busy node that dominates ADD. The pool starts processes ahead of time:
 * - `ip -batch -` / `tc -batch -` with podvirt-netns-park.so preloaded park in the library's
 *   constructor until told which netns to enter, then run main() and read their batch from
 *   stdin (cni/shim/netns-park.c);
 * - podvirt-exec-park waits for a path and an environment and execs the IPAM plugin with them
 *   (cni/shim/exec-park.c).
 * A process joins the pool only after saying "parked" (so a preload that did not load can never
 * run pod commands in the host netns). Taken processes are replaced when the server has been
 * idle for a moment, so replacing them never competes with a request. An empty pool, or no
 * helper binaries, means cold processes, with the same results.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import type { Duplex } from 'node:stream';
import { ExecError, type ExecResult } from '../lib/exec.js';

export type BatchTool = 'ip' | 'tc';

export interface BatchOutcome {
  /** Number of leading lines that succeeded. */
  done: number;
  error?: ExecError;
}

export interface PendingBatch {
  /** Writes the lines, closes stdin, resolves when the process has exited. */
  feed(lines: string[]): Promise<BatchOutcome>;
}

const TIMEOUT_MS = 60_000;
const PARK_TIMEOUT_MS = 10_000;

/** Collects a started process's output; `finish(input)` writes stdin, closes it and awaits the exit. */
export function collect(child: ChildProcess, timeoutMs = TIMEOUT_MS): { finish(input: string): Promise<ExecResult> } {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout?.on('data', (b: Buffer) => out.push(b));
  child.stderr?.on('data', (b: Buffer) => err.push(b));
  child.stdin?.on('error', () => undefined);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; spawnError?: string }>((resolve) => {
    child.on('error', (e) => resolve({ code: null, signal: null, spawnError: String(e) }));
    child.on('close', (code, signal) => resolve({ code, signal }));
  });
  return {
    async finish(input: string): Promise<ExecResult> {
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      child.stdin?.end(input);
      const r = await exited;
      clearTimeout(timer);
      return { code: r.code, signal: r.signal, stdout: Buffer.concat(out).toString(), stderr: r.spawnError ?? Buffer.concat(err).toString() };
    },
  };
}

/** Wraps a started batch process: its exit becomes a BatchOutcome naming the failed line. */
export function batchHandle(child: ChildProcess, argv: string[]): PendingBatch {
  return batchFrom(collect(child), argv);
}

function batchFrom(c: ReturnType<typeof collect>, argv: string[]): PendingBatch {
  return {
    async feed(lines: string[]): Promise<BatchOutcome> {
      const result = await c.finish(lines.length ? lines.join('\n') + '\n' : '');
      if (result.code === 0) return { done: lines.length };
      const m = /Command failed -:(\d+)/.exec(result.stderr);
      const done = m ? Number(m[1]) - 1 : 0;
      return { done, error: new ExecError([...argv, ...(m ? [`(line ${m[1]}: ${lines[done] ?? ''})`] : [])], result) };
    },
  };
}

interface Parked {
  child: ChildProcess;
  control: Duplex;
  /** Output collection starts at spawn so nothing the process prints is lost. */
  collected: ReturnType<typeof collect>;
}

type Kind = 'ip' | 'ip-force' | 'tc' | 'exec';

export interface WarmPoolOptions {
  /** podvirt-netns-park.so; without it no ip/tc processes are kept. */
  parkLib?: string;
  /** podvirt-exec-park; without it IPAM plugins are started cold. */
  execPark?: string;
  /** Processes kept per kind. */
  size?: number;
}

export class WarmPool {
  private readonly idle = new Map<Kind, Parked[]>();
  private readonly starting = new Map<Kind, number>();
  private readonly unparked = new Set<ChildProcess>();
  private readonly kinds: Kind[];
  private stopped = false;
  private refillTimer: NodeJS.Timeout | undefined;

  constructor(private readonly opts: WarmPoolOptions) {
    const has = (p: string | undefined) => p !== undefined && existsSync(p);
    this.kinds = [...(has(opts.parkLib) ? (['ip', 'ip-force', 'tc'] as Kind[]) : []), ...(has(opts.execPark) ? (['exec'] as Kind[]) : [])];
  }

  get enabled(): boolean {
    return this.kinds.length > 0;
  }

  start(): void {
    this.refill();
  }

  /** Processes parked and ready to take, all kinds together. */
  get parked(): number {
    let n = 0;
    for (const list of this.idle.values()) n += list.length;
    return n;
  }

  private spawnKind(kind: Kind): ChildProcess {
    const stdio: 'pipe'[] = ['pipe', 'pipe', 'pipe', 'pipe'];
    if (kind === 'exec') return spawn(this.opts.execPark as string, [], { stdio, env: {} });
    const tool = kind === 'tc' ? 'tc' : 'ip';
    const args = [...(kind === 'ip-force' ? ['-force'] : []), '-batch', '-'];
    return spawn(tool, args, { stdio, env: { ...process.env, LD_PRELOAD: this.opts.parkLib, PODVIRT_PARK_FD: '3' } });
  }

  /** Starts a process; it joins the idle list once it has said "parked". */
  private park(kind: Kind): void {
    const child = this.spawnKind(kind);
    const control = child.stdio[3] as Duplex;
    control.on('error', () => undefined);
    child.on('error', () => undefined);
    const p: Parked = { child, control, collected: collect(child) };
    this.starting.set(kind, (this.starting.get(kind) ?? 0) + 1);
    let said = '';
    let counted = true;
    const settle = () => {
      if (counted) this.starting.set(kind, (this.starting.get(kind) ?? 1) - 1);
      counted = false;
    };
    this.unparked.add(child);
    // A process that does not park (its preload did not load) would sit on stdin forever.
    const giveUp = setTimeout(() => child.kill('SIGKILL'), PARK_TIMEOUT_MS);
    giveUp.unref();
    const onData = (b: Buffer): void => {
      said += b.toString();
      if (!said.includes('parked\n')) return;
      control.off('data', onData);
      clearTimeout(giveUp);
      this.unparked.delete(child);
      settle();
      if (this.stopped) control.end();
      else this.idle.get(kind)?.push(p);
    };
    control.on('data', onData);
    child.once('exit', () => {
      clearTimeout(giveUp);
      this.unparked.delete(child);
      settle();
      const list = this.idle.get(kind);
      const i = list?.indexOf(p) ?? -1;
      if (list && i >= 0) list.splice(i, 1);
    });
  }

  private refill(): void {
    if (this.stopped) return;
    for (const kind of this.kinds) {
      const list = this.idle.get(kind) ?? [];
      this.idle.set(kind, list);
      for (let n = list.length + (this.starting.get(kind) ?? 0); n < (this.opts.size ?? 2); n++) this.park(kind);
    }
  }

  private takeKind(kind: Kind): Parked | undefined {
    const list = this.idle.get(kind);
    while (list?.length) {
      const p = list.shift() as Parked;
      if (p.child.exitCode === null && p.child.signalCode === null) return p;
    }
    return undefined;
  }

  /** A batch process in `netns`: a parked one if any is idle, else `cold()`. */
  take(tool: BatchTool, netns: string, force: boolean, cold: () => PendingBatch): PendingBatch {
    const p = this.takeKind(tool === 'tc' ? 'tc' : force ? 'ip-force' : 'ip');
    if (!p) return cold();
    p.control.end(`${netns}\n`);
    return batchFrom(p.collected, [tool, `(netns ${netns})`]);
  }

  /** Runs `path` with `env` and `input` in a parked exec process, or returns undefined when none is idle. */
  exec(path: string, env: Record<string, string | undefined>, input: string): Promise<ExecResult> | undefined {
    const p = this.takeKind('exec');
    if (!p) return undefined;
    const entries = Object.entries(env).filter((e): e is [string, string] => e[1] !== undefined && !e[0].includes('=') && !e[0].includes('\0') && !e[1].includes('\0'));
    p.control.end(Buffer.from(`${path}\0${entries.map(([k, v]) => `${k}=${v}\0`).join('')}\0`));
    return p.collected.finish(input);
  }

  /** A request started: replacing taken processes waits. */
  busy(): void {
    if (this.refillTimer) clearTimeout(this.refillTimer);
    this.refillTimer = undefined;
  }

  /** No request in flight: replace taken processes after `ms` more of quiet. */
  idleSoon(ms = 100): void {
    this.busy();
    if (this.stopped) return;
    this.refillTimer = setTimeout(() => {
      this.refillTimer = undefined;
      this.refill();
    }, ms);
    this.refillTimer.unref();
  }

  /** Parked processes exit when their control socket closes. */
  stop(): void {
    this.stopped = true;
    this.busy();
    for (const list of this.idle.values()) for (const p of list.splice(0)) p.control.end();
    for (const child of this.unparked) child.kill('SIGKILL');
  }
}
