/**
 * Pure planning: configuration + inventory -> the resources to serve and their devices. The
 * controller applies the result (starts, updates, stops plugin servers); nothing here touches
 * the host.
 */
import type { PluginConfig } from './config.js';
import type { Inventory } from './discovery.js';
import { DEVICE_NODE_NAMES, DEVICE_NODE_RESOURCES, socketNameFor, type DeviceNodeName } from './resources.js';

export type ResourceKind = 'device-node' | 'pci' | 'mdev';

export interface PlannedDevice {
  id: string;
  healthy: boolean;
  numaNode?: number | undefined;
  /** VFIO devices: the IOMMU group whose `/dev/vfio/<N>` the device needs. */
  iommuGroup?: string | undefined;
}

export interface ResourcePlan {
  resourceName: string;
  kind: ResourceKind;
  socketName: string;
  devices: PlannedDevice[];
  /** Device-node resources: the host path handed to containers (`/dev/kvm`), independent of --dev-root. */
  hostPath?: string | undefined;
  /** Device-node resources: which node. */
  node?: DeviceNodeName | undefined;
}

export const VFIO_DRIVER = 'vfio-pci';

/** The mdev type name the way KubeVirt compares it: spaces become `_`. */
export function normalizeMdevName(name: string): string {
  return name.trim().replace(/\s+/g, '_');
}

function deviceNodePlans(config: PluginConfig, inv: Inventory): ResourcePlan[] {
  // Default when `deviceNodes` is absent: all four; each is started only once its node exists.
  const wanted = config.deviceNodes ?? [...DEVICE_NODE_NAMES];
  return wanted.map((node) => {
    const r = DEVICE_NODE_RESOURCES[node];
    const healthy = inv.deviceNodes[node];
    const devices: PlannedDevice[] = [];
    for (let i = 0; i < config.maxDevices; i++) devices.push({ id: `${node}-${i}`, healthy });
    return { resourceName: r.resourceName, kind: 'device-node', socketName: socketNameFor(r.resourceName), devices, hostPath: `/dev/${r.rel}`, node };
  });
}

/** IOMMU groups safe to hand out: every PCI function in the group is bound to vfio-pci. */
export function viableGroups(inv: Inventory): Set<string> {
  const bad = new Set<string>();
  const all = new Set<string>();
  for (const f of inv.pci) {
    if (f.iommuGroup === undefined) continue;
    all.add(f.iommuGroup);
    if (f.driver !== VFIO_DRIVER) bad.add(f.iommuGroup);
  }
  return new Set([...all].filter((g) => !bad.has(g)));
}

function groupHealthy(inv: Inventory, group: string): boolean {
  return inv.vfioContainer && inv.vfioGroupNodes.has(group);
}

function pciPlans(config: PluginConfig, inv: Inventory): ResourcePlan[] {
  const selectors = new Map<string, Set<string>>();
  for (const e of config.pciHostDevices) {
    const s = selectors.get(e.resourceName) ?? new Set<string>();
    s.add(e.pciVendorSelector.toUpperCase());
    selectors.set(e.resourceName, s);
  }
  const viable = viableGroups(inv);
  return [...selectors].map(([resourceName, sel]) => ({
    resourceName,
    kind: 'pci' as const,
    socketName: socketNameFor(resourceName),
    devices: inv.pci
      .filter((f) => f.pciId !== undefined && sel.has(f.pciId) && f.driver === VFIO_DRIVER)
      .filter((f) => f.iommuGroup !== undefined && viable.has(f.iommuGroup))
      .map((f) => ({ id: f.bdf, healthy: groupHealthy(inv, f.iommuGroup!), numaNode: f.numaNode, iommuGroup: f.iommuGroup }))
      .sort((a, b) => a.id.localeCompare(b.id)),
  }));
}

function mdevPlans(config: PluginConfig, inv: Inventory): ResourcePlan[] {
  const selectors = new Map<string, Set<string>>();
  for (const e of config.mediatedDevices) {
    const s = selectors.get(e.resourceName) ?? new Set<string>();
    s.add(normalizeMdevName(e.mdevNameSelector));
    selectors.set(e.resourceName, s);
  }
  return [...selectors].map(([resourceName, sel]) => ({
    resourceName,
    kind: 'mdev' as const,
    socketName: socketNameFor(resourceName),
    devices: inv.mdevs
      .filter((m) => m.typeName !== undefined && sel.has(normalizeMdevName(m.typeName)) && m.iommuGroup !== undefined)
      .map((m) => ({ id: m.uuid, healthy: groupHealthy(inv, m.iommuGroup!), numaNode: m.numaNode, iommuGroup: m.iommuGroup }))
      .sort((a, b) => a.id.localeCompare(b.id)),
  }));
}

/** Every resource the configuration asks for, with the devices the host offers right now. */
export function planResources(config: PluginConfig, inv: Inventory): ResourcePlan[] {
  return [...deviceNodePlans(config, inv), ...pciPlans(config, inv), ...mdevPlans(config, inv)];
}

/**
 * The device list to advertise, given what was advertised before. A VFIO/mdev device that was
 * advertised and has vanished from discovery (unbound, group no longer viable, mdev removed) stays
 * in the list as Unhealthy instead of disappearing: the kubelet keeps capacity stable and pods
 * holding it see a health change rather than a device that never existed. Device-node IDs are
 * synthetic tokens, so their list is always the planned one.
 */
export function mergeAdvertised(previous: readonly PlannedDevice[] | undefined, next: ResourcePlan): ResourcePlan {
  if (next.kind === 'device-node' || !previous) return next;
  const ids = new Set(next.devices.map((d) => d.id));
  const gone = previous.filter((d) => !ids.has(d.id)).map((d) => ({ ...d, healthy: false }));
  if (gone.length === 0) return next;
  return { ...next, devices: [...next.devices, ...gone].sort((a, b) => a.id.localeCompare(b.id)) };
}

export function sameDevices(a: readonly PlannedDevice[], b: readonly PlannedDevice[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) {
    const x = a[i]!;
    const y = b[i]!;
    if (x.id !== y.id || x.healthy !== y.healthy || x.numaNode !== y.numaNode || x.iommuGroup !== y.iommuGroup) return false;
  }
  return true;
}
