import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { AlreadyExists, Aborted, FailedPrecondition, InvalidArgument, NotFound, errorMessage } from '../../lib/errors.js';
import { exec } from '../../lib/exec.js';
import type { Logger } from '../../lib/log.js';
import { DhcpServer } from '../dhcp/server.js';
import { SandboxManager, type PodSandbox } from '../sandbox/sandbox.js';
import type { LocalDevices, DeviceGrant } from './devices.js';
import { NETWORKS_ANNOTATION, parseLocalManifest, type LocalPod, type NetworkSelection } from './manifest.js';
import { DEFAULT_NETWORK, resolveNetworkConfig, splitCidr } from './networks.js';
import { PodStore, type AttachmentRecord, type PodRecord, type RuntimeRecord } from './pod-store.js';
import { podRunDir, type LocalPaths } from './paths.js';
import type { NetworkBackend, VmBackend, VmLiveStatus, VolumeBackend } from './backends.js';
import type { VmShape } from './vm-shape.js';
import { parseVmSpec, podVmInput } from '../spec/index.js';
import { parseTopology } from '../plan/index.js';

/** Carried by a migration target pod: `<namespace>/<source pod>`. */
const MIGRATE_FROM_ANNOTATION = 'vm.podvirt.io/migrate-from';

export interface LocalAgentOptions {
  paths: LocalPaths;
  log: Logger;
  sandboxes: SandboxManager;
  devices: LocalDevices;
  volumes: VolumeBackend;
  networks: NetworkBackend;
  vms: VmBackend;
  dhcp: DhcpServer;
  /** Where NAD configs live (`<name>.json`). */
  networksDir: string;
  /** VM memory overhead added to the guest's RAM for the pod's memory limit when the pod sets none. */
  memoryOverheadBytes?: number;
  /** How many vCPUs and whether the emulator thread gets its own CPU: from agent core's spec parser. */
  vmShape: (specText: string) => VmShape;
}

/** `podvirt status --json`: the contract fields first (cli.md 5.3), then the rest. */
export interface PodStatus {
  name: string;
  phase: string;
  qemuPid: number | undefined;
  vcpuThreads: { index: number; tid: number; cpus: number[] }[];
  serialLog: string | undefined;
  netns: string;
  cgroup: string;
  cpus: number[];
  memoryLimitBytes: number | undefined;
  interfaces: { network: string; ifname: string; mac: string; ip: string | undefined; gateway: string | undefined; bridge: string | undefined }[];
  disks: { volume: string; claim: string; volumeId: string; mode: string; path: string }[];
  devices: Record<string, string[]>;
  topology: unknown;
  startedAt: string;
  qmpSocket: string | undefined;
  serialSocket: string | undefined;
}

type Undo = () => Promise<void>;

/**
 * Local mode's kubelet + container runtime: turns a Pod manifest into a running VM with the real
 * components, in the order a kubelet does it (sandbox, devices, volumes, networks, then the
 * "container": QEMU), undoing what was done when a step fails, and tearing it down on stop.
 * One operation per pod at a time.
 */
export class LocalAgent {
  private readonly store: PodStore;
  private readonly busy = new Set<string>();
  private readonly inFlight = new Set<Promise<void>>();
  private readonly phases = new Map<string, string>();

  constructor(private readonly o: LocalAgentOptions) {
    this.store = new PodStore(o.paths);
  }

  /** Re-adopts VMs that kept running while no agent was up: QMP reconnect, pins verified, leases and devices re-claimed. */
  async adoptAll(): Promise<{ adopted: string[]; lost: string[] }> {
    const adopted: string[] = [];
    const lost: string[] = [];
    for (const name of await this.store.runningNames()) {
      const rt = await this.store.loadRuntime(name);
      const sb = await this.o.sandboxes.get(name);
      if (!rt || !sb) continue;
      let ok = false;
      try {
        ok = await this.o.vms.adopt(name, rt.vm, sb);
      } catch (e) {
        this.o.log.warn({ pod: name, err: errorMessage(e) }, 'cannot re-adopt VM');
      }
      if (ok) {
        try {
          await this.o.devices.allocate(rt.devices);
        } catch (e) {
          this.o.log.warn({ pod: name, err: errorMessage(e) }, 'cannot re-claim devices');
        }
        this.addLeases(name, rt.attachments);
        adopted.push(name);
      } else {
        this.phases.set(name, 'Failed');
        lost.push(name);
      }
    }
    return { adopted, lost };
  }

  async run(manifest: string, migration?: MigrationTargetOptions): Promise<PodStatus> {
    const pod = parseLocalManifest(manifest);
    return this.exclusive(pod.name, () => this.runLocked(pod, manifest, migration));
  }

  async stop(name: string, opts: { deleteVolumes?: boolean; timeoutMs?: number } = {}): Promise<{ stopped: boolean; deletedVolumes: string[] }> {
    const pod = await this.resolve(name);
    return this.exclusive(pod, () => this.stopLocked(pod, opts));
  }

  /**
   * The pod that now runs the VM first started as NAME: NAME itself while it runs, else the running
   * pod a live migration moved it to (followed through `vm.podvirt.io/migrate-from`, also across
   * several migrations), else NAME; so `status`, `console` and `stop` keep working by the VM's name.
   */
  async resolve(name: string): Promise<string> {
    if (await this.store.loadRuntime(name)) return name;
    const seen = new Set<string>([name]);
    let current = name;
    for (;;) {
      let next: string | undefined;
      for (const n of await this.store.runningNames()) {
        const rt = await this.store.loadRuntime(n);
        if (!rt || seen.has(n)) continue;
        let from: string | undefined;
        try {
          from = parseLocalManifest(rt.manifest).annotations[MIGRATE_FROM_ANNOTATION];
        } catch {
          continue;
        }
        if (from !== undefined && from.split('/').pop() === current) next = n;
      }
      if (next === undefined) return current;
      seen.add(next);
      current = next;
    }
  }

  async status(name: string): Promise<PodStatus> {
    name = await this.resolve(name);
    const rt = await this.store.loadRuntime(name);
    if (!rt) {
      if (await this.store.loadPod(name)) throw new NotFound(`pod ${name} is not running (stopped; its volumes and topology are kept)`);
      throw new NotFound(`no pod ${name}`);
    }
    const rec = await this.store.loadPod(name);
    let live: VmLiveStatus | undefined;
    try {
      live = await this.o.vms.status(name);
    } catch (e) {
      this.o.log.warn({ pod: name, err: errorMessage(e) }, 'vm status failed');
    }
    return this.describe(rt, rec, live);
  }

  async ps(): Promise<{ name: string; phase: string; qemuPid: number | undefined; cpus: number[]; ips: string[]; startedAt: string }[]> {
    const out = [];
    for (const name of await this.store.runningNames()) {
      const s = await this.status(name).catch(() => undefined);
      if (!s) continue;
      out.push({ name, phase: s.phase, qemuPid: s.qemuPid, cpus: s.cpus, ips: s.interfaces.map((i) => i.ip ?? '').filter(Boolean), startedAt: s.startedAt });
    }
    return out;
  }

  /** The VM controller of a running pod (hotplug, console): opaque to callers outside agent/. */
  controller(name: string): unknown {
    return this.o.vms.controller(name);
  }

  /** Lets go of every VM without touching it (the agent is shutting down or restarting). */
  async releaseAll(): Promise<void> {
    await this.drain();
    for (const name of await this.store.runningNames()) await this.o.vms.release(name).catch(() => undefined);
  }

  private async exclusive<T>(name: string, fn: () => Promise<T>): Promise<T> {
    if (this.busy.has(name)) throw new Aborted(`pod ${name}: another operation is in progress`);
    this.busy.add(name);
    const op = fn();
    const settled = op.then(() => undefined, () => undefined);
    this.inFlight.add(settled);
    try {
      return await op;
    } finally {
      this.busy.delete(name);
      this.inFlight.delete(settled);
    }
  }

  /** Resolves once no run/stop/hotplug is in progress (a SIGTERM must not cut a stop's volume clean-up short). */
  async drain(): Promise<void> {
    while (this.inFlight.size) await Promise.all([...this.inFlight]);
  }

  private async runLocked(pod: LocalPod, manifest: string, migration?: MigrationTargetOptions): Promise<PodStatus> {
    const existing = await this.store.loadRuntime(pod.name);
    if (existing) {
      const live = await this.o.vms.status(pod.name).catch(() => undefined);
      if (live && live.phase !== 'Failed' && live.phase !== 'Stopped') {
        throw new AlreadyExists(`pod ${pod.name} is already running (qemu pid ${live.qemuPid ?? '?'}, ${live.phase})`);
      }
      throw new FailedPrecondition(`pod ${pod.name} has leftovers of an earlier run (its VM is gone): run "podvirt stop ${pod.name}" first`);
    }
    const shape = this.o.vmShape(pod.vmSpec);
    podVmInput(pod.raw); // disks name volumes the container has, in the right form
    const rec: PodRecord = (await this.store.loadPod(pod.name)) ?? { name: pod.name, createdAt: new Date().toISOString(), claims: {}, macs: {} };
    // A migration target replays the source's topology: same PCI layout, same MACs.
    const topology = rec.topology ?? migration?.topology;
    const undo: Undo[] = [];
    const t0 = performance.now();
    const mark = (step: string) => {
      this.o.log.info({ pod: pod.name, step, ms: Math.round(performance.now() - t0) }, 'run step done');
      migration?.onStep?.(step);
    };
    const cpuCount = Math.max(shape.cpus + shape.extraCpus, pod.cpuLimit ?? 0);
    const memoryBytes = pod.memoryLimitBytes ?? shape.memoryBytes + (this.o.memoryOverheadBytes ?? 768 << 20);
    try {
      const sb = await this.o.sandboxes.create(pod.name, cpuCount, memoryBytes);
      undo.push(() => this.o.sandboxes.destroy(pod.name));
      mark('sandbox');
      const rt: RuntimeRecord = {
        name: pod.name,
        manifest,
        startedAt: new Date().toISOString(),
        netnsName: sb.netnsName,
        netns: sb.netns,
        cgroup: sb.cgroup.display,
        cgroupProcs: sb.cgroup.procs,
        cpus: sb.cpus,
        memoryBytes: sb.memoryBytes,
        attachments: [],
        volumes: [],
        devices: {},
      };
      await fs.mkdir(podRunDir(this.o.paths, pod.name), { recursive: true, mode: 0o755 });
      undo.push(() => this.store.deleteRuntime(pod.name));
      await this.store.saveRuntime(rt);
      migration?.onSandbox?.(pod.name, sb.netns);

      // Devices: what the pod asks for, plus what its VM needs (a tap needs /dev/net/tun, KVM /dev/kvm).
      const want: Record<string, number> = { ...pod.deviceResources };
      if (shape.wantsTun) want['devices.kubevirt.io/tun'] = Math.max(want['devices.kubevirt.io/tun'] ?? 0, 1);
      if (shape.wantsKvm) want['devices.kubevirt.io/kvm'] = Math.max(want['devices.kubevirt.io/kvm'] ?? 0, 1);
      let grant: DeviceGrant | undefined;
      const devices = async () => {
        const g = await this.o.devices.allocate(want);
        undo.push(async () => this.o.devices.release(g.ids));
        grant = g;
        rt.devices = g.ids;
        await this.store.saveRuntime(rt);
        await this.o.sandboxes.allowDevices(pod.name, g.devices.map((d) => d.hostPath));
        mark('devices');
      };

      // Devices, volumes and networks do not depend on each other: set them up side by side (a
      // kubelet's device manager, volume manager and the runtime's network setup do not wait for
      // each other either).
      const volumes = async () => {
        // Provision (kept across runs for PVCs), stage, publish.
        for (const claim of pod.claims) {
          const c = await this.o.volumes.provision(claim, rec.claims[claim.name]);
          rec.claims[claim.name] = c;
          await this.store.savePod(rec);
        }
        for (const v of pod.volumes) {
          const att = await this.o.volumes.attach(pod.name, v.name, rec.claims[v.claim]!, this.o.vms.uid, this.o.vms.gid);
          undo.push(() => this.o.volumes.detach(att));
          rt.volumes.push(att);
          await this.store.saveRuntime(rt);
          if (att.volumeMode === 'Block') await this.o.sandboxes.allowDevices(pod.name, [att.publishPath]);
        }
        mark('volumes');
      };

      // Networks: CNI ADD per selection into the pod netns; the tap keeps its MAC across runs.
      // The pod network (`pod` in the VM spec) is the embedded default network, as eth0.
      const selections: NetworkSelection[] = [...pod.networks];
      const podNet: NetworkSelection = { name: DEFAULT_NETWORK, namespace: undefined, interface: 'eth0', mac: undefined, ips: undefined };
      if (shape.networks.includes('pod')) selections.unshift(podNet);
      for (const n of shape.networks) {
        if (n !== 'pod' && !selections.some((x) => x.name === n)) {
          throw new InvalidArgument(`VM interface network "${n}" is not attached to the pod (add it to ${NETWORKS_ANNOTATION}, or use "pod")`);
        }
      }
      const networks = async () => {
        const containerId = `podvirt-${pod.name}-${randomBytes(4).toString('hex')}`;
        for (const [i, sel] of selections.entries()) {
          const ifname = sel.interface ?? `net${i + 1}`;
          const config = await resolveNetworkConfig(sel.name, pod.nads, this.o.networksDir, path.join(this.o.paths.stateDir, 'ipam'));
          const key = `${sel.name}/${ifname}`;
          const added = await this.o.networks.add({
            pod,
            containerId,
            netns: sb.netns,
            selection: sel,
            ifname,
            config,
            mac: sel.mac ?? topologyMac(topology, pod.vmSpec, sel === podNet ? 'pod' : sel.name) ?? rec.macs[key],
            uid: this.o.vms.uid,
            gid: this.o.vms.gid,
            ...(migration ? { migrationTarget: true } : {}),
          });
          const att = { ...added, vmNetwork: podNet === sel ? 'pod' : sel.name };
          undo.push(() => this.o.networks.del(att, sb.netns));
          rt.attachments.push(att);
          rec.macs[key] = att.mac;
          await this.store.saveRuntime(rt);
          await this.store.savePod(rec);
          await this.ensureGateway(att);
        }
        mark('networks');
      };
      // Both run to the end before a failure is raised, so the rollback sees everything they made.
      const settled = await Promise.allSettled([devices(), volumes(), networks()]);
      for (const r of settled) if (r.status === 'rejected') throw r.reason;
      // The branches saved concurrently: the last word is the complete record.
      await this.store.saveRuntime(rt);
      await this.store.savePod(rec);

      // The "container": QEMU in the sandbox, pinned, with the recorded topology replayed.
      const started = await this.o.vms.start({
        pod,
        runDir: podRunDir(this.o.paths, pod.name),
        sandbox: sb,
        volumes: rt.volumes,
        attachments: rt.attachments,
        devices: grant!,
        topology,
        ...(migration ? { incoming: true } : {}),
        onStep: (step) => mark(`vm: ${step}`),
      });
      undo.push(() => this.o.vms.stop(pod.name, 5000));
      mark('vm');
      // Leases are keyed by the guest's MACs, which the VM's topology fixes.
      for (const a of rt.attachments) {
        const m = topologyMac(started.topology, pod.vmSpec, a.vmNetwork);
        if (m) a.guestMac = m;
        // The guest keeps the address it has: its lease follows it to the target.
        const kept = migration?.guestIps[a.vmNetwork];
        if (kept) a.ip = kept;
      }
      this.addLeases(pod.name, rt.attachments);
      undo.push(async () => this.o.dhcp.removeOwner(pod.name));
      rt.vm = started.handle;
      await this.store.saveRuntime(rt);
      if (rec.topology === undefined) {
        rec.topology = started.topology;
        await this.store.savePod(rec);
      }
      this.phases.delete(pod.name);
      // A migration target is paused until the migration ends: its live status (QMP, threads)
      // tells the orchestrator nothing it needs, so it gets the recorded one.
      const status = migration ? this.describe(rt, rec, undefined) : await this.status(pod.name);
      mark('status');
      return status;
    } catch (e) {
      this.o.log.warn({ pod: pod.name, err: errorMessage(e) }, 'run failed, rolling back');
      for (const u of undo.reverse()) {
        await u().catch((ue: unknown) => this.o.log.warn({ pod: pod.name, err: errorMessage(ue) }, 'rollback step failed'));
      }
      for (const c of pod.claims.filter((x) => x.ephemeral)) {
        const cr = rec.claims[c.name];
        if (cr) await this.o.volumes.delete(cr).catch(() => undefined);
        delete rec.claims[c.name];
      }
      if (Object.keys(rec.claims).length || rec.topology !== undefined) await this.store.savePod(rec).catch(() => undefined);
      else await this.store.deletePod(pod.name).catch(() => undefined);
      throw e;
    }
  }

  /**
   * Hotplugs a disk backed by a new claim: CSI provision + stage + publish (the published node reaches
   * QEMU's mount namespace through the shared run dir), devices cgroup, then device_add through the VM
   * controller. The claim is recorded with the pod (kept across stop like any PVC unless ephemeral).
   */
  async hotplugDisk(name: string, d: { disk: string; sizeBytes: number; ephemeral?: boolean }): Promise<unknown> {
    return this.exclusive(name, async () => {
      const rt = await this.running(name);
      const rec = (await this.store.loadPod(name))!;
      const claim = await this.o.volumes.provision(
        { name: `${name}-${d.disk}`, sizeBytes: d.sizeBytes, volumeMode: 'Block', ephemeral: d.ephemeral ?? true, parameters: {} },
        rec.claims[`${name}-${d.disk}`],
      );
      rec.claims[claim.name] = claim;
      await this.store.savePod(rec);
      const att = await this.o.volumes.attach(name, `hp-${d.disk}`, claim, this.o.vms.uid, this.o.vms.gid);
      try {
        await this.o.sandboxes.allowDevices(name, [att.publishPath]);
        const dev = await this.o.vms.hotplugDisk(name, { name: d.disk, file: att.publishPath, block: true });
        rt.volumes.push(att);
        await this.store.saveRuntime(rt);
        return dev;
      } catch (e) {
        await this.o.volumes.detach(att).catch(() => undefined);
        throw e;
      }
    });
  }

  /** Unplugs a hotplugged disk (waits for the guest's DEVICE_DELETED), then unpublishes its volume. */
  async unplugDisk(name: string, disk: string, timeoutMs?: number): Promise<void> {
    return this.exclusive(name, async () => {
      const rt = await this.running(name);
      await this.o.vms.unplugDisk(name, disk, timeoutMs);
      const i = rt.volumes.findIndex((v) => v.volume === `hp-${disk}`);
      if (i >= 0) {
        await this.o.volumes.detach(rt.volumes[i]!);
        rt.volumes.splice(i, 1);
        await this.store.saveRuntime(rt);
      }
    });
  }

  /** Hotplugs a NIC on a new attachment: CNI ADD into the pod netns, netdev_add + device_add, DHCP lease. */
  async hotplugNic(name: string, n: { iface: string; network: string }): Promise<unknown> {
    return this.exclusive(name, async () => {
      const rt = await this.running(name);
      const pod = parseLocalManifest(rt.manifest);
      const config = await resolveNetworkConfig(n.network, pod.nads, this.o.networksDir, path.join(this.o.paths.stateDir, 'ipam'));
      const ifname = `hp${rt.attachments.length + 1}`;
      const containerId = rt.attachments[0]?.containerId ?? `podvirt-${name}-${randomBytes(4).toString('hex')}`;
      const sel: NetworkSelection = { name: n.network, namespace: undefined, interface: ifname, mac: undefined, ips: undefined };
      const added = await this.o.networks.add({ pod, containerId, netns: rt.netns, selection: sel, ifname, config, mac: undefined, uid: this.o.vms.uid, gid: this.o.vms.gid });
      const att: AttachmentRecord = { ...added, vmNetwork: `hotplug:${n.iface}` };
      try {
        await this.ensureGateway(att);
        const dev = (await this.o.vms.hotplugNic(name, { name: n.iface, tap: ifname })) as { mac?: string };
        if (dev.mac) att.guestMac = dev.mac;
        rt.attachments.push(att);
        await this.store.saveRuntime(rt);
        this.addLeases(name, [att]);
        return dev;
      } catch (e) {
        await this.o.networks.del(att, rt.netns).catch(() => undefined);
        throw e;
      }
    });
  }

  async unplugNic(name: string, iface: string, timeoutMs?: number): Promise<void> {
    return this.exclusive(name, async () => {
      const rt = await this.running(name);
      await this.o.vms.unplugNic(name, iface, timeoutMs);
      const i = rt.attachments.findIndex((a) => a.vmNetwork === `hotplug:${iface}`);
      if (i >= 0) {
        const a = rt.attachments[i]!;
        this.o.dhcp.removeMac(a.guestMac ?? a.mac);
        await this.o.networks.del(a, rt.netns);
        rt.attachments.splice(i, 1);
        await this.store.saveRuntime(rt);
      }
    });
  }

  private async running(name: string): Promise<RuntimeRecord> {
    const rt = await this.store.loadRuntime(name);
    if (!rt) throw new NotFound(`pod ${name} is not running`);
    return rt;
  }

  private async stopLocked(name: string, opts: { deleteVolumes?: boolean; timeoutMs?: number }): Promise<{ stopped: boolean; deletedVolumes: string[] }> {
    const rt = await this.store.loadRuntime(name);
    const rec = await this.store.loadPod(name);
    if (!rt && !rec && !(await this.o.sandboxes.get(name))) throw new NotFound(`no pod ${name}`);
    const errors: string[] = [];
    const t0 = performance.now();
    const step = async (what: string, fn: () => Promise<void>) => {
      try {
        await fn();
      } catch (e) {
        errors.push(`${what}: ${errorMessage(e)}`);
      }
      this.o.log.debug({ pod: name, step: what, ms: Math.round(performance.now() - t0) }, 'stop step done');
    };
    if (rt) {
      await step('vm', () => this.o.vms.stop(name, opts.timeoutMs ?? 30_000));
      this.o.dhcp.removeOwner(name);
      // With QEMU gone nothing uses the attachments and volumes any more: release them side by side.
      await Promise.all([
        ...rt.attachments.map((a) => step(`network ${a.network}`, () => this.o.networks.del(a, rt.netns))),
        ...rt.volumes.map((v) => step(`volume ${v.volume}`, () => this.o.volumes.detach(v))),
      ]);
      this.o.devices.release(rt.devices);
    }
    const deleted: string[] = [];
    const manifestClaims = rt ? parseLocalManifest(rt.manifest).claims : [];
    const doomed = Object.values(rec?.claims ?? {}).filter((c) => c.ephemeral || opts.deleteVolumes || manifestClaims.some((m) => m.name === c.name && m.ephemeral));
    // Detached volumes and the sandbox do not depend on each other.
    // A claim whose delete failed stays recorded, so the "run stop again" the error asks for retries it.
    const gone = new Set<string>();
    await Promise.all([
      step('sandbox', () => this.o.sandboxes.destroy(name)),
      ...doomed.map((c) => step(`delete volume ${c.name}`, async () => void (await this.o.volumes.delete(c), gone.add(c.name)))),
    ]);
    if (rec) {
      for (const c of doomed) {
        if (!gone.has(c.name)) continue;
        delete rec.claims[c.name];
        deleted.push(c.name);
      }
      await this.store.savePod(rec);
    }
    if (errors.length) throw new FailedPrecondition(`stop ${name} left work undone (run stop again): ${errors.join('; ')}`);
    await this.store.deleteRuntime(name);
    this.phases.delete(name);
    return { stopped: rt !== undefined, deletedVolumes: deleted };
  }

  /** Local mode plays the network provider: the bridge holds the subnet's gateway address (DHCP answers from it). */
  private async ensureGateway(a: AttachmentRecord): Promise<void> {
    if (!a.bridge || !a.gateway || !a.ip) return;
    const { prefix } = splitCidr(a.ip);
    const have = await exec('ip', ['-j', '-4', 'addr', 'show', 'dev', a.bridge]);
    const info = JSON.parse(have.stdout || '[]') as { addr_info?: { local: string }[] }[];
    if (!info[0]?.addr_info?.some((x) => x.local === a.gateway)) {
      await exec('ip', ['addr', 'add', `${a.gateway}/${prefix}`, 'dev', a.bridge]);
    }
    await exec('ip', ['link', 'set', a.bridge, 'up']);
  }

  private addLeases(owner: string, atts: AttachmentRecord[]): void {
    for (const a of atts) {
      if (!a.ip || !a.bridge) continue;
      const { ip, prefix } = splitCidr(a.ip);
      this.o.dhcp.add({
        mac: a.guestMac ?? a.mac,
        ip,
        prefixLength: prefix,
        bridge: a.bridge,
        owner,
        hostname: owner,
        ...(a.gateway ? { gateway: a.gateway } : {}),
      });
    }
  }

  private describe(rt: RuntimeRecord, rec: PodRecord | undefined, live: VmLiveStatus | undefined): PodStatus {
    const sb: Pick<PodSandbox, 'netns'> = { netns: rt.netns };
    return {
      name: rt.name,
      phase: this.phases.get(rt.name) ?? live?.phase ?? 'Unknown',
      qemuPid: live?.qemuPid,
      vcpuThreads: live?.vcpuThreads ?? [],
      serialLog: live?.serialLog,
      netns: sb.netns,
      cgroup: rt.cgroup,
      cpus: rt.cpus,
      memoryLimitBytes: rt.memoryBytes,
      interfaces: rt.attachments.map((a) => ({ network: a.network, ifname: a.ifname, mac: a.mac, ip: a.ip, gateway: a.gateway, bridge: a.bridge })),
      disks: rt.volumes.map((v) => ({ volume: v.volume, claim: v.claim, volumeId: v.volumeId, mode: v.volumeMode, path: v.publishPath })),
      devices: rt.devices,
      topology: live?.topology ?? rec?.topology,
      startedAt: rt.startedAt,
      qmpSocket: live?.qmpSocket,
      serialSocket: live?.serialSocket,
    };
  }
}

/** Live migration (agent/migration/local-host.ts): run a pod as the target of a migration. */
export interface MigrationTargetOptions {
  /** The source's recorded topology, replayed. */
  topology: unknown;
  /** The guest's current address per VM network (`pod` or a NAD name): its DHCP lease moves with it. */
  guestIps: Record<string, string | undefined>;
  /** Called as each step of the run ends (the migration's timing breakdown). */
  onStep?: (step: string) => void;
  /** Called once the pod's sandbox exists and is recorded (the migration network can go in meanwhile). */
  onSandbox?: (pod: string, netns: string) => void;
}

/** The MAC the VM's topology gives the interface attached to `network` (`pod` or a NAD name). */
export function topologyMac(topology: unknown, specText: string, network: string): string | undefined {
  if (topology === undefined || topology === null) return undefined;
  let iface: string | undefined;
  try {
    iface = parseVmSpec(specText).interfaces.find((i) => i.network === network)?.name;
  } catch {
    return undefined;
  }
  if (!iface) return undefined;
  try {
    return parseTopology(topology).devices.find((d) => d.key === `nic:${iface}`)?.mac;
  } catch {
    return undefined;
  }
}
