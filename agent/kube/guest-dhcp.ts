/**
 * Guest DHCP in a cluster: joins what the CNI plugin made (tap attachments, reported by the CNI
 * server or recorded by the bundle: cni/attachment-events.ts) with the VMs this agent runs, and
 * keeps the agent's DHCP server holding one static lease per guest NIC.
 *
 * The two sides meet in the pod's network namespace. The kubelet (through Multus) calls the
 * plugin when it makes the pod sandbox; the agent starts QEMU in that sandbox later and knows the
 * namespace as `/proc/<pid>/ns/net` while CNI was given a bind mount such as
 * `/var/run/netns/cni-…`: they are matched by the namespace's inode and device, and, when the
 * runtime passed `K8S_POD_*` in `CNI_ARGS`, by the pod too (a namespace inode can be reused after
 * the old one is gone). Which tap belongs to which guest NIC comes from Multus'
 * `network-status` (the tap name per network) or, without it, from the network name. The lease is
 * keyed by the guest NIC's MAC from the VM's recorded topology, not the tap's: the tap only
 * carries frames, the guest's frames carry its own MAC.
 *
 * The join is the source of truth; the DHCP server is a sink that may restart (it gets the whole
 * table again) and the table itself is rebuilt after an agent restart from the attachment records
 * plus the re-adopted VMs. On a migration the target node's agent adds the lease when the VM runs
 * there (same MAC from the replayed topology, the address from the target pod's attachment) and
 * the source node's agent drops its own when the source QEMU stops.
 */
import { statSync } from 'node:fs';
import type { V1Pod } from '@kubernetes/client-node';
import { forgetAttachment, gcRemoves, readAttachments, type AttachmentEvent, type TapAttachment } from '../../cni/attachment-events.js';
import { errorMessage } from '../../lib/errors.js';
import type { Logger } from '../../lib/log.js';
import type { StaticLease } from '../dhcp/lease.js';
import { parseTopology } from '../plan/topology.js';
import { parseVmSpec } from '../spec/index.js';
import type { MigrationHandoff, VmReport, VmRuntime, VmTarget } from './vm-runtime.js';

const NETWORK_STATUS = 'k8s.v1.cni.cncf.io/network-status';

export interface NetnsId {
  ino: number;
  dev: number;
}

/** What the join needs to know of a running VM. */
export interface GuestVm {
  /** `<namespace>/<name>`: the owner of its leases. */
  key: string;
  pod: V1Pod;
  specText: string;
  topology: unknown;
  netnsId: NetnsId | undefined;
}

export interface LeasePlan {
  leases: StaticLease[];
  /** Tap interfaces that get no lease, and why (logged once per VM start). */
  missing: string[];
}

const V4 = /^\d+\.\d+\.\d+\.\d+$/;
const V4_CIDR = /^\d+\.\d+\.\d+\.\d+\/\d+$/;
const DOMAIN = /^(?=.{1,253}\.?$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/;

type LeaseNet = Pick<StaticLease, 'ip' | 'prefixLength' | 'gateway' | 'dns' | 'routes' | 'domain' | 'search'>;

/**
 * What DHCP can tell the guest of an attachment's IPAM result (pure): the first IPv4 address and
 * prefix, the router (the address's gateway, else the default route's), IPv4 DNS servers, domain
 * and search list, and the other IPv4 routes (a route without `gw` goes through the gateway, as
 * CNI has it, or on-link when there is none).
 */
export function ipv4Of(a: TapAttachment): LeaseNet | undefined {
  const v4 = a.ips.find((i) => V4_CIDR.test(i.address));
  if (!v4) return undefined;
  const [ip, prefix] = v4.address.split('/') as [string, string];
  const gateway = v4.gateway ?? a.routes.find((r) => r.dst === '0.0.0.0/0' && r.gw)?.gw;
  const dns = (a.dns?.nameservers ?? []).filter((s) => V4.test(s));
  const routes = a.routes
    .filter((r) => V4_CIDR.test(r.dst) && r.dst !== '0.0.0.0/0' && (r.gw === undefined || V4.test(r.gw)))
    .map((r) => ({ dst: r.dst, gw: r.gw ?? gateway ?? '0.0.0.0' }));
  const domain = a.dns?.domain && DOMAIN.test(a.dns.domain) ? a.dns.domain : undefined;
  const search = (a.dns?.search ?? []).filter((d) => DOMAIN.test(d));
  return {
    ip,
    prefixLength: Number(prefix),
    ...(gateway ? { gateway } : {}),
    ...(dns.length ? { dns } : {}),
    ...(routes.length ? { routes } : {}),
    ...(domain ? { domain } : {}),
    ...(search.length ? { search } : {}),
  };
}

function sameNetns(a: TapAttachment, id: NetnsId | undefined): boolean {
  return !!id && !!a.netnsId && a.netnsId.ino === id.ino && a.netnsId.dev === id.dev;
}

function samePod(a: TapAttachment, pod: V1Pod): boolean {
  if (!a.pod) return true; // a runtime that passes no K8S_POD_*: the namespace alone decides
  const m = pod.metadata ?? {};
  return a.pod.namespace === m.namespace && a.pod.name === m.name && (!a.pod.uid || a.pod.uid === m.uid);
}

/** Tap name per network from Multus' annotation (`<ns>/<nad>` or `<nad>` → interface). */
function tapFromStatus(pod: V1Pod, network: string): string | undefined {
  const raw = pod.metadata?.annotations?.[NETWORK_STATUS];
  if (!raw) return undefined;
  let status: unknown;
  try {
    status = JSON.parse(raw);
  } catch {
    return undefined;
  }
  if (!Array.isArray(status)) return undefined;
  const full = network.includes('/') ? network : `${pod.metadata?.namespace ?? 'default'}/${network}`;
  const hit = (status as Array<{ name?: unknown; interface?: unknown }>).find((s) => s.name === full || s.name === network);
  return typeof hit?.interface === 'string' ? hit.interface : undefined;
}

/**
 * The leases a VM's guest NICs get from the attachments of its pod (pure): one per tap-bound
 * interface whose attachment has an IPv4 address and whose guest MAC the topology (or the spec)
 * names.
 */
export function planGuestLeases(vm: GuestVm, attachments: readonly TapAttachment[]): LeasePlan {
  const out: LeasePlan = { leases: [], missing: [] };
  let spec;
  try {
    spec = parseVmSpec(vm.specText);
  } catch (e) {
    out.missing.push(`spec: ${errorMessage(e)}`);
    return out;
  }
  let devices: Array<{ key: string; mac?: string }> = [];
  try {
    if (vm.topology !== undefined && vm.topology !== null) devices = parseTopology(vm.topology).devices;
  } catch (e) {
    out.missing.push(`topology: ${errorMessage(e)}`);
  }
  const mine = attachments.filter((a) => sameNetns(a, vm.netnsId) && samePod(a, vm.pod));
  const taps = spec.interfaces.filter((i) => i.binding === 'tap');
  for (const i of taps) {
    const mac = (devices.find((d) => d.key === `nic:${i.name}`)?.mac ?? i.mac)?.toLowerCase();
    if (!mac) {
      out.missing.push(`${i.name}: no guest MAC in the topology`);
      continue;
    }
    const short = i.network.includes('/') ? i.network.split('/')[1]! : i.network;
    const tap = tapFromStatus(vm.pod, i.network);
    let att = tap ? mine.find((a) => a.ifname === tap) : undefined;
    if (!att && !tap) {
      const byName = mine.filter((a) => a.network === short);
      if (byName.length === 1) att = byName[0];
      else if (taps.length === 1 && mine.length === 1) att = mine[0];
    }
    if (!att) {
      out.missing.push(`${i.name}: no CNI attachment${tap ? ` ${tap}` : ''} for network ${i.network} in the pod's netns`);
      continue;
    }
    const v4 = ipv4Of(att);
    if (!v4) {
      out.missing.push(`${i.name}: attachment ${att.ifname} has no IPv4 address`);
      continue;
    }
    out.leases.push({
      mac,
      ...v4,
      bridge: att.bridge,
      owner: vm.key,
      hostname: vm.pod.metadata?.name ?? vm.key,
      ...(att.mtu ? { mtu: att.mtu } : {}),
    });
  }
  return out;
}

/** The DHCP server as the join sees it. */
export interface LeaseSink {
  add(lease: StaticLease): void;
  removeMac(mac: string): void;
}

export interface GuestDhcpOptions {
  /** Where the CNI plugin records attachments (`<run dir>/cni-attachments`); null: events only. */
  attachmentDir: string | null;
  log: Logger;
  /** Netns identity by path (tests inject). */
  statNetns?: (p: string) => NetnsId | undefined;
}

function statNetnsId(p: string): NetnsId | undefined {
  try {
    const s = statSync(p);
    return { ino: s.ino, dev: s.dev };
  } catch {
    return undefined;
  }
}

const attKey = (a: { containerId: string; ifname: string }): string => `${a.containerId}:${a.ifname}`;

const sameLease = (a: StaticLease, b: StaticLease): boolean => JSON.stringify(a) === JSON.stringify(b);

export class GuestDhcp {
  private readonly attachments = new Map<string, TapAttachment>();
  private readonly vms = new Map<string, GuestVm>();
  private applied = new Map<string, StaticLease>();
  private sink: LeaseSink | undefined;
  private readonly stat: (p: string) => NetnsId | undefined;

  constructor(private readonly o: GuestDhcpOptions) {
    this.stat = o.statNetns ?? statNetnsId;
    this.rescan(true);
  }

  /**
   * Reloads the recorded attachments: the directory is the truth (the CNI server writes a record
   * before it reports the event; the bundle, running while no server listens, only writes).
   * With `prune`, records whose namespace is gone (or is another one now) are deleted: their DEL
   * may never come, and an inode can be reused.
   */
  rescan(prune = false): void {
    if (!this.o.attachmentDir) return;
    this.attachments.clear();
    for (const a of readAttachments(this.o.attachmentDir)) {
      if (prune) {
        const now = a.netns ? this.stat(a.netns) : undefined;
        if (!now || !a.netnsId || now.ino !== a.netnsId.ino || now.dev !== a.netnsId.dev) {
          try {
            forgetAttachment(this.o.attachmentDir, a);
          } catch {
            /* left for the next start */
          }
          continue;
        }
      }
      this.attachments.set(attKey(a), a);
    }
  }

  /** From the CNI server: a tap attachment made, any attachment deleted, or a network's GC. */
  onAttachment(ev: AttachmentEvent): void {
    if (ev.kind === 'add') this.attachments.set(attKey(ev.attachment), ev.attachment);
    else if (ev.kind === 'del') this.attachments.delete(attKey(ev));
    else for (const [k, a] of this.attachments) if (gcRemoves(ev, a)) this.attachments.delete(k);
    this.sync();
  }

  /** A VM runs here (started, adopted, migrated in). */
  vmUp(t: VmTarget, report: VmReport): void {
    const vm: GuestVm = {
      key: t.key,
      pod: t.pod,
      specText: t.specText,
      topology: report.topology ?? t.topology,
      netnsId: this.stat(report.netns ?? t.sandbox.netns),
    };
    let plan = planGuestLeases(vm, [...this.attachments.values()]);
    if (plan.missing.length) {
      // Recorded by the bundle while this agent's server was not listening: look again once.
      this.rescan();
      plan = planGuestLeases(vm, [...this.attachments.values()]);
    }
    if (plan.missing.length) this.o.log.warn({ pod: t.key, missing: plan.missing }, 'guest NICs without a DHCP lease');
    // Last one up wins a MAC (a migration target on the same node as its source).
    this.vms.delete(t.key);
    this.vms.set(t.key, vm);
    this.sync();
  }

  /** The VM stopped, ended, or moved away. */
  vmDown(key: string): void {
    if (this.vms.delete(key)) this.sync();
  }

  /** The DHCP server (re)started: it gets the whole table; the returned function detaches it. */
  attachSink(sink: LeaseSink): () => void {
    this.sink = sink;
    this.applied = new Map();
    this.sync();
    return () => {
      if (this.sink === sink) this.sink = undefined;
    };
  }

  /** The leases the join wants now. */
  leases(): StaticLease[] {
    return [...this.desired().values()];
  }

  /** Recorded attachments (tests, debugging). */
  knownAttachments(): TapAttachment[] {
    return [...this.attachments.values()];
  }

  private desired(): Map<string, StaticLease> {
    const atts = [...this.attachments.values()];
    const want = new Map<string, StaticLease>();
    for (const vm of this.vms.values()) {
      for (const l of planGuestLeases(vm, atts).leases) {
        want.delete(l.mac);
        want.set(l.mac, l);
      }
    }
    return want;
  }

  private sync(): void {
    const want = this.desired();
    const sink = this.sink;
    if (!sink) return;
    for (const [mac, l] of this.applied) {
      if (!want.has(mac)) {
        sink.removeMac(mac);
        this.o.log.info({ mac, ip: l.ip, pod: l.owner }, 'guest lease removed');
      }
    }
    for (const [mac, l] of want) {
      const had = this.applied.get(mac);
      if (had && sameLease(had, l)) continue;
      try {
        sink.add(l);
        this.o.log.info({ mac, ip: l.ip, bridge: l.bridge, pod: l.owner }, 'guest lease added');
      } catch (e) {
        this.o.log.warn({ mac, ip: l.ip, err: errorMessage(e) }, 'cannot add guest lease');
        want.delete(mac);
      }
    }
    this.applied = want;
  }
}

/**
 * The VM runtime with the guest DHCP told about every VM that comes up or goes: start, adopt,
 * stop and exits pass through; a migration hand-off is wrapped with `wrapMigration`.
 */
export class LeasingRuntime implements VmRuntime {
  query?: (key: string, command: string) => Promise<unknown>;

  constructor(
    readonly inner: VmRuntime,
    private readonly guest: GuestDhcp,
  ) {
    inner.onExit((e) => guest.vmDown(e.key));
    if (inner.query) this.query = (key, command) => inner.query!(key, command);
  }

  async start(t: VmTarget): Promise<VmReport> {
    const r = await this.inner.start(t);
    this.guest.vmUp(t, r);
    return r;
  }

  async adopt(t: VmTarget): Promise<VmReport | undefined> {
    const r = await this.inner.adopt(t);
    if (r) this.guest.vmUp(t, r);
    return r;
  }

  async stop(key: string, timeoutMs: number): Promise<void> {
    try {
      await this.inner.stop(key, timeoutMs);
    } finally {
      this.guest.vmDown(key);
    }
  }

  report(key: string): Promise<VmReport | undefined> {
    return this.inner.report(key);
  }

  onExit(cb: Parameters<VmRuntime['onExit']>[0]): void {
    this.inner.onExit(cb);
  }

  detachAll(): Promise<void> {
    return this.inner.detachAll();
  }

  /** The migration hand-off with the target's VM joined when it runs here. */
  wrapMigration(m: MigrationHandoff): MigrationHandoff {
    return {
      migrateInto: async (...args: Parameters<MigrationHandoff['migrateInto']>) => {
        const r = await m.migrateInto(...args);
        this.guest.vmUp(args[0], r);
        return r;
      },
      migrateOut: (...args: Parameters<MigrationHandoff['migrateOut']>) => m.migrateOut(...args),
    };
  }
}
