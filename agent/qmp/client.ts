import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import { DeadlineExceeded, PodvirtError, Unavailable, errorMessage, sysErrorCode } from '../../lib/errors.js';
import { sleep } from '../../lib/backoff.js';

/** An asynchronous QMP event (`{"event", "data", "timestamp"}`). */
export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
}

/** The greeting QEMU sends on connect. */
export interface QmpGreeting {
  version: { qemu: { major: number; minor: number; micro: number }; package: string };
  capabilities: string[];
}

/**
 * A command QEMU answered with `{"error": {class, desc}}`. The kind follows the QMP
 * error class so callers can branch without parsing `desc` (which QMP says is not stable).
 */
export class QmpError extends PodvirtError {
  constructor(
    readonly command: string,
    readonly qmpClass: string,
    readonly desc: string,
  ) {
    super(qmpKind(qmpClass), `QMP ${command}: ${qmpClass}: ${desc}`, { details: { command, class: qmpClass } });
    this.name = 'QmpError';
  }
}

function qmpKind(cls: string): PodvirtError['kind'] {
  if (cls === 'DeviceNotFound') return 'NotFound';
  if (cls === 'CommandNotFound') return 'Unimplemented';
  return 'FailedPrecondition';
}

export interface QmpConnectOptions {
  /** How long to keep dialing while the socket is absent or refuses (a QEMU still starting). Default 10 s. */
  connectTimeoutMs?: number;
  /** Default timeout for each command. Default 30 s. */
  commandTimeoutMs?: number;
  /** Ask for the `oob` capability when QEMU offers it (needed for `exec-oob`, e.g. migrate-pause). */
  oob?: boolean;
  /** Stops dialing (e.g. the QEMU being waited for exited): an abandoned dial must not grab the next QEMU's monitor. */
  signal?: AbortSignal;
}

export interface ExecuteOptions {
  timeoutMs?: number;
  /** Send as `exec-oob` (jumps the in-band queue; only for commands that allow it). */
  oob?: boolean;
}

interface Pending {
  command: string;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

/**
 * Events emitted by {@link QmpClient}:
 * - `'event'` (QmpEvent): every QMP event;
 * - `'<EVENT NAME>'` (QmpEvent): the same event under its own name, e.g. `'SHUTDOWN'`;
 * - `'close'` (Error | undefined): the connection ended (QEMU exited, or {@link QmpClient.close}).
 */
export interface QmpClientEvents {
  event: [QmpEvent];
  close: [Error | undefined];
}

/**
 * A QMP client over a unix socket: negotiates capabilities, matches responses to
 * commands by `id`, turns `error` answers into {@link QmpError}, times commands out,
 * and publishes events. One client per socket: QEMU's QMP socket serves one connection
 * at a time, and accepts the next one when the previous closes (which is how an agent
 * that restarted adopts a running QEMU: it simply connects again).
 */
export class QmpClient extends EventEmitter {
  private sock: net.Socket | undefined;
  private buf = '';
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private closedWith: Error | undefined;
  private closed = true;
  greeting: QmpGreeting | undefined;

  private constructor(
    readonly socketPath: string,
    private readonly opts: Required<Omit<QmpConnectOptions, 'signal'>> & { signal?: AbortSignal },
  ) {
    super();
    // Many waiters (device_del, migration) subscribe at once; the default cap of 10 would only warn.
    this.setMaxListeners(100);
  }

  /** Dials `socketPath` (retrying until it appears and accepts) and negotiates capabilities. */
  static async connect(socketPath: string, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    const c = new QmpClient(socketPath, {
      connectTimeoutMs: opts.connectTimeoutMs ?? 10_000,
      commandTimeoutMs: opts.commandTimeoutMs ?? 30_000,
      oob: opts.oob ?? false,
      signal: opts.signal,
    });
    await c.open();
    return c;
  }

  get isOpen(): boolean {
    return !this.closed;
  }

  /** Drops the current connection (if any) and connects again: used after QEMU was adopted or the link broke. */
  async reconnect(): Promise<void> {
    if (!this.closed) this.teardown(new Unavailable(`QMP ${this.socketPath}: reconnecting`));
    await this.open();
  }

  private async open(): Promise<void> {
    const deadline = Date.now() + this.opts.connectTimeoutMs;
    let delay = 10;
    for (;;) {
      if (this.opts.signal?.aborted) throw new Unavailable(`QMP ${this.socketPath}: connect aborted`);
      try {
        await this.dial(Math.max(1000, deadline - Date.now()));
        break;
      } catch (e) {
        const code = sysErrorCode(e);
        // ECONNRESET: a QEMU that is still starting (or dying) closed the listening socket under us.
        const retriable = code === 'ENOENT' || code === 'ECONNREFUSED' || code === 'EAGAIN' || code === 'ECONNRESET' || e instanceof RetryGreeting;
        if (this.opts.signal?.aborted) throw new Unavailable(`QMP ${this.socketPath}: connect aborted`);
        if (!retriable || Date.now() + delay > deadline) {
          throw new Unavailable(`QMP ${this.socketPath}: cannot connect: ${errorMessage(e)}`, { cause: e });
        }
        await sleep(delay);
        delay = Math.min(delay * 2, 200);
      }
    }
    const caps = this.opts.oob && this.greeting?.capabilities.includes('oob') ? { enable: ['oob'] } : undefined;
    await this.execute('qmp_capabilities', caps);
  }

  /** Connects and waits for the greeting; the socket is then owned by this client. */
  private dial(greetingTimeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const sock = net.createConnection(this.socketPath);
      let greeted = false;
      let buf = '';
      // QEMU listens before its main loop runs: a slow start greets late, so wait rather than redial.
      const timer = setTimeout(() => {
        sock.destroy();
        reject(new RetryGreeting(`no greeting within ${greetingTimeoutMs} ms`));
      }, greetingTimeoutMs);
      const onAbort = () => fail(new Unavailable(`QMP ${this.socketPath}: connect aborted`));
      const fail = (e: Error) => {
        clearTimeout(timer);
        this.opts.signal?.removeEventListener('abort', onAbort);
        sock.destroy();
        reject(e);
      };
      this.opts.signal?.addEventListener('abort', onAbort, { once: true });
      sock.once('error', fail);
      // A second client is accepted by the kernel but QEMU only greets it once the first leaves.
      sock.once('close', () => {
        if (!greeted) fail(new RetryGreeting('closed before greeting'));
      });
      const onData = (chunk: Buffer) => {
        buf += chunk.toString('utf8');
        const nl = buf.indexOf('\n');
        if (nl < 0) return;
        const line = buf.slice(0, nl);
        let msg: unknown;
        try {
          msg = JSON.parse(line);
        } catch {
          return fail(new Unavailable(`QMP ${this.socketPath}: bad greeting: ${line.slice(0, 200)}`));
        }
        if (!isObject(msg) || !isObject(msg.QMP)) return fail(new Unavailable(`QMP ${this.socketPath}: not a QMP greeting: ${line.slice(0, 200)}`));
        greeted = true;
        clearTimeout(timer);
        this.opts.signal?.removeEventListener('abort', onAbort);
        sock.off('data', onData);
        sock.off('error', fail);
        this.greeting = msg.QMP as unknown as QmpGreeting;
        this.attach(sock, buf.slice(nl + 1));
        resolve();
      };
      sock.on('data', onData);
    });
  }

  private attach(sock: net.Socket, rest: string): void {
    this.sock = sock;
    this.buf = '';
    this.closed = false;
    this.closedWith = undefined;
    sock.setNoDelay(true);
    sock.on('data', (chunk: Buffer) => this.onData(chunk.toString('utf8')));
    sock.on('error', (e) => this.teardown(new Unavailable(`QMP ${this.socketPath}: ${e.message}`, { cause: e })));
    sock.on('close', () => this.teardown(new Unavailable(`QMP ${this.socketPath}: connection closed`)));
    if (rest) this.onData(rest);
  }

  private onData(text: string): void {
    this.buf += text;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (line) this.onMessage(line);
    }
  }

  private onMessage(line: string): void {
    let msg: unknown;
    try {
      msg = JSON.parse(line);
    } catch {
      return; // QEMU only sends JSON; a torn line here would mean a protocol bug we cannot recover from per message
    }
    if (!isObject(msg)) return;
    if (typeof msg.event === 'string') {
      const ev: QmpEvent = {
        event: msg.event,
        data: isObject(msg.data) ? msg.data : {},
        timestamp: isObject(msg.timestamp) ? (msg.timestamp as unknown as QmpEvent['timestamp']) : { seconds: 0, microseconds: 0 },
      };
      this.emit('event', ev);
      this.emit(ev.event, ev);
      return;
    }
    const id = msg.id === undefined ? undefined : String(msg.id);
    if (id === undefined) return; // we always send ids; an id-less answer is not ours
    const p = this.pending.get(id);
    if (!p) return; // timed out earlier
    this.pending.delete(id);
    clearTimeout(p.timer);
    if ('return' in msg) p.resolve(msg.return);
    else if (isObject(msg.error)) p.reject(new QmpError(p.command, String(msg.error.class), String(msg.error.desc)));
    else p.reject(new Unavailable(`QMP ${p.command}: unexpected answer ${line.slice(0, 200)}`));
  }

  private teardown(err: Error | undefined): void {
    if (this.closed) return;
    this.closed = true;
    this.closedWith = err;
    const sock = this.sock;
    this.sock = undefined;
    sock?.removeAllListeners('data');
    sock?.destroy();
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(err ?? new Unavailable(`QMP ${p.command}: connection closed`));
      this.pending.delete(id);
    }
    this.emit('close', err);
  }

  /**
   * Runs one QMP command and resolves with its `return` value, typed by the caller
   * (`execute<StatusInfo>('query-status')`). Rejects with {@link QmpError} on an error
   * answer, DeadlineExceeded on timeout, Unavailable when the connection is gone.
   */
  execute<R = unknown>(command: string, args?: object, opts: ExecuteOptions = {}): Promise<R> {
    const sock = this.sock;
    if (this.closed || !sock) {
      return Promise.reject(this.closedWith ?? new Unavailable(`QMP ${command}: not connected to ${this.socketPath}`));
    }
    const id = `pv${this.nextId++}`;
    const timeoutMs = opts.timeoutMs ?? this.opts.commandTimeoutMs;
    return new Promise<R>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new DeadlineExceeded(`QMP ${command}: no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      const msg: Record<string, unknown> = { [opts.oob ? 'exec-oob' : 'execute']: command, id };
      if (args !== undefined) msg.arguments = args;
      sock.write(JSON.stringify(msg) + '\n');
    });
  }

  /**
   * Resolves with the next event named `name` that satisfies `match`, or rejects with
   * DeadlineExceeded after `timeoutMs`, or Unavailable when the connection closes.
   * It listens from the moment it is called: create it BEFORE sending the command whose
   * event you expect, then await it. `cancel()` stops listening (the promise then never settles).
   */
  waitEvent(name: string, opts: { timeoutMs: number; match?: (ev: QmpEvent) => boolean }): EventWaiter {
    let cancel = () => {};
    const promise = new Promise<QmpEvent>((resolve, reject) => {
      const onEvent = (ev: QmpEvent) => {
        if (opts.match && !opts.match(ev)) return;
        done();
        resolve(ev);
      };
      const onClose = (err: Error | undefined) => {
        done();
        reject(err ?? new Unavailable(`QMP: connection closed while waiting for ${name}`));
      };
      const timer = setTimeout(() => {
        done();
        reject(new DeadlineExceeded(`QMP: no ${name} event within ${opts.timeoutMs} ms`));
      }, opts.timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.off(name, onEvent);
        this.off('close', onClose);
      };
      cancel = done;
      this.on(name, onEvent);
      this.once('close', onClose);
    });
    // The caller may never await (e.g. the command itself failed): do not crash on an unhandled rejection.
    promise.catch(() => {});
    return { promise, cancel: () => cancel() };
  }

  /**
   * Every event from now on as an async iterator; ends when the connection closes or
   * `signal` aborts. Events are buffered, so a slow consumer loses nothing.
   */
  async *events(signal?: AbortSignal): AsyncGenerator<QmpEvent> {
    const queue: QmpEvent[] = [];
    let wake: (() => void) | undefined;
    let ended = this.closed;
    const onEvent = (ev: QmpEvent) => {
      queue.push(ev);
      wake?.();
    };
    const onEnd = () => {
      ended = true;
      wake?.();
    };
    this.on('event', onEvent);
    this.on('close', onEnd);
    signal?.addEventListener('abort', onEnd, { once: true });
    try {
      for (;;) {
        while (queue.length) yield queue.shift()!;
        if (ended || signal?.aborted) return;
        await new Promise<void>((r) => (wake = r));
        wake = undefined;
      }
    } finally {
      this.off('event', onEvent);
      this.off('close', onEnd);
      signal?.removeEventListener('abort', onEnd);
    }
  }

  /** Closes the connection; QEMU keeps running and accepts a new client. */
  close(): void {
    this.teardown(undefined);
  }
}

export interface EventWaiter {
  promise: Promise<QmpEvent>;
  cancel: () => void;
}

class RetryGreeting extends Error {}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
