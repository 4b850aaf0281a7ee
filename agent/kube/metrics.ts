/**
 * Prometheus metrics of the cluster agent. Per VM: vCPU time (from /proc/<qemu>/task/<tid>/stat),
 * memory (QEMU's RSS), disk counters (QMP `query-blockstats`), network counters (the pod netns'
 * interfaces, read as /proc/<qemu>/net/dev so no namespace is entered), migration figures. Per
 * node: devices advertised (Node capacity) and allocated (requests of this node's running pods),
 * volumes and pool capacity (from a provider, e.g. the CSI driver). Everything is read at scrape
 * time, so nothing goes stale between scrapes.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { V1Node, V1Pod } from '@kubernetes/client-node';

export interface VmMetricSource {
  namespace: string;
  pod: string;
  qemuPid: number;
  vcpuThreads: { index: number; tid: number }[];
  /** `query-blockstats` result, when QMP is reachable. */
  blockstats?: () => Promise<unknown>;
}

export interface VolumeFigures {
  volumes: number;
  capacityBytes: number;
  availableBytes: number;
}

export interface MetricsSources {
  vms: () => VmMetricSource[];
  /** Cumulative reconciler figures. */
  stats?: () => { starts: number; adoptions: number; stops: number; failures: number; migrations: number };
  pods: () => readonly V1Pod[];
  node: () => V1Node | undefined;
  volumes?: () => Promise<VolumeFigures | undefined>;
  procRoot?: string;
}

/** Clock ticks per second for /proc stat times (USER_HZ, 100 on every mainstream Linux build). */
const USER_HZ = 100;
const DEVICE_PREFIXES = ['devices.kubevirt.io/', 'nvidia.com/'];

/** utime+stime of a task, in seconds, from its `stat` line (pure). */
export function cpuSecondsFromStat(stat: string): number {
  // comm (field 2) may contain spaces and parentheses: split after the last ')'.
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
  return (Number(rest[11]) + Number(rest[12])) / USER_HZ;
}

/** Interface counters from /proc/net/dev text (pure). */
export function parseNetDev(text: string): { iface: string; rxBytes: number; rxPackets: number; txBytes: number; txPackets: number }[] {
  const out = [];
  for (const line of text.split('\n').slice(2)) {
    const m = /^\s*([^:]+):\s*(.*)$/.exec(line);
    if (!m) continue;
    const f = m[2]!.trim().split(/\s+/).map(Number);
    out.push({ iface: m[1]!.trim(), rxBytes: f[0]!, rxPackets: f[1]!, txBytes: f[8]!, txPackets: f[9]! });
  }
  return out;
}

interface BlockStat {
  device?: string;
  qdev?: string;
  'node-name'?: string;
  stats: { rd_bytes: number; wr_bytes: number; rd_operations: number; wr_operations: number };
}

/** Sum of the resource requests (limits for extended resources) of running pods (pure). */
export function allocatedDevices(pods: readonly V1Pod[]): Map<string, number> {
  const out = new Map<string, number>();
  for (const p of pods) {
    const phase = p.status?.phase;
    if (phase === 'Succeeded' || phase === 'Failed') continue;
    for (const c of [...(p.spec?.containers ?? []), ...(p.spec?.initContainers ?? [])]) {
      const res = { ...(c.resources?.requests ?? {}), ...(c.resources?.limits ?? {}) };
      for (const [name, q] of Object.entries(res)) {
        if (!DEVICE_PREFIXES.some((x) => name.startsWith(x))) continue;
        out.set(name, (out.get(name) ?? 0) + Number(q));
      }
    }
  }
  return out;
}

export class AgentMetrics {
  readonly registry = new Registry();
  readonly watchRestarts: Counter;
  readonly migrationDowntime: Gauge;
  readonly migrationTotalTime: Gauge;
  readonly migrationTransferred: Gauge;
  readonly migrationRemaining: Gauge;
  readonly serverUp: Gauge;

  constructor(src: MetricsSources) {
    const r = this.registry;
    const procRoot = src.procRoot ?? '/proc';
    collectDefaultMetrics({ register: r, prefix: 'podvirt_agent_' });
    const stats = src.stats ?? (() => ({ starts: 0, adoptions: 0, stops: 0, failures: 0, migrations: 0 }));
    new Counter({
      name: 'podvirt_vm_starts_total',
      help: 'VMs brought up by this agent, by how (started, adopted after an agent restart, migrated in)',
      registers: [r],
      labelNames: ['how'],
      collect() {
        const s = stats();
        this.reset();
        this.inc({ how: 'started' }, s.starts);
        this.inc({ how: 'adopted' }, s.adoptions);
        this.inc({ how: 'migrated' }, s.migrations);
      },
    });
    new Counter({ name: 'podvirt_vm_stops_total', help: 'VMs stopped by this agent', registers: [r], collect() { this.reset(); this.inc(stats().stops); } });
    new Counter({ name: 'podvirt_vm_failures_total', help: 'VM start failures and crashes', registers: [r], collect() { this.reset(); this.inc(stats().failures); } });
    this.watchRestarts = new Counter({ name: 'podvirt_agent_watch_restarts_total', help: 'Pod watch restarts after errors', registers: [r] });
    const migLabels = ['namespace', 'pod'];
    this.migrationDowntime = new Gauge({ name: 'podvirt_vm_migration_downtime_seconds', help: 'Downtime of the last migration into the VM', registers: [r], labelNames: migLabels });
    this.migrationTotalTime = new Gauge({ name: 'podvirt_vm_migration_total_time_seconds', help: 'Duration of the last migration into the VM', registers: [r], labelNames: migLabels });
    this.migrationTransferred = new Gauge({ name: 'podvirt_vm_migration_transferred_bytes', help: 'RAM transferred by the current or last migration', registers: [r], labelNames: migLabels });
    this.migrationRemaining = new Gauge({ name: 'podvirt_vm_migration_remaining_bytes', help: 'RAM still to transfer in the current migration', registers: [r], labelNames: migLabels });
    this.serverUp = new Gauge({ name: 'podvirt_agent_server_up', help: 'In-process servers (1 = serving)', registers: [r], labelNames: ['server'] });

    // One gathering pass serves every per-VM metric of a scrape (prom-client awaits each metric's
    // collect; the first call gathers, the others share its promise).
    let scrape: Promise<void> | undefined;
    const collect = () => (scrape ??= gather().finally(() => setImmediate(() => (scrape = undefined))));
    const vmInfo = new Gauge({ name: 'podvirt_vm_info', help: 'A VM run by this agent (value 1)', registers: [r], labelNames: ['namespace', 'pod', 'qemu_pid'], collect });
    const vcpu = new Counter({ name: 'podvirt_vm_vcpu_seconds_total', help: 'CPU time of each vCPU thread', registers: [r], labelNames: ['namespace', 'pod', 'vcpu'], collect });
    const cpuAll = new Counter({ name: 'podvirt_vm_cpu_seconds_total', help: 'CPU time of the whole QEMU process', registers: [r], labelNames: ['namespace', 'pod'], collect });
    const rss = new Gauge({ name: 'podvirt_vm_memory_rss_bytes', help: 'Resident memory of QEMU', registers: [r], labelNames: ['namespace', 'pod'], collect });
    const blkLabels = ['namespace', 'pod', 'drive'];
    const rdB = new Counter({ name: 'podvirt_vm_disk_read_bytes_total', help: 'Bytes read by the guest per drive', registers: [r], labelNames: blkLabels, collect });
    const wrB = new Counter({ name: 'podvirt_vm_disk_written_bytes_total', help: 'Bytes written by the guest per drive', registers: [r], labelNames: blkLabels, collect });
    const rdO = new Counter({ name: 'podvirt_vm_disk_read_ops_total', help: 'Read requests per drive', registers: [r], labelNames: blkLabels, collect });
    const wrO = new Counter({ name: 'podvirt_vm_disk_write_ops_total', help: 'Write requests per drive', registers: [r], labelNames: blkLabels, collect });
    const netLabels = ['namespace', 'pod', 'interface'];
    const rxB = new Counter({ name: 'podvirt_vm_network_receive_bytes_total', help: 'Bytes received on the pod netns interfaces (host side of the guest NICs)', registers: [r], labelNames: netLabels, collect });
    const txB = new Counter({ name: 'podvirt_vm_network_transmit_bytes_total', help: 'Bytes sent on the pod netns interfaces', registers: [r], labelNames: netLabels, collect });

    async function gather(): Promise<void> {
      for (const m of [vmInfo, vcpu, cpuAll, rss, rdB, wrB, rdO, wrO, rxB, txB]) m.reset();
      for (const vm of src.vms()) {
        const l = { namespace: vm.namespace, pod: vm.pod };
        vmInfo.set({ ...l, qemu_pid: String(vm.qemuPid) }, 1);
        const base = path.join(procRoot, String(vm.qemuPid));
        for (const t of vm.vcpuThreads) {
          const stat = await readOr(path.join(base, 'task', String(t.tid), 'stat'));
          if (stat) vcpu.inc({ ...l, vcpu: String(t.index) }, cpuSecondsFromStat(stat));
        }
        const pstat = await readOr(path.join(base, 'stat'));
        if (pstat) cpuAll.inc(l, cpuSecondsFromStat(pstat));
        const status = await readOr(path.join(base, 'status'));
        const m = status ? /^VmRSS:\s+(\d+) kB/m.exec(status) : null;
        if (m) rss.set(l, Number(m[1]) * 1024);
        const netdev = await readOr(path.join(base, 'net', 'dev'));
        for (const n of netdev ? parseNetDev(netdev) : []) {
          if (n.iface === 'lo') continue;
          rxB.inc({ ...l, interface: n.iface }, n.rxBytes);
          txB.inc({ ...l, interface: n.iface }, n.txBytes);
        }
        if (vm.blockstats) {
          try {
            const stats = (await vm.blockstats()) as BlockStat[];
            for (const b of stats) {
              const drive = b.qdev || b.device || b['node-name'] || 'unknown';
              rdB.inc({ ...l, drive }, b.stats.rd_bytes);
              wrB.inc({ ...l, drive }, b.stats.wr_bytes);
              rdO.inc({ ...l, drive }, b.stats.rd_operations);
              wrO.inc({ ...l, drive }, b.stats.wr_operations);
            }
          } catch {
            /* QMP busy or gone: this scrape goes without disk figures */
          }
        }
      }
    }

    const advertised = new Gauge({
      name: 'podvirt_node_devices_advertised',
      help: 'Device resources the node advertises (Node status capacity)',
      registers: [r],
      labelNames: ['resource'],
      collect() {
        this.reset();
        const cap = src.node()?.status?.capacity ?? {};
        for (const [k, v] of Object.entries(cap)) if (DEVICE_PREFIXES.some((x) => k.startsWith(x))) this.set({ resource: k }, Number(v));
      },
    });
    void advertised;
    new Gauge({
      name: 'podvirt_node_devices_allocated',
      help: 'Device resources held by this node’s pods',
      registers: [r],
      labelNames: ['resource'],
      collect() {
        this.reset();
        for (const [k, v] of allocatedDevices(src.pods())) this.set({ resource: k }, v);
      },
    });
    new Gauge({
      name: 'podvirt_node_vms',
      help: 'VMs running on this node',
      registers: [r],
      collect() {
        this.set(src.vms().length);
      },
    });
    const vol = { volumes: 0, capacityBytes: 0, availableBytes: 0 };
    let volScrape: Promise<void> | undefined;
    const volOnce = () =>
      (volScrape ??= (async () => {
        const v = src.volumes ? await src.volumes().catch(() => undefined) : undefined;
        Object.assign(vol, v ?? { volumes: NaN, capacityBytes: NaN, availableBytes: NaN });
      })().finally(() => setImmediate(() => (volScrape = undefined))));
    new Gauge({ name: 'podvirt_node_volumes', help: 'Volumes provisioned on this node by the CSI driver', registers: [r], async collect() { await volOnce(); this.set(vol.volumes); } });
    new Gauge({ name: 'podvirt_node_pool_capacity_bytes', help: 'Size of the node’s volume pool', registers: [r], async collect() { await volOnce(); this.set(vol.capacityBytes); } });
    new Gauge({ name: 'podvirt_node_pool_available_bytes', help: 'Free space in the node’s volume pool', registers: [r], async collect() { await volOnce(); this.set(vol.availableBytes); } });
  }

  async text(): Promise<string> {
    return this.registry.metrics();
  }
}

async function readOr(file: string): Promise<string | undefined> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch {
    return undefined;
  }
}
