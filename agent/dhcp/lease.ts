import * as packet from './packet.js';
import type { DhcpPacket } from './packet.js';

/** A static lease: this MAC always gets this address (the VM's CNI/IPAM address). */
export interface StaticLease {
  mac: string;
  ip: string;
  prefixLength: number;
  gateway?: string;
  dns?: string[];
  hostname?: string;
  mtu?: number;
  /**
   * Routes besides the default one (`dst` as CIDR, `gw` 0.0.0.0 = on-link). Sent as classless
   * static routes (option 121), which clients prefer to the router option, so the default route
   * through `gateway` is sent there too.
   */
  routes?: Array<{ dst: string; gw: string }>;
  /** DNS domain (option 15) and search list (option 119). */
  domain?: string;
  search?: string[];
  /** Host bridge the VM's tap is on: replies leave through it. */
  bridge: string;
  /** Who owns the lease (the pod), for removal. */
  owner: string;
}

export interface Reply {
  packet: DhcpPacket;
  /** Where to send it: the client's new address, or the subnet's broadcast when the client asked for that. */
  to: string;
}

export const LEASE_SECONDS = 86400;

/**
 * What the server answers to a client message (pure). Only MACs with a static lease get an answer:
 * other DHCP servers may share the bridge, and several local agents may listen on the port.
 */
export function answer(req: DhcpPacket, lease: StaticLease | undefined, serverId: string): Reply | undefined {
  if (req.op !== 1 || !lease) return undefined;
  const type = req.options.get(packet.OPT.messageType)?.[0];
  let replyType: number;
  if (type === packet.DISCOVER) {
    replyType = packet.OFFER;
  } else if (type === packet.REQUEST) {
    const sid = req.options.get(packet.OPT.serverId);
    // Selecting another server's offer: stay quiet.
    if (sid && packet.bufToIp(sid) !== serverId) return undefined;
    const asked = req.options.get(packet.OPT.requestedIp);
    const want = asked ? packet.bufToIp(asked) : req.ciaddr;
    replyType = want === lease.ip ? packet.ACK : packet.NAK;
  } else {
    return undefined; // RELEASE, DECLINE, INFORM: nothing to give back for a static lease
  }
  const options = new Map<number, Buffer>();
  options.set(packet.OPT.messageType, Buffer.from([replyType]));
  options.set(packet.OPT.serverId, packet.ipToBuf(serverId));
  if (replyType !== packet.NAK) {
    options.set(packet.OPT.leaseTime, packet.u32(LEASE_SECONDS));
    options.set(packet.OPT.renewalTime, packet.u32(LEASE_SECONDS / 2));
    options.set(packet.OPT.rebindingTime, packet.u32((LEASE_SECONDS * 7) / 8));
    options.set(packet.OPT.subnetMask, packet.ipToBuf(packet.prefixToMask(lease.prefixLength)));
    if (lease.gateway) options.set(packet.OPT.router, packet.ipToBuf(lease.gateway));
    if (lease.dns?.length) options.set(packet.OPT.dns, Buffer.concat(lease.dns.map(packet.ipToBuf)));
    if (lease.hostname) options.set(packet.OPT.hostname, Buffer.from(lease.hostname));
    if (lease.domain) options.set(packet.OPT.domainName, Buffer.from(lease.domain));
    if (lease.search?.length) options.set(packet.OPT.domainSearch, packet.encodeDomainSearch(lease.search));
    if (lease.routes?.length) {
      const all = lease.gateway ? [...lease.routes, { dst: '0.0.0.0/0', gw: lease.gateway }] : lease.routes;
      options.set(packet.OPT.classlessRoutes, packet.encodeClasslessRoutes(all));
    }
    if (lease.mtu) {
      const b = Buffer.alloc(2);
      b.writeUInt16BE(lease.mtu);
      options.set(packet.OPT.mtu, b);
    }
  }
  const broadcast = (req.flags & 0x8000) !== 0 || replyType === packet.NAK;
  return {
    packet: {
      op: 2,
      xid: req.xid,
      secs: 0,
      flags: req.flags & 0x8000,
      ciaddr: replyType === packet.ACK ? req.ciaddr : '0.0.0.0',
      yiaddr: replyType === packet.NAK ? '0.0.0.0' : lease.ip,
      siaddr: serverId,
      giaddr: req.giaddr,
      chaddr: req.chaddr,
      options,
    },
    to: broadcast ? packet.broadcastOf(lease.ip, lease.prefixLength) : lease.ip,
  };
}
