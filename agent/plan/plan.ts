import { createHash } from 'node:crypto';
import * as path from 'node:path';
import { FailedPrecondition, InvalidArgument } from '../../lib/errors.js';
import { formatCpuList } from '../../lib/sysfs.js';
import type { VmDiskSpec, VmSpec } from '../spec/vm-spec.js';
import { cellHostNodes, checkHugepages, guestThreadsPerCore, planCells, planPins } from './cpu-numa.js';
import { buildArgv } from './argv.js';
import { hostDevices } from './devices.js';
import { ensureFreePorts, parseTopology, placePciDevice } from './topology.js';
import type { PlanOptions, PodFacts, TopologyDevice, VmPlan, VmTopology } from './types.js';

/** Unix socket paths are limited to 107 bytes plus NUL. */
const MAX_SOCKET_PATH = 107;

/** A device the spec and facts ask for, before it has an address. */
interface Wanted {
  key: string;
  kind: TopologyDevice['kind'];
  id: string;
  driver: string;
  /** Where the spec field lives, for error messages. */
  field: string;
  mac?: string;
  macExplicit?: boolean;
  serial?: string;
  serialExplicit?: boolean;
  scsi?: boolean;
}

/**
 * VM spec + pod facts → QEMU argv, pin map and device topology. Pure: no host access.
 * With a stored topology the guest hardware is replayed exactly (machine type, every PCI
 * address, MACs, serials); devices new in the spec get free root ports; devices gone from
 * the spec free theirs; a spec that contradicts the stored hardware is refused.
 */
export function planVm(spec: VmSpec, facts: PodFacts, opts: PlanOptions = {}): VmPlan {
  const notes: string[] = [];
  const accel = resolveAccel(spec.accel, facts.kvmUsable);
  const stored = facts.topology !== undefined && facts.topology !== null ? parseTopology(facts.topology) : undefined;
  const conflicts: string[] = [];

  const alias = facts.machineAliases[spec.machine];
  if (!alias) throw new FailedPrecondition(`spec.machine: this QEMU has no machine type "${spec.machine}"`);
  let machine = alias;
  if (stored) {
    if (spec.machine !== 'q35' && spec.machine !== stored.machine) conflicts.push(`spec.machine: ${spec.machine}, but the VM was created as ${stored.machine}`);
    machine = stored.machine;
    if (!facts.machineAliases[machine]) throw new FailedPrecondition(`the VM was created as ${machine}, which this QEMU does not offer`);
  }
  let cpuModel = spec.cpuModel ?? stored?.cpuModel ?? (accel === 'kvm' ? 'host' : 'max');
  if (stored && spec.cpuModel !== undefined && spec.cpuModel !== stored.cpuModel) {
    conflicts.push(`spec.cpuModel: ${spec.cpuModel}, but the VM was created with ${stored.cpuModel}`);
    cpuModel = stored.cpuModel;
  }
  if (cpuModel === 'host' && accel !== 'kvm') {
    throw new FailedPrecondition(`cpu model "host" needs KVM, but this VM runs under ${accel}${stored ? ' (the stored topology says host)' : ''}`);
  }

  const wanted = wantedDevices(spec, facts);
  let topo: VmTopology = {
    version: 1,
    machine,
    cpuModel,
    cpus: spec.cpus,
    memoryBytes: spec.memory,
    numaCells: [],
    rootPorts: stored ? stored.rootPorts.map((p) => ({ ...p })) : [],
    devices: [],
  };
  const fresh: Wanted[] = [];
  for (const w of wanted) {
    const old = stored?.devices.find((d) => d.key === w.key);
    if (!old) {
      fresh.push(w);
      continue;
    }
    if (old.driver !== w.driver) conflicts.push(`${w.field}: is ${w.driver} now, but the VM has it as ${old.driver}`);
    if (w.macExplicit && w.mac?.toLowerCase() !== old.mac?.toLowerCase()) conflicts.push(`${w.field}.mac: ${w.mac}, but the VM has ${old.mac}`);
    if (w.serialExplicit && w.serial !== old.serial) conflicts.push(`${w.field}.serial: ${w.serial}, but the VM has ${old.serial}`);
    const { hotplugged: _h, ...keep } = old;
    topo.devices.push(keep);
  }
  if (conflicts.length) {
    throw new FailedPrecondition(`the spec is incompatible with the VM's stored topology: ${conflicts.join('; ')}`, { details: { conflicts } });
  }
  for (const d of stored?.devices ?? []) {
    if (!wanted.some((w) => w.key === d.key)) notes.push(`${d.key} is no longer in the spec: its slot on ${d.bus} is free`);
  }
  for (const w of fresh) {
    if (stored) notes.push(`${w.key} is new: placed in a free slot`);
    if (w.scsi) {
      const used = new Set(topo.devices.filter((d) => d.bus === 'scsi0.0').map((d) => d.addr));
      let id = 0;
      while (used.has(id)) id++;
      topo.devices.push(dev(w, 'scsi0.0', id));
    } else {
      topo = placePciDevice(topo, dev(w, '', 0)).topology;
    }
  }
  topo.rootPorts = ensureFreePorts(topo, spec.hotplugPorts);
  // Stable order: ports by chassis, devices by key order of the spec (wanted order).
  topo.rootPorts.sort((a, b) => a.chassis - b.chassis);
  const order = new Map(wanted.map((w, i) => [w.key, i]));
  topo.devices.sort((a, b) => (order.get(a.key) ?? 1e9) - (order.get(b.key) ?? 1e9));

  const reuseCells =
    stored !== undefined && stored.cpus === spec.cpus && stored.memoryBytes === spec.memory && stored.numaCells.length > 0;
  if (stored && !reuseCells) notes.push('cpus or memory changed: guest NUMA cells recomputed');
  const pins = planPins(spec.cpus, facts.cpuset, facts.numa, spec.isolateEmulatorThread, reuseCells ? stored!.numaCells : undefined);
  const cells = reuseCells ? stored!.numaCells.map((c) => ({ ...c, vcpus: [...c.vcpus] })) : planCells(spec.memory, pins, spec.hugepages?.pageSize);
  topo.numaCells = cells;
  // Guest SMT mirrors whole host cores at first start; replayed after (guest ABI), recomputed with the cpus.
  const threads = reuseCells ? (stored!.threadsPerCore ?? 1) : guestThreadsPerCore(pins, facts.numa);
  if (threads > 1) topo.threadsPerCore = threads;
  const hostNodes = cellHostNodes(cells, pins);
  if (spec.hugepages) checkHugepages(cells, hostNodes, spec.hugepages.pageSize, facts.numa);

  const paths = {
    qmpSocket: path.join(facts.runDir, 'qmp.sock'),
    serialSocket: spec.serial === 'console' ? path.join(facts.runDir, 'serial.sock') : undefined,
    serialLog: spec.serial === 'console' ? path.join(facts.runDir, 'serial.log') : undefined,
    pidFile: path.join(facts.runDir, 'qemu.pid'),
  };
  for (const p of [paths.qmpSocket, paths.serialSocket]) {
    if (p && Buffer.byteLength(p) > MAX_SOCKET_PATH) throw new InvalidArgument(`run dir too long for a unix socket: ${p}`);
  }

  const argv = buildArgv({ spec, facts, accel, topology: topo, hostNodes, paths, opts, diskSource: (d) => diskSource(d, facts) });
  notes.push(`vCPUs on CPUs ${formatCpuList(pins.vcpus.map((p) => p.cpu))}, emulator threads on ${formatCpuList(pins.emulator)}`);
  return { argv, accel, topology: topo, pins, cellHostNodes: hostNodes, paths, notes };
}

/** `auto` → kvm when usable, else tcg; `kvm` without a usable /dev/kvm is an error. */
export function resolveAccel(want: VmSpec['accel'], kvmUsable: boolean): 'kvm' | 'tcg' {
  if (want === 'tcg') return 'tcg';
  if (want === 'kvm') {
    if (!kvmUsable) throw new FailedPrecondition('spec.accel: kvm, but /dev/kvm is not usable for this VM (was devices.kubevirt.io/kvm allocated?)');
    return 'kvm';
  }
  return kvmUsable ? 'kvm' : 'tcg';
}

function dev(w: Wanted, bus: string, addr: number): TopologyDevice {
  const d: TopologyDevice = { key: w.key, kind: w.kind, id: w.id, driver: w.driver, bus, addr };
  if (w.mac !== undefined) d.mac = w.mac.toLowerCase();
  if (w.serial !== undefined) d.serial = w.serial;
  return d;
}

function wantedDevices(spec: VmSpec, facts: PodFacts): Wanted[] {
  const out: Wanted[] = [];
  if (spec.disks.some((d) => d.bus === 'scsi')) {
    out.push({ key: 'scsi:0', kind: 'scsi-controller', id: 'scsi0', driver: 'virtio-scsi-pci', field: 'spec.disks (scsi controller)' });
  }
  spec.disks.forEach((d, i) => {
    out.push({
      key: `disk:${d.name}`,
      kind: 'disk',
      id: `disk-${d.name}`,
      driver: d.bus === 'scsi' ? 'scsi-hd' : 'virtio-blk-pci',
      field: `spec.disks[${i}]`,
      serial: d.serial ?? defaultSerial(d.name),
      serialExplicit: d.serial !== undefined,
      scsi: d.bus === 'scsi',
    });
  });
  const macs = new Set<string>();
  spec.interfaces.forEach((n, i) => {
    let mac = n.mac?.toLowerCase();
    if (mac === undefined) {
      for (let salt = 0; mac === undefined || macs.has(mac); salt++) mac = generatedMac(`${facts.vmId ?? facts.vmName}/${n.name}/${salt}`);
    } else if (macs.has(mac)) {
      throw new InvalidArgument(`spec.interfaces[${i}].mac: ${mac} is used twice`);
    }
    macs.add(mac);
    if (n.binding === 'tap' && !facts.taps?.[n.name]) throw new FailedPrecondition(`spec.interfaces[${i}]: no tap device for "${n.name}" (network ${n.network})`);
    if (n.binding === 'passt' && !facts.passtSockets?.[n.name]) throw new FailedPrecondition(`spec.interfaces[${i}]: no passt socket for "${n.name}"`);
    out.push({ key: `nic:${n.name}`, kind: 'nic', id: `net-${n.name}`, driver: 'virtio-net-pci', field: `spec.interfaces[${i}]`, mac, macExplicit: n.mac !== undefined });
  });
  for (const h of hostDevices(facts.deviceEnv ?? {})) {
    out.push({ key: h.key, kind: 'hostdev', id: h.id, driver: 'vfio-pci', field: `device env ${h.env}` });
  }
  return out;
}

/** Locally stable MAC in QEMU's 52:54:00 range, derived from the VM identity and interface name. */
export function generatedMac(seed: string): string {
  const h = createHash('sha256').update(seed).digest();
  return ['52', '54', '00', ...[h[0]!, h[1]!, h[2]!].map((b) => b.toString(16).padStart(2, '0'))].join(':');
}

/** Guest-visible serial of a disk without one in the spec (virtio-blk allows 20 bytes). */
export function defaultSerial(name: string): string {
  if (name.length <= 20) return name;
  return `${name.slice(0, 13)}-${createHash('sha256').update(name).digest('hex').slice(0, 6)}`;
}

/** Where QEMU opens a disk: the block device node, or the file inside the mounted volume. */
export function diskSource(d: VmDiskSpec, facts: PodFacts): { file: string; block: boolean } {
  const v = facts.volumes[d.volume];
  if (!v) throw new FailedPrecondition(`disk ${d.name}: pod volume "${d.volume}" is not available`);
  if (d.type === 'block') {
    if (v.kind !== 'block') throw new FailedPrecondition(`disk ${d.name}: volume "${d.volume}" is not a block device`);
    return { file: v.devicePath, block: true };
  }
  if (v.kind !== 'filesystem') throw new FailedPrecondition(`disk ${d.name}: volume "${d.volume}" is not a filesystem`);
  return { file: path.join(v.mountPath, d.path!), block: false };
}
