/**
 * The shim <-> server wire format (see shim/podvirt-cni.c):
 *   request:  "PVCNI1\n" { "KEY=VALUE" NUL } NUL <stdin bytes> <EOF>
 *   response: "PVCNI1 <exit> <stdout bytes> <stderr bytes>\n" <stdout> <stderr>
 */
import { MAX_CONFIG_BYTES } from './netconf.js';

export const MAGIC = 'PVCNI1';
export const MAX_ENV_BYTES = 256 * 1024;

export interface WireRequest {
  env: Record<string, string>;
  /** At most MAX_CONFIG_BYTES + 1 bytes: one more than allowed marks an oversized config. */
  stdin: Buffer;
}

/** Incremental decoder: feed chunks, then `finish()` at EOF. Bounded memory whatever the peer sends. */
export class RequestDecoder {
  private head = Buffer.alloc(0);
  private headerDone = false;
  private env: Record<string, string> = {};
  private body: Buffer[] = [];
  private bodyLen = 0;
  error: string | undefined;

  push(chunk: Buffer): void {
    if (this.error) return;
    if (!this.headerDone) {
      this.head = Buffer.concat([this.head, chunk]);
      const end = this.headerEnd();
      if (end < 0) {
        if (this.head.length > MAX_ENV_BYTES) this.error = 'request environment too large';
        return;
      }
      this.parseHeader(this.head.subarray(0, end));
      chunk = this.head.subarray(end);
      this.head = Buffer.alloc(0);
      this.headerDone = true;
    }
    const room = MAX_CONFIG_BYTES + 1 - this.bodyLen;
    if (room > 0) {
      const part = chunk.subarray(0, room);
      this.body.push(part);
      this.bodyLen += part.length;
    }
  }

  /** Index just past the NUL that ends the env block (an empty entry), or -1. */
  private headerEnd(): number {
    const nl = this.head.indexOf(0x0a);
    if (nl < 0) return -1;
    let i = nl + 1;
    for (;;) {
      const z = this.head.indexOf(0, i);
      if (z < 0) return -1;
      if (z === i) return z + 1;
      i = z + 1;
    }
  }

  private parseHeader(h: Buffer): void {
    const nl = h.indexOf(0x0a);
    if (h.subarray(0, nl).toString('latin1') !== MAGIC) {
      this.error = 'bad magic';
      return;
    }
    for (const entry of h.subarray(nl + 1, h.length - 1).toString('utf8').split('\0')) {
      const eq = entry.indexOf('=');
      if (eq <= 0) continue;
      const key = entry.slice(0, eq);
      // Only the CNI protocol's variables cross the socket: never PATH, LD_* and the like.
      if (key.startsWith('CNI_')) this.env[key] = entry.slice(eq + 1);
    }
  }

  finish(): WireRequest | undefined {
    if (this.error) return undefined;
    if (!this.headerDone) {
      this.error = 'incomplete request';
      return undefined;
    }
    return { env: this.env, stdin: Buffer.concat(this.body) };
  }
}

export function encodeResponse(exitCode: number, stdout: string, stderr: string): Buffer {
  const out = Buffer.from(stdout, 'utf8');
  const err = Buffer.from(stderr, 'utf8');
  return Buffer.concat([Buffer.from(`${MAGIC} ${exitCode & 0xff} ${out.length} ${err.length}\n`, 'latin1'), out, err]);
}

export function encodeRequest(env: Record<string, string | undefined>, stdin: Buffer): Buffer {
  const parts: Buffer[] = [Buffer.from(`${MAGIC}\n`, 'latin1')];
  for (const [k, v] of Object.entries(env)) if (v !== undefined && k.startsWith('CNI_')) parts.push(Buffer.from(`${k}=${v}\0`, 'utf8'));
  parts.push(Buffer.from([0]), stdin);
  return Buffer.concat(parts);
}
