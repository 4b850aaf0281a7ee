/**
 * Pure planning: names, MACs and the `ip`/`tc` batch lines of every operation. Nothing here
 * touches the host, so the whole plan is unit-tested as data.
 *
 * Datapath of tap mode (why not an in-pod bridge: see docs/cni.md): a veth pair joins the host
 * bridge (`pvh…`, host netns) to the pod netns (`pvp…`); inside the pod, two tc ingress filters
 * redirect every frame between `pvp…` and the tap, in both directions. The tap may then carry the
 * VM's MAC without a bridge swallowing frames addressed to it, and keeping `pvp…` down is
 * enough to make a migration target silent.
 */
import { createHash, randomBytes } from 'node:crypto';
import { BlockList, isIP } from 'node:net';
import { CniCode, CniError } from './cni-error.js';
import type { Bandwidth } from './netconf.js';
import type { CniIp, CniRoute } from './result.js';

/** One batch line and what undoes it once it has succeeded (run in the same netns). */
export interface BatchOp {
  line: string;
  undo?: string;
}

export interface AttachmentNames {
  /** Host end of the veth pair, enslaved to the bridge; unique per (network, container, ifname). */
  hostVeth: string;
  /** Pod end of the veth pair in tap mode; unique per ifname inside one netns. */
  podVeth: string;
  /**
   * Link group of every device this attachment puts in the pod netns. DEL removes them with one
   * `link del group`, which the kernel unregisters as one batch (one RCU grace period instead of
   * one per device: about half the DEL latency).
   */
  podGroup: number;
  /** Link group of the network's host veths: GC lists them by it. */
  hostGroup: number;
}

const hash = (s: string): Buffer => createHash('sha256').update(s).digest();
/** A group number in [2^30, 2^31): away from the small numbers people assign by hand. */
const groupOf = (s: string): number => 0x40000000 | (hash(s).readUInt32BE(0) & 0x3fffffff);

export function attachmentNames(network: string, containerId: string, ifname: string): AttachmentNames {
  return {
    hostVeth: `pvh${hash(`${network}\0${containerId}\0${ifname}`).toString('hex').slice(0, 12)}`,
    podVeth: `pvp${hash(ifname).toString('hex').slice(0, 12)}`,
    podGroup: groupOf(`pod\0${ifname}`),
    hostGroup: groupOf(`host\0${network}`),
  };
}

function macFrom(bytes: Buffer): string {
  const b = Buffer.from(bytes.subarray(0, 6));
  b[0] = ((b[0] ?? 0) & 0xfc) | 0x02; // locally administered, unicast
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
}
/** A random locally administered unicast MAC. */
export function randomMac(): string {
  return macFrom(randomBytes(6));
}
/** A stable MAC derived from a name: a bridge keeps it instead of taking its lowest port's MAC. */
export function stableMac(seed: string): string {
  return macFrom(createHash('sha256').update(seed).digest());
}
export function tempTapName(): string {
  return `pvt${randomBytes(6).toString('hex')}`;
}

const mtuArg = (mtu: number | undefined): string => (mtu === undefined ? '' : ` mtu ${mtu}`);

interface VethInput {
  netns: string;
  mtu: number | undefined;
  names: AttachmentNames;
  hostVethMac: string;
  /** `/proc/<pid>/ns/net` of a process in the host netns (this one). */
  hostNetns: string;
  /** ifindex of the host bridge: `master` is resolved in the pod netns, so by index (`if<N>`). */
  bridgeIndex: number;
}

/**
 * The veth pair, created from inside the pod netns with its host end placed straight into the
 * host netns, enslaved and up: one batch line instead of a second process on the host side.
 */
function vethLine(i: VethInput, peerName: string, peerMac: string): BatchOp {
  return {
    line:
      `link add ${i.names.hostVeth} netns ${i.hostNetns} address ${i.hostVethMac}${mtuArg(i.mtu)} ` +
      `master if${i.bridgeIndex} group ${i.names.hostGroup} up type veth ` +
      `peer name ${peerName} address ${peerMac}${mtuArg(i.mtu)} group ${i.names.podGroup}`,
    undo: `link del ${peerName}`,
  };
}

export interface TapAddInput extends VethInput {
  ifname: string;
  mac: string;
  multiQueue: boolean;
  owner: number | undefined;
  group: number | undefined;
  migrationTarget: boolean;
  podVethMac: string;
  tmpTap: string;
}

export interface TapAddPlan {
  pod: BatchOp[];
  podTc: string[];
}

export function planTapAdd(i: TapAddInput): TapAddPlan {
  const { podVeth, podGroup } = i.names;
  const tuntap =
    `tuntap add dev ${i.tmpTap} mode tap` +
    (i.multiQueue ? ' multi_queue' : '') +
    (i.owner !== undefined ? ` user ${i.owner}` : '') +
    (i.group !== undefined ? ` group ${i.group}` : '');
  const redirect = (from: string, to: string): string[] => [
    `qdisc add dev ${from} ingress`,
    `filter add dev ${from} parent ffff: protocol all prio 1 u32 match u32 0 0 action mirred egress redirect dev ${to}`,
  ];
  return {
    pod: [
      // A temporary name first: renaming fails atomically if CNI_IFNAME exists, whereas
      // `tuntap add` would silently reuse an existing persistent tap of that name.
      { line: tuntap, undo: `link del ${i.tmpTap}` },
      // No IPv6 link-local (addrgenmode none): the pod's kernel must not speak on the VM's segment.
      {
        line: `link set dev ${i.tmpTap} name ${i.ifname} address ${i.mac}${mtuArg(i.mtu)} addrgenmode none group ${podGroup} up`,
        undo: `link del ${i.ifname}`,
      },
      vethLine(i, podVeth, i.podVethMac),
      // A migration target keeps the pod end down: nothing from the tap reaches the bridge.
      { line: `link set dev ${podVeth} addrgenmode none${i.migrationTarget ? '' : ' up'}` },
    ],
    podTc: [...redirect(podVeth, i.ifname), ...redirect(i.ifname, podVeth)],
  };
}

export interface MigrationAddInput extends VethInput {
  ifname: string;
  mac: string;
  ips: CniIp[];
  routes: CniRoute[];
}

/** Migration mode: the veth's pod end is CNI_IFNAME itself, with the IPAM addresses and routes. */
export function planMigrationAdd(i: MigrationAddInput): BatchOp[] {
  return [vethLine(i, i.ifname, i.mac), ...planMigrationPod(i.ifname, i.ips, i.routes)];
}

/** Default gateway per family, for routes that name none (libcni ipam.ConfigureIface does the same). */
function gatewayFor(dst: string, ips: CniIp[]): string | undefined {
  const v6 = dst.includes(':');
  return ips.find((ip) => ip.gateway && ip.gateway.includes(':') === v6)?.gateway;
}

function planMigrationPod(ifname: string, ips: CniIp[], routes: CniRoute[]): BatchOp[] {
  const ops: BatchOp[] = [{ line: `link set dev ${ifname} up` }];
  for (const ip of ips) ops.push({ line: `addr add ${ip.address} dev ${ifname}${ip.address.includes(':') ? ' nodad' : ''}` });
  for (const r of routes) {
    const gw = r.gw ?? gatewayFor(r.dst, ips);
    ops.push({
      line:
        `route add ${r.dst}${gw ? ` via ${gw}` : ''} dev ${ifname}` +
        (r.mtu !== undefined ? ` mtu ${r.mtu}` : '') +
        (r.advmss !== undefined ? ` advmss ${r.advmss}` : '') +
        (r.priority !== undefined ? ` metric ${r.priority}` : '') +
        (r.table !== undefined ? ` table ${r.table}` : '') +
        (r.scope !== undefined ? ` scope ${r.scope}` : ''),
    });
  }
  return ops;
}

/** tbf needs a burst of at least one MTU-sized frame; default to 10 ms worth of rate, at least 64 KiB. */
export function tbfLine(dev: string, rate: number, burstBits: number | undefined): string {
  const burstBytes = burstBits !== undefined ? Math.max(Math.ceil(burstBits / 8), 2048) : Math.max(Math.ceil(rate / 800), 65536);
  return `qdisc add dev ${dev} root tbf rate ${rate}bit burst ${burstBytes} latency 25ms`;
}

/**
 * Egress (leaving the pod) is shaped on the pod interface, ingress (entering the pod) on the
 * host end of the veth: tbf shapes what a device sends.
 */
export function planBandwidth(ifname: string, hostVeth: string, bw: Bandwidth | undefined): { pod: string[]; host: string[] } {
  const pod = bw?.egressRate ? [tbfLine(ifname, bw.egressRate, bw.egressBurst)] : [];
  const host = bw?.ingressRate ? [tbfLine(hostVeth, bw.ingressRate, bw.ingressBurst)] : [];
  return { pod, host };
}

/** DEL inside the netns: the attachment's group in one go (the veth's host end goes with its peer). */
export function planDelPod(names: AttachmentNames): string[] {
  return [`link del group ${names.podGroup}`];
}

/** Opening a migration target's path: the pod end of the veth goes up, nothing else changes. */
export function planActivate(ifname: string): string[] {
  return [`link set dev ${ifname} up`, `link set dev ${attachmentNames('', '', ifname).podVeth} up`];
}

/** An address with its prefix length, as the bridge should carry it (`isGateway`). */
export interface BridgeAddr {
  /** Canonical text (IPv6 compressed, lower case), so it compares equal to what `ip -j` prints. */
  ip: string;
  prefix: number;
}

/** Canonical text of an IP, or undefined when it is not one. */
function canonicalIp(s: string): string | undefined {
  const family = s.includes('%') ? 0 : isIP(s); // a zone index belongs to no bridge address
  if (family === 4) return s;
  // The WHATWG URL host serializer prints IPv6 in RFC 5952 form, as iproute2 does.
  if (family === 6) return new URL(`http://[${s}]`).hostname.slice(1, -1);
  return undefined;
}

const gatewayError = (msg: string): CniError =>
  new CniError(
    CniCode.InvalidNetworkConfig,
    `isGateway: ${msg}`,
    'the bridge takes the gateway of every IPAM address: name one in the IPAM config (host-local: "gateway" in the range; static: "gateway" next to the address), or set isGateway to false',
  );

/**
 * `isGateway`: what the host bridge must carry for the IPAM result, namely each address's gateway
 * with the address's prefix (the guest and the bridge then share the subnet, and the node routes
 * it through the bridge). Every address must name a gateway inside its own subnet.
 */
export function bridgeGatewayAddrs(ips: readonly CniIp[]): BridgeAddr[] {
  if (ips.length === 0) throw gatewayError('the IPAM result has no address, so no gateway for the bridge');
  const out: BridgeAddr[] = [];
  for (const { address, gateway } of ips) {
    const [ipText = '', prefixText = ''] = address.split('/');
    const family = isIP(ipText);
    const prefix = Number(prefixText);
    if (!family || !/^\d+$/.test(prefixText) || prefix > (family === 4 ? 32 : 128)) throw gatewayError(`IPAM address ${JSON.stringify(address)} is not an address/prefix`);
    if (!gateway) throw gatewayError(`the IPAM result has no gateway for ${address}`);
    const gw = canonicalIp(gateway);
    if (!gw || isIP(gw) !== family) throw gatewayError(`gateway ${JSON.stringify(gateway)} of ${address} is not an IPv${family} address`);
    const subnet = new BlockList();
    subnet.addSubnet(ipText, prefix, family === 4 ? 'ipv4' : 'ipv6');
    if (!subnet.check(gw, family === 4 ? 'ipv4' : 'ipv6')) throw gatewayError(`gateway ${gw} is outside the subnet of ${address}`);
    if (gw === canonicalIp(ipText)) throw gatewayError(`gateway ${gw} is the address IPAM gave the guest`);
    if (!out.some((a) => a.ip === gw && a.prefix === prefix)) out.push({ ip: gw, prefix });
  }
  return out;
}

/** The wanted addresses the bridge does not carry with exactly that prefix. */
export function missingBridgeAddrs(want: readonly BridgeAddr[], have: readonly BridgeAddr[]): BridgeAddr[] {
  return want.filter((w) => !have.some((h) => h.prefix === w.prefix && canonicalIp(h.ip) === w.ip));
}

/**
 * Batch lines (host netns) that give `bridge` the addresses it lacks; none when it has them all,
 * so a second ADD changes nothing. The bridge's other addresses are left alone. The same address
 * with another prefix is the operator's (or another network's) and a conflict: no guess.
 */
export function planBridgeGateway(bridge: string, want: readonly BridgeAddr[], have: readonly BridgeAddr[]): string[] {
  return missingBridgeAddrs(want, have).map((w) => {
    const other = have.find((h) => canonicalIp(h.ip) === w.ip);
    if (other) {
      throw new CniError(
        CniCode.InvalidNetworkConfig,
        `isGateway: bridge ${bridge} already has ${other.ip}/${other.prefix}, IPAM's subnet wants ${w.ip}/${w.prefix}`,
        'remove the address from the bridge or make the IPAM subnet match it',
      );
    }
    // nodad: the gateway is this node's own address; guests must not wait out DAD for their router.
    return `addr add ${w.ip}/${w.prefix} dev ${bridge}${w.ip.includes(':') ? ' nodad' : ''}`;
  });
}
