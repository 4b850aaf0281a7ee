import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { DeadlineExceeded, InvalidArgument, PodvirtError, Unavailable, errorMessage } from '../../lib/errors.js';

/**
 * The agent-to-agent control channel of one migration: newline-delimited JSON over TCP, every
 * frame authenticated with HMAC-SHA256 under a per-migration token that the orchestrator hands
 * to both agents (pod annotation in a cluster, a 0600 state file in local mode).
 *
 * A mutual challenge (both sides' nonces) binds a session; each frame carries a direction and a
 * strictly increasing sequence number inside the MAC, so frames cannot be replayed, reordered or
 * reflected. The channel needs integrity, not secrecy: nothing secret is sent (the TLS private
 * keys stay where they were made; only a CSR and certificates travel).
 */

export type Body = Record<string, unknown>;
export type Handler = (type: string, body: Body) => Promise<Body>;

const MAX_FRAME = 1 << 20;
const HANDSHAKE_MS = 5_000;

export function newMigrationToken(): string {
  return randomBytes(32).toString('hex');
}

interface Frame {
  k: 'req' | 'res' | 'err' | 'note';
  seq: number;
  rid: number;
  type: string;
  body: Body;
  mac: string;
}

class Session {
  private sendSeq = 0;
  private recvSeq = 0;
  constructor(
    private readonly key: Buffer,
    private readonly binding: string,
    private readonly me: 'c' | 's',
  ) {}

  private mac(dir: string, f: Omit<Frame, 'mac'>): string {
    return createHmac('sha256', this.key)
      .update(`frame\n${this.binding}\n${dir}\n${f.seq}\n${f.k}\n${f.rid}\n${f.type}\n${JSON.stringify(f.body)}`)
      .digest('hex');
  }

  seal(f: Omit<Frame, 'seq' | 'mac'>): string {
    const g = { ...f, seq: ++this.sendSeq };
    return JSON.stringify({ ...g, mac: this.mac(this.me, g) }) + '\n';
  }

  /** Throws on a bad MAC or sequence: the connection is then dropped. */
  open(line: string): Frame {
    const f = JSON.parse(line) as Frame;
    if (typeof f !== 'object' || f === null || typeof f.mac !== 'string' || typeof f.seq !== 'number') throw new Error('malformed frame');
    const peer = this.me === 'c' ? 's' : 'c';
    if (!macEqual(f.mac, this.mac(peer, { k: f.k, seq: f.seq, rid: f.rid, type: f.type, body: f.body }))) throw new Error('bad frame MAC');
    if (f.seq !== this.recvSeq + 1) throw new Error(`frame out of sequence (${f.seq} after ${this.recvSeq})`);
    this.recvSeq = f.seq;
    return f;
  }
}

function macEqual(a: string, b: string): boolean {
  const x = Buffer.from(a, 'hex');
  const y = Buffer.from(b, 'hex');
  return x.length === y.length && x.length > 0 && timingSafeEqual(x, y);
}

function proof(key: Buffer, role: 'server' | 'client', migrationId: string, nc: string, ns: string): string {
  return createHmac('sha256', key).update(`hello\n${role}\n${migrationId}\n${nc}\n${ns}`).digest('hex');
}

function tokenKey(token: string): Buffer {
  if (!/^[0-9a-f]{64}$/.test(token)) throw new InvalidArgument('migration control: token must be 64 hex characters');
  return Buffer.from(token, 'hex');
}

/** Splits a socket into lines, refusing frames over 1 MiB (an unauthenticated peer must not grow our memory). */
function lines(sock: net.Socket, onLine: (l: string) => void, onError: (e: Error) => void): void {
  let buf = '';
  sock.on('data', (chunk: Buffer) => {
    buf += chunk.toString('utf8');
    if (buf.length > MAX_FRAME) return onError(new Error('frame too large'));
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const l = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (l.trim()) onLine(l);
    }
  });
}

const toBody = (e: unknown): Body => ({ kind: e instanceof PodvirtError ? e.kind : 'Internal', message: errorMessage(e) });

/**
 * Events: `'authenticated'` (remote address), `'rejected'` (reason: a peer that failed
 * authentication), `'note'` (type, body) from the client, `'disconnect'`.
 */
export class ControlServer extends EventEmitter {
  private server: net.Server | undefined;
  private peer: { sock: net.Socket; session: Session } | undefined;
  private readonly key: Buffer;

  constructor(
    private readonly migrationId: string,
    token: string,
    private readonly handler: Handler,
  ) {
    super();
    this.key = tokenKey(token);
  }

  /** Listens on host:port (port 0 = any) and resolves with the bound port. */
  listen(host: string, port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      const srv = net.createServer((s) => this.accept(s));
      srv.once('error', reject);
      srv.listen(port, host, () => {
        srv.off('error', reject);
        this.server = srv;
        resolve((srv.address() as net.AddressInfo).port);
      });
    });
  }

  private accept(sock: net.Socket): void {
    sock.setNoDelay(true);
    const ns = randomBytes(16).toString('hex');
    let nc: string | undefined;
    let session: Session | undefined;
    const timer = setTimeout(() => drop('handshake timeout'), HANDSHAKE_MS);
    const drop = (why: string) => {
      clearTimeout(timer);
      if (!session) this.emit('rejected', why);
      sock.destroy();
    };
    sock.on('error', () => sock.destroy());
    sock.on('close', () => {
      clearTimeout(timer);
      if (this.peer?.sock === sock) {
        this.peer = undefined;
        this.emit('disconnect');
      }
    });
    lines(sock, (l) => {
      try {
        if (!nc) {
          const m = JSON.parse(l) as { t?: string; id?: string; nonce?: string };
          if (m.t !== 'hello' || m.id !== this.migrationId || typeof m.nonce !== 'string' || !/^[0-9a-f]{32}$/.test(m.nonce)) {
            return drop('bad hello (unknown migration?)');
          }
          nc = m.nonce;
          sock.write(JSON.stringify({ t: 'hello', nonce: ns, mac: proof(this.key, 'server', this.migrationId, nc, ns) }) + '\n');
          return;
        }
        if (!session) {
          const m = JSON.parse(l) as { t?: string; mac?: string };
          if (m.t !== 'auth' || typeof m.mac !== 'string' || !macEqual(m.mac, proof(this.key, 'client', this.migrationId, nc, ns))) {
            return drop('client failed authentication');
          }
          if (this.peer) return drop('a client is already connected');
          clearTimeout(timer);
          session = new Session(this.key, `${this.migrationId}\n${nc}\n${ns}`, 's');
          this.peer = { sock, session };
          sock.write(JSON.stringify({ t: 'ok' }) + '\n');
          this.emit('authenticated', sock.remoteAddress);
          return;
        }
        const f = session.open(l);
        if (f.k === 'note') this.emit('note', f.type, f.body);
        else if (f.k === 'req') void this.serve(sock, session, f);
      } catch (e) {
        drop(errorMessage(e));
      }
    }, (e) => drop(e.message));
  }

  private async serve(sock: net.Socket, session: Session, f: Frame): Promise<void> {
    let reply: Omit<Frame, 'seq' | 'mac'>;
    try {
      reply = { k: 'res', rid: f.seq, type: f.type, body: await this.handler(f.type, f.body ?? {}) };
    } catch (e) {
      reply = { k: 'err', rid: f.seq, type: f.type, body: toBody(e) };
    }
    if (!sock.destroyed) sock.write(session.seal(reply));
  }

  /** Sends a notification to the authenticated client; false when none is connected. */
  notify(type: string, body: Body = {}): boolean {
    if (!this.peer || this.peer.sock.destroyed) return false;
    this.peer.sock.write(this.peer.session.seal({ k: 'note', rid: 0, type, body }));
    return true;
  }

  async close(): Promise<void> {
    this.peer?.sock.destroy();
    this.peer = undefined;
    const srv = this.server;
    this.server = undefined;
    if (srv) await new Promise<void>((r) => srv.close(() => r()));
  }
}

/** Events: `'note'` (type, body) from the server, `'close'` (Error | undefined). */
export class ControlClient extends EventEmitter {
  private readonly pending = new Map<number, { resolve: (b: Body) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  private closedWith: Error | undefined;

  private constructor(
    private readonly sock: net.Socket,
    private readonly session: Session,
  ) {
    super();
  }

  static connect(opts: { host: string; port: number; migrationId: string; token: string; timeoutMs?: number }): Promise<ControlClient> {
    const key = tokenKey(opts.token);
    return new Promise((resolve, reject) => {
      const sock = net.createConnection({ host: opts.host, port: opts.port });
      sock.setNoDelay(true);
      const nc = randomBytes(16).toString('hex');
      let ns: string | undefined;
      let client: ControlClient | undefined;
      const timer = setTimeout(() => fail(new DeadlineExceeded(`migration control ${opts.host}:${opts.port}: no handshake within ${opts.timeoutMs ?? HANDSHAKE_MS} ms`)), opts.timeoutMs ?? HANDSHAKE_MS);
      const fail = (e: Error) => {
        clearTimeout(timer);
        sock.destroy();
        if (client) client.shutdown(e);
        else reject(e);
      };
      sock.on('error', (e) => fail(new Unavailable(`migration control ${opts.host}:${opts.port}: ${e.message}`, { cause: e })));
      sock.on('close', () => fail(new Unavailable(`migration control ${opts.host}:${opts.port}: connection closed`)));
      sock.on('connect', () => sock.write(JSON.stringify({ t: 'hello', id: opts.migrationId, nonce: nc }) + '\n'));
      lines(sock, (l) => {
        try {
          if (client) return client.onLine(l);
          const m = JSON.parse(l) as { t?: string; nonce?: string; mac?: string };
          if (!ns) {
            if (m.t !== 'hello' || typeof m.nonce !== 'string' || typeof m.mac !== 'string' || !macEqual(m.mac, proof(key, 'server', opts.migrationId, nc, m.nonce))) {
              return fail(new Unavailable('migration control: the target failed authentication'));
            }
            ns = m.nonce;
            sock.write(JSON.stringify({ t: 'auth', mac: proof(key, 'client', opts.migrationId, nc, ns) }) + '\n');
            return;
          }
          if (m.t !== 'ok') return fail(new Unavailable('migration control: handshake refused'));
          clearTimeout(timer);
          client = new ControlClient(sock, new Session(key, `${opts.migrationId}\n${nc}\n${ns}`, 'c'));
          resolve(client);
        } catch (e) {
          fail(new Unavailable(`migration control: ${errorMessage(e)}`));
        }
      }, (e) => fail(new Unavailable(`migration control: ${e.message}`)));
    });
  }

  private onLine(l: string): void {
    const f = this.session.open(l);
    if (f.k === 'note') {
      this.emit('note', f.type, f.body);
      return;
    }
    const p = this.pending.get(f.rid);
    if (!p) return;
    this.pending.delete(f.rid);
    clearTimeout(p.timer);
    if (f.k === 'res') p.resolve(f.body);
    else p.reject(remoteError(f.type, f.body));
  }

  private shutdown(e: Error | undefined): void {
    if (this.closedWith) return;
    this.closedWith = e ?? new Unavailable('migration control: closed');
    for (const [, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(this.closedWith);
    }
    this.pending.clear();
    this.emit('close', e);
  }

  request(type: string, body: Body = {}, timeoutMs = 60_000): Promise<Body> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    const frame = this.session.seal({ k: 'req', rid: 0, type, body });
    const seq = (JSON.parse(frame) as Frame).seq;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(seq);
        reject(new DeadlineExceeded(`migration control: no answer to ${type} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(seq, { resolve, reject, timer });
      this.sock.write(frame);
    });
  }

  notify(type: string, body: Body = {}): void {
    if (!this.closedWith) this.sock.write(this.session.seal({ k: 'note', rid: 0, type, body }));
  }

  close(): void {
    this.sock.destroy();
    this.shutdown(undefined);
  }
}

/** The remote side's typed error, rebuilt with its kind so callers can branch on it. */
function remoteError(type: string, body: Body): PodvirtError {
  const kind = (typeof body.kind === 'string' ? body.kind : 'Internal') as PodvirtError['kind'];
  return new PodvirtError(kind, `target agent (${type}): ${typeof body.message === 'string' ? body.message : 'failed'}`);
}
