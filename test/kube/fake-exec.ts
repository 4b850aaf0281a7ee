/**
 * pods/exec for the fake API server: the WebSocket upgrade (RFC 6455, server side, enough for
 * client-node's Exec) speaking the `v4.channel.k8s.io` subprotocol: every binary message starts
 * with a channel byte (0 stdin, 1 stdout, 2 stderr, 3 status JSON). The command runs on this host
 * through a handler the test supplies, standing in for the container runtime.
 */
import type { ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import type * as http from 'node:http';
import type { Duplex } from 'node:stream';

export interface ExecRequest {
  namespace: string;
  pod: string;
  container: string;
  command: string[];
  tty: boolean;
  stdin: boolean;
}

export type ExecHandler = (r: ExecRequest) => ChildProcess;

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const PROTOCOL = 'v4.channel.k8s.io';

function frame(opcode: number, payload: Buffer): Buffer {
  const len = payload.length;
  let head: Buffer;
  if (len < 126) head = Buffer.from([0x80 | opcode, len]);
  else if (len < 65536) {
    head = Buffer.alloc(4);
    head[0] = 0x80 | opcode;
    head[1] = 126;
    head.writeUInt16BE(len, 2);
  } else {
    head = Buffer.alloc(10);
    head[0] = 0x80 | opcode;
    head[1] = 127;
    head.writeBigUInt64BE(BigInt(len), 2);
  }
  return Buffer.concat([head, payload]);
}

/** Parses complete client frames off the front of `buf`; returns them and the rest. */
function parseFrames(buf: Buffer): { frames: Array<{ opcode: number; payload: Buffer }>; rest: Buffer } {
  const frames: Array<{ opcode: number; payload: Buffer }> = [];
  let off = 0;
  for (;;) {
    if (buf.length - off < 2) break;
    const b0 = buf[off]!;
    const b1 = buf[off + 1]!;
    let len = b1 & 0x7f;
    let p = off + 2;
    if (len === 126) {
      if (buf.length - p < 2) break;
      len = buf.readUInt16BE(p);
      p += 2;
    } else if (len === 127) {
      if (buf.length - p < 8) break;
      len = Number(buf.readBigUInt64BE(p));
      p += 8;
    }
    const masked = (b1 & 0x80) !== 0;
    if (buf.length - p < (masked ? 4 : 0) + len) break;
    let payload: Buffer;
    if (masked) {
      const mask = buf.subarray(p, p + 4);
      p += 4;
      payload = Buffer.alloc(len);
      for (let i = 0; i < len; i++) payload[i] = buf[p + i]! ^ mask[i % 4]!;
    } else payload = Buffer.from(buf.subarray(p, p + len));
    frames.push({ opcode: b0 & 0x0f, payload });
    off = p + len;
  }
  return { frames, rest: buf.subarray(off) };
}

/** Handles an upgrade request for `/api/v1/namespaces/NS/pods/NAME/exec`; false if not one. */
export function handleExecUpgrade(req: http.IncomingMessage, socket: Duplex, token: string, handler: ExecHandler | undefined): boolean {
  const url = new URL(req.url ?? '/', 'http://x');
  const m = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)\/exec$/.exec(url.pathname);
  if (!m) return false;
  const fail = (code: number, text: string) => {
    socket.end(`HTTP/1.1 ${code} ${text}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
    return true;
  };
  if (req.headers.authorization !== `Bearer ${token}`) return fail(401, 'Unauthorized');
  const offered = String(req.headers['sec-websocket-protocol'] ?? '').split(',').map((s) => s.trim());
  if (!offered.includes(PROTOCOL)) return fail(400, 'Bad Request');
  if (!handler) return fail(403, 'Forbidden');
  const key = String(req.headers['sec-websocket-key'] ?? '');
  const accept = createHash('sha1').update(key + GUID).digest('base64');
  socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\nSec-WebSocket-Protocol: ${PROTOCOL}\r\n\r\n`);
  const q = url.searchParams;
  const child = handler({
    namespace: m[1]!,
    pod: m[2]!,
    container: q.get('container') ?? '',
    command: q.getAll('command'),
    tty: q.get('tty') === 'true',
    stdin: q.get('stdin') === 'true',
  });
  let closed = false;
  const send = (channel: number, data: Buffer) => {
    if (!closed) socket.write(frame(0x2, Buffer.concat([Buffer.from([channel]), data])));
  };
  child.stdout?.on('data', (b: Buffer) => send(1, b));
  child.stderr?.on('data', (b: Buffer) => send(2, b));
  child.on('close', (code) => {
    const status =
      code === 0
        ? { metadata: {}, status: 'Success' }
        : { metadata: {}, status: 'Failure', message: `command terminated with non-zero exit code: ${code}`, reason: 'NonZeroExitCode', details: { causes: [{ reason: 'ExitCode', message: String(code) }] } };
    send(3, Buffer.from(JSON.stringify(status)));
    if (!closed) socket.end(frame(0x8, Buffer.from([0x03, 0xe8])));
    closed = true;
  });
  let buf: Buffer = Buffer.alloc(0);
  socket.on('data', (b: Buffer) => {
    const r = parseFrames(Buffer.concat([buf, b]));
    buf = r.rest;
    for (const f of r.frames) {
      if (f.opcode === 0x8) {
        child.stdin?.end();
        if (!closed) socket.end(frame(0x8, Buffer.from([0x03, 0xe8])));
        closed = true;
      } else if (f.opcode === 0x9) socket.write(frame(0xa, f.payload));
      else if ((f.opcode === 0x2 || f.opcode === 0x1) && f.payload[0] === 0) child.stdin?.write(f.payload.subarray(1));
    }
  });
  socket.on('error', () => undefined);
  socket.on('close', () => {
    closed = true;
    child.stdin?.end();
  });
  return true;
}
