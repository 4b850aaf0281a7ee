import * as dgram from 'node:dgram';
import { exec, type Exec } from '../../lib/exec.js';
import { FailedPrecondition, errorMessage } from '../../lib/errors.js';
import { silentLogger, type Logger } from '../../lib/log.js';
import { decodeDhcp, encodeDhcp, ipToBuf } from './packet.js';
import { answer, type StaticLease } from './lease.js';

export interface DhcpServerOptions {
  port?: number;
  clientPort?: number;
  log?: Logger;
  exec?: Exec;
}

/**
 * A DHCP server for static leases on host bridges, inside the agent: the guest gets its address
 * with no process in its pod.
 *
 * Which interface replies leave by: Node cannot bind a UDP socket to a device (no SO_BINDTODEVICE),
 * so replies are routed. A reply to the client's new address goes out through the bridge's connected
 * route once a neighbour entry maps that address to the lease's MAC (the client cannot answer ARP
 * before it has the address; RFC 2131 §4.1 asks the server to address it by MAC). A client that sets
 * the broadcast flag gets the subnet's directed broadcast, which the same route sends out the bridge.
 * The socket uses SO_REUSEADDR so several agents (tests, a second state dir) can listen at once:
 * Linux hands every broadcast to each of them, and each answers only for its own MACs.
 */
export class DhcpServer {
  private sock: dgram.Socket | undefined;
  private readonly leases = new Map<string, StaticLease>();
  private readonly log: Logger;
  private readonly run: Exec;
  private readonly serverIds = new Map<string, string>();
  private readonly warned = new Set<string>();
  /** Count of replies sent, for tests and status. */
  replies = 0;

  constructor(private readonly opts: DhcpServerOptions = {}) {
    this.log = opts.log ?? silentLogger;
    this.run = opts.exec ?? exec;
  }

  async start(): Promise<void> {
    if (this.sock) return;
    const sock = dgram.createSocket({ type: 'udp4', reuseAddr: true });
    await new Promise<void>((resolve, reject) => {
      sock.once('error', reject);
      sock.bind(this.opts.port ?? 67, '0.0.0.0', () => {
        sock.off('error', reject);
        resolve();
      });
    }).catch((e: unknown) => {
      sock.close();
      throw new FailedPrecondition(`cannot listen for DHCP on udp/${this.opts.port ?? 67}: ${errorMessage(e)}`, { cause: e });
    });
    sock.setBroadcast(true);
    sock.on('message', (msg) => {
      this.onMessage(msg).catch((e: unknown) => this.log.warn({ err: errorMessage(e) }, 'dhcp reply failed'));
    });
    sock.on('error', (e) => this.log.warn({ err: errorMessage(e) }, 'dhcp socket error'));
    this.sock = sock;
  }

  async stop(): Promise<void> {
    const s = this.sock;
    this.sock = undefined;
    if (s) await new Promise<void>((r) => s.close(() => r()));
  }

  add(lease: StaticLease): void {
    ipToBuf(lease.ip);
    this.leases.set(lease.mac.toLowerCase(), { ...lease, mac: lease.mac.toLowerCase() });
  }

  removeMac(mac: string): void {
    this.leases.delete(mac.toLowerCase());
  }

  removeOwner(owner: string): void {
    for (const [mac, l] of this.leases) if (l.owner === owner) this.leases.delete(mac);
  }

  list(): StaticLease[] {
    return [...this.leases.values()];
  }

  private async onMessage(msg: Buffer): Promise<void> {
    const req = decodeDhcp(msg);
    if (!req) return;
    const lease = this.leases.get(req.chaddr);
    if (!lease) return;
    const serverId = await this.serverId(lease);
    const reply = answer(req, lease, serverId);
    if (!reply) return;
    if (reply.to === lease.ip) {
      await this.run('ip', ['neigh', 'replace', lease.ip, 'lladdr', lease.mac, 'dev', lease.bridge, 'nud', 'reachable']);
    }
    const data = encodeDhcp(reply.packet);
    await new Promise<void>((resolve, reject) =>
      this.sock?.send(data, this.opts.clientPort ?? 68, reply.to, (e) => (e ? reject(e) : resolve())) ?? resolve(),
    );
    this.replies++;
    this.log.info({ mac: lease.mac, ip: lease.ip, to: reply.to, type: reply.packet.options.get(53)?.[0] }, 'dhcp reply');
  }

  /**
   * The bridge's own IPv4 address in the lease's subnet (the server identifier clients send back,
   * and the source the kernel routes the reply from). A bridge without one cannot carry the reply:
   * it would follow another route. That is the operator's network to fix, so it is said once per
   * bridge and looked up again next time (the address may have been added since).
   */
  private async serverId(lease: StaticLease): Promise<string> {
    const key = `${lease.bridge}|${subnetOf(lease.ip, lease.prefixLength)}`;
    const cached = this.serverIds.get(key);
    if (cached) return cached;
    const out = await this.run('ip', ['-j', '-4', 'addr', 'show', 'dev', lease.bridge]);
    const info = JSON.parse(out.stdout || '[]') as { addr_info?: { local: string }[] }[];
    const addrs = (info[0]?.addr_info ?? []).map((a) => a.local);
    const inSubnet = addrs.find((a) => subnetOf(a, lease.prefixLength) === subnetOf(lease.ip, lease.prefixLength));
    if (inSubnet) {
      this.serverIds.set(key, inSubnet);
      return inSubnet;
    }
    if (!this.warned.has(key)) {
      this.warned.add(key);
      this.log.warn(
        { bridge: lease.bridge, subnet: `${subnetOf(lease.ip, lease.prefixLength)}/${lease.prefixLength}`, addresses: addrs },
        'the bridge has no IPv4 address in the guest subnet: DHCP replies cannot reach guests on it (give it one, e.g. the gateway)',
      );
    }
    const addr = addrs[0] ?? lease.gateway;
    if (!addr) throw new FailedPrecondition(`bridge ${lease.bridge} has no IPv4 address to answer DHCP from`);
    return addr;
  }
}

/** Network address of `ip/prefix`. */
function subnetOf(ip: string, prefix: number): string {
  const n = ipToBuf(ip).readUInt32BE(0);
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  return [24, 16, 8, 0].map((s) => (((n & mask) >>> 0) >>> s) & 0xff).join('.');
}
