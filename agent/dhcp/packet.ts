import { InvalidArgument } from '../../lib/errors.js';

/** DHCP message types (option 53). */
export const DISCOVER = 1;
export const OFFER = 2;
export const REQUEST = 3;
export const DECLINE = 4;
export const ACK = 5;
export const NAK = 6;
export const RELEASE = 7;
export const INFORM = 8;

export const OPT = {
  subnetMask: 1,
  router: 3,
  dns: 6,
  hostname: 12,
  domainName: 15,
  mtu: 26,
  requestedIp: 50,
  leaseTime: 51,
  messageType: 53,
  serverId: 54,
  renewalTime: 58,
  rebindingTime: 59,
  domainSearch: 119,
  classlessRoutes: 121,
  end: 255,
  pad: 0,
} as const;

const MAGIC = 0x63825363;
const FIXED = 236;

/** The BOOTP/DHCP fields a server reads or writes (RFC 2131 §2). */
export interface DhcpPacket {
  op: 1 | 2;
  xid: number;
  secs: number;
  /** Top bit: the client wants the reply broadcast. */
  flags: number;
  ciaddr: string;
  yiaddr: string;
  siaddr: string;
  giaddr: string;
  /** Client MAC, lower-case `aa:bb:...`. */
  chaddr: string;
  options: Map<number, Buffer>;
}

export function ipToBuf(ip: string): Buffer {
  const parts = ip.split('.').map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) {
    throw new InvalidArgument(`not an IPv4 address: "${ip}"`);
  }
  return Buffer.from(parts);
}

export function bufToIp(b: Buffer, off = 0): string {
  return `${b[off]}.${b[off + 1]}.${b[off + 2]}.${b[off + 3]}`;
}

export function prefixToMask(prefix: number): string {
  const m = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  return [24, 16, 8, 0].map((s) => (m >>> s) & 0xff).join('.');
}

/** Directed broadcast address of `ip/prefix`. */
export function broadcastOf(ip: string, prefix: number): string {
  const b = ipToBuf(ip).readUInt32BE(0);
  const host = prefix === 32 ? 0 : (0xffffffff >>> prefix) >>> 0;
  const out = Buffer.alloc(4);
  out.writeUInt32BE((b | host) >>> 0);
  return bufToIp(out);
}

/** Parses a datagram; undefined for anything that is not a well-formed DHCP message. */
export function decodeDhcp(b: Buffer): DhcpPacket | undefined {
  if (b.length < FIXED + 4 || b.readUInt32BE(FIXED) !== MAGIC) return undefined;
  const op = b[0];
  if (op !== 1 && op !== 2) return undefined;
  if (b[1] !== 1 || b[2] !== 6) return undefined; // Ethernet only
  const options = new Map<number, Buffer>();
  for (let i = FIXED + 4; i < b.length; ) {
    const code = b[i]!;
    if (code === OPT.pad) {
      i++;
      continue;
    }
    if (code === OPT.end) break;
    const len = b[i + 1];
    if (len === undefined || i + 2 + len > b.length) return undefined;
    options.set(code, Buffer.concat([options.get(code) ?? Buffer.alloc(0), b.subarray(i + 2, i + 2 + len)]));
    i += 2 + len;
  }
  return {
    op,
    xid: b.readUInt32BE(4),
    secs: b.readUInt16BE(8),
    flags: b.readUInt16BE(10),
    ciaddr: bufToIp(b, 12),
    yiaddr: bufToIp(b, 16),
    siaddr: bufToIp(b, 20),
    giaddr: bufToIp(b, 24),
    chaddr: [...b.subarray(28, 34)].map((x) => x.toString(16).padStart(2, '0')).join(':'),
    options,
  };
}

export function encodeDhcp(p: DhcpPacket): Buffer {
  const head = Buffer.alloc(FIXED + 4);
  head[0] = p.op;
  head[1] = 1;
  head[2] = 6;
  head.writeUInt32BE(p.xid >>> 0, 4);
  head.writeUInt16BE(p.secs, 8);
  head.writeUInt16BE(p.flags, 10);
  ipToBuf(p.ciaddr).copy(head, 12);
  ipToBuf(p.yiaddr).copy(head, 16);
  ipToBuf(p.siaddr).copy(head, 20);
  ipToBuf(p.giaddr).copy(head, 24);
  Buffer.from(p.chaddr.split(':').map((x) => parseInt(x, 16))).copy(head, 28);
  head.writeUInt32BE(MAGIC, FIXED);
  const opts: Buffer[] = [];
  for (const [code, val] of p.options) {
    // Long values (e.g. many DNS servers) are split across repeated options (RFC 3396).
    for (let i = 0; i === 0 || i < val.length; i += 255) {
      const chunk = val.subarray(i, i + 255);
      opts.push(Buffer.from([code, chunk.length]), chunk);
    }
  }
  opts.push(Buffer.from([OPT.end]));
  const body = Buffer.concat([head, ...opts]);
  // Some clients drop replies shorter than a BOOTP message (300 bytes).
  return body.length < 300 ? Buffer.concat([body, Buffer.alloc(300 - body.length)]) : body;
}

export function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

/**
 * Classless static routes (option 121, RFC 3442): per route the prefix length, the significant
 * octets of the destination, then the router (0.0.0.0 = on-link).
 */
export function encodeClasslessRoutes(routes: ReadonlyArray<{ dst: string; gw: string }>): Buffer {
  const parts: Buffer[] = [];
  for (const r of routes) {
    const [net, len] = r.dst.split('/') as [string, string | undefined];
    const prefix = Number(len ?? 32);
    if (!Number.isInteger(prefix) || prefix < 0 || prefix > 32) throw new InvalidArgument(`not an IPv4 prefix: "${r.dst}"`);
    parts.push(Buffer.from([prefix]), ipToBuf(net).subarray(0, Math.ceil(prefix / 8)), ipToBuf(r.gw));
  }
  return Buffer.concat(parts);
}

/** Domain search list (option 119, RFC 3397): names in DNS wire format, uncompressed. */
export function encodeDomainSearch(names: readonly string[]): Buffer {
  const parts: Buffer[] = [];
  for (const n of names) {
    for (const label of n.replace(/\.$/, '').split('.')) {
      if (!label || label.length > 63) throw new InvalidArgument(`not a domain name: "${n}"`);
      parts.push(Buffer.from([label.length]), Buffer.from(label, 'ascii'));
    }
    parts.push(Buffer.from([0]));
  }
  return Buffer.concat(parts);
}
