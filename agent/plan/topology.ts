import { z } from 'zod';
import { InvalidArgument, ResourceExhausted } from '../../lib/errors.js';
import type { TopologyDevice, TopologyDeviceKind, TopologyPort, VmTopology } from './types.js';

/**
 * PCI layout, deterministic and replayable. Every PCI device sits alone at slot 0 of its own
 * PCIe root port (so each one is hot-pluggable and its guest address depends only on its
 * port); root ports sit on pcie.0 slots 0x02..0x1e, function 0 (0x00 is the host bridge,
 * 0x1f the ICH9 LPC/SATA/SMBus functions). Port k: id `rp<k>`, chassis k, port number k,
 * slot 0x02+k-1. Spare ports are kept free for hotplug.
 */
export const FIRST_PORT_SLOT = 0x02;
export const LAST_PORT_SLOT = 0x1e;
export const MAX_ROOT_PORTS = LAST_PORT_SLOT - FIRST_PORT_SLOT + 1;

export function makePort(k: number): TopologyPort {
  return { id: `rp${k}`, chassis: k, port: k, slot: FIRST_PORT_SLOT + k - 1, function: 0 };
}

const portSchema = z.strictObject({
  id: z.string().regex(/^rp\d+$/),
  chassis: z.number().int().min(1).max(255),
  port: z.number().int().min(1).max(255),
  slot: z.number().int().min(FIRST_PORT_SLOT).max(LAST_PORT_SLOT),
  function: z.number().int().min(0).max(7),
});
const deviceSchema = z.strictObject({
  key: z.string().min(1),
  kind: z.enum(['disk', 'nic', 'hostdev', 'scsi-controller']),
  id: z.string().regex(/^[A-Za-z][A-Za-z0-9._-]*$/),
  driver: z.string().min(1),
  bus: z.string().min(1),
  addr: z.number().int().min(0),
  mac: z.string().optional(),
  serial: z.string().optional(),
  hotplugged: z.boolean().optional(),
});
const topologySchema = z.strictObject({
  version: z.literal(1),
  machine: z.string().regex(/^pc-q35-\d+\.\d+$/),
  cpuModel: z.string().min(1),
  cpus: z.number().int().min(1),
  threadsPerCore: z.number().int().min(1).max(8).optional(),
  memoryBytes: z.number().int().positive(),
  numaCells: z.array(z.strictObject({ id: z.number().int().min(0), vcpus: z.array(z.number().int().min(0)), memoryBytes: z.number().int().positive() })),
  rootPorts: z.array(portSchema),
  devices: z.array(deviceSchema),
});

/** Validates a stored topology (from an annotation or a state file). */
export function parseTopology(v: unknown): VmTopology {
  const r = topologySchema.safeParse(v);
  if (!r.success) {
    const first = r.error.issues[0]!;
    throw new InvalidArgument(`stored topology: ${['topology', ...first.path.map(String)].join('.')}: ${first.message}`);
  }
  const t = r.data as VmTopology;
  const ids = new Set<string>();
  const slots = new Set<string>();
  for (const p of t.rootPorts) {
    if (ids.has(p.id)) throw new InvalidArgument(`stored topology: duplicate root port ${p.id}`);
    const at = `${p.slot}.${p.function}`;
    if (slots.has(at)) throw new InvalidArgument(`stored topology: two root ports at pcie.0 ${at}`);
    ids.add(p.id);
    slots.add(at);
  }
  const used = new Set<string>();
  for (const d of t.devices) {
    if (d.kind !== 'disk' || d.bus.startsWith('rp')) {
      if (d.bus.startsWith('rp') && !ids.has(d.bus)) throw new InvalidArgument(`stored topology: ${d.key} on unknown port ${d.bus}`);
    }
    const at = `${d.bus}/${d.addr}`;
    if (used.has(at)) throw new InvalidArgument(`stored topology: two devices at ${at}`);
    used.add(at);
  }
  return t;
}

/** Root ports with no device on them, in port order. */
export function freePorts(t: Pick<VmTopology, 'rootPorts' | 'devices'>): TopologyPort[] {
  const busy = new Set(t.devices.map((d) => d.bus));
  return t.rootPorts.filter((p) => !busy.has(p.id)).sort((a, b) => a.chassis - b.chassis);
}

/** Appends new root ports until `n` are free. */
export function ensureFreePorts(t: Pick<VmTopology, 'rootPorts' | 'devices'>, n: number): TopologyPort[] {
  const ports = [...t.rootPorts];
  let free = freePorts({ rootPorts: ports, devices: t.devices }).length;
  while (free < n) {
    const k = Math.max(0, ...ports.map((p) => p.chassis)) + 1;
    if (ports.length >= MAX_ROOT_PORTS || k > MAX_ROOT_PORTS) {
      throw new ResourceExhausted(`no room for more PCIe root ports (max ${MAX_ROOT_PORTS} on pcie.0)`);
    }
    ports.push(makePort(k));
    free++;
  }
  return ports;
}

/**
 * Places a PCI device in the first free root port (adding one if none is free) and returns
 * the new topology. Pure: the VmController uses it for hotplug, the plan for new devices.
 */
export function placePciDevice(
  t: VmTopology,
  dev: { key: string; kind: TopologyDeviceKind; id: string; driver: string; mac?: string; serial?: string; hotplugged?: boolean },
): { topology: VmTopology; device: TopologyDevice } {
  if (t.devices.some((d) => d.key === dev.key)) throw new InvalidArgument(`device ${dev.key} already exists`);
  if (t.devices.some((d) => d.id === dev.id)) throw new InvalidArgument(`device id ${dev.id} already in use`);
  const rootPorts = ensureFreePorts(t, 1);
  const port = freePorts({ rootPorts, devices: t.devices })[0]!;
  const device: TopologyDevice = { ...dev, bus: port.id, addr: 0 };
  return { topology: { ...t, rootPorts, devices: [...t.devices, device] }, device };
}

/** Removes a device (unplugged, or gone from the spec); its port becomes free. */
export function removeDevice(t: VmTopology, key: string): VmTopology {
  return { ...t, devices: t.devices.filter((d) => d.key !== key) };
}

/** The guest-visible PCI address of a device: `pcie.0 slot` of its port, device slot behind it. */
export function pciPath(t: VmTopology, key: string): string | undefined {
  const d = t.devices.find((x) => x.key === key);
  if (!d) return undefined;
  const p = t.rootPorts.find((x) => x.id === d.bus);
  if (!p) return `${d.bus}/${d.addr}`;
  return `00:${hex2(p.slot)}.${p.function}/${hex2(d.addr)}.0`;
}

const hex2 = (n: number) => n.toString(16).padStart(2, '0');
