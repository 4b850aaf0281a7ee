/**
 * Pure allocation logic: which devices to prefer (GetPreferredAllocation), what a container gets
 * for a set of IDs (Allocate), and the environment variable names. No I/O.
 */
import { FailedPrecondition, InvalidArgument, NotFound } from '../lib/errors.js';
import type { ContainerAllocateResponse } from '../proto/gen/deviceplugin/v1beta1/v1beta1/ContainerAllocateResponse.js';
import type { DeviceSpec } from '../proto/gen/deviceplugin/v1beta1/v1beta1/DeviceSpec.js';
import { cdiName, cdiDeviceNameFor, CDI_VFIO_CONTAINER } from './cdi.js';
import type { PlannedDevice, ResourcePlan } from './plan.js';
import { DEVICE_NODE_PERMISSIONS, VFIO_PERMISSIONS } from './resources.js';

export const PCI_ENV_PREFIX = 'PCI_RESOURCE_';
export const MDEV_ENV_PREFIX = 'MDEV_PCI_RESOURCE_';

/** `PCI_RESOURCE_` + `nvidia.com/TU104GL` -> `PCI_RESOURCE_NVIDIA_COM_TU104GL` (`.`, `/`, `-` -> `_`). */
export function envVarName(prefix: string, resourceName: string): string {
  return prefix + resourceName.toUpperCase().replace(/[./-]/g, '_');
}

const groupOrder = (a: string, b: string) => Number(a) - Number(b) || a.localeCompare(b);

/**
 * Checks that every ID is one of the resource's devices and Healthy; the error says which IDs are
 * wrong. Duplicates collapse (Allocate must be idempotent, and the kubelet may repeat IDs across
 * init and app containers).
 */
export function checkAllocatable(plan: ResourcePlan, ids: readonly string[]): PlannedDevice[] {
  if (ids.length === 0) throw new InvalidArgument(`resource ${plan.resourceName}: container request has no device IDs`);
  const byId = new Map(plan.devices.map((d) => [d.id, d]));
  const unique = [...new Set(ids)];
  const unknown = unique.filter((id) => !byId.has(id));
  if (unknown.length > 0) {
    throw new NotFound(`resource ${plan.resourceName}: unknown device ID${unknown.length > 1 ? 's' : ''} ${unknown.map((i) => `"${i}"`).join(', ')}`);
  }
  const devices = unique.map((id) => byId.get(id)!);
  const sick = devices.filter((d) => !d.healthy);
  if (sick.length > 0) {
    throw new FailedPrecondition(`resource ${plan.resourceName}: device${sick.length > 1 ? 's' : ''} ${sick.map((d) => `"${d.id}"`).join(', ')} ${sick.length > 1 ? 'are' : 'is'} Unhealthy`);
  }
  return devices;
}

/** What one container gets for `ids` of `plan`: device specs, env, CDI names. */
export function containerAllocation(plan: ResourcePlan, ids: readonly string[]): ContainerAllocateResponse {
  const devices = checkAllocatable(plan, ids);
  if (plan.kind === 'device-node') {
    const p = plan.hostPath!;
    return {
      devices: [{ container_path: p, host_path: p, permissions: DEVICE_NODE_PERMISSIONS }],
      envs: {},
      mounts: [],
      annotations: {},
      cdi_devices: [{ name: cdiName(cdiDeviceNameFor(plan)) }],
    };
  }
  const groups = [...new Set(devices.map((d) => d.iommuGroup!))].sort(groupOrder);
  const specs: DeviceSpec[] = [
    { container_path: '/dev/vfio/vfio', host_path: '/dev/vfio/vfio', permissions: VFIO_PERMISSIONS },
    ...groups.map((g) => ({ container_path: `/dev/vfio/${g}`, host_path: `/dev/vfio/${g}`, permissions: VFIO_PERMISSIONS })),
  ];
  const prefix = plan.kind === 'pci' ? PCI_ENV_PREFIX : MDEV_ENV_PREFIX;
  return {
    devices: specs,
    envs: { [envVarName(prefix, plan.resourceName)]: devices.map((d) => d.id).join(',') },
    mounts: [],
    annotations: {},
    cdi_devices: [CDI_VFIO_CONTAINER, ...groups.map((g) => cdiDeviceNameFor(plan, g))].map((n) => ({ name: cdiName(n) })),
  };
}

const NO_NUMA = -1;

/**
 * GetPreferredAllocation for one container: `size` IDs out of `available`, always containing
 * `mustInclude`. Preference order:
 *  1. one NUMA node: the must-include devices' node when it can hold the whole request, else the
 *     node with the fewest available devices that can (best fit keeps big nodes free for big
 *     requests); only when no node can, spread starting from the node with the most devices;
 *  2. whole IOMMU groups: first complete groups the must-include devices already touch, then take
 *     the largest groups that fit entirely, and split a group (the smallest one that covers the
 *     rest) only when nothing else fits.
 * Unknown IDs are treated as having no NUMA node and a group of their own. The result is sorted.
 */
export function preferredAllocation(
  devices: readonly PlannedDevice[],
  available: readonly string[],
  mustInclude: readonly string[],
  size: number,
): string[] {
  const info = new Map(devices.map((d) => [d.id, d]));
  const nodeOf = (id: string) => info.get(id)?.numaNode ?? NO_NUMA;
  const groupOf = (id: string) => info.get(id)?.iommuGroup ?? `id:${id}`;
  const must = [...new Set(mustInclude)];
  const mustSet = new Set(must);
  const pool = [...new Set(available)].filter((id) => !mustSet.has(id)).sort();
  let need = size - must.length;
  if (need <= 0) return must.sort();

  const byNode = new Map<number, string[]>();
  for (const id of pool) byNode.set(nodeOf(id), [...(byNode.get(nodeOf(id)) ?? []), id]);
  const mustNodes = new Set(must.map(nodeOf));
  let nodeOrder: number[];
  const single = mustNodes.size === 1 ? [...mustNodes][0]! : undefined;
  if (single !== undefined && (byNode.get(single)?.length ?? 0) >= need) {
    nodeOrder = [single];
  } else {
    const fitting = [...byNode].filter(([, ids]) => ids.length >= need).sort((a, b) => a[1].length - b[1].length || a[0] - b[0]);
    nodeOrder =
      mustNodes.size <= 1 && fitting.length > 0
        ? [fitting[0]![0]]
        : [...byNode].sort((a, b) => b[1].length - a[1].length || a[0] - b[0]).map(([n]) => n);
  }

  const picked: string[] = [];
  const take = (ids: readonly string[]) => {
    for (const id of ids) {
      if (need <= 0) return;
      picked.push(id);
      need--;
    }
  };
  // Groups per node, in node order; group members in ID order.
  const groupsIn = (node: number) => {
    const m = new Map<string, string[]>();
    for (const id of byNode.get(node) ?? []) m.set(groupOf(id), [...(m.get(groupOf(id)) ?? []), id]);
    return m;
  };
  const perNode = nodeOrder.map((n) => groupsIn(n));

  // 1. complete groups the must-include devices are in.
  const mustGroups = new Set(must.map(groupOf));
  for (const groups of perNode) for (const [g, ids] of groups) if (mustGroups.has(g)) take(ids.filter((id) => !picked.includes(id)));

  // 2. whole groups that fit, largest first, node by node.
  const left = () => perNode.map((groups) => [...groups].map(([g, ids]) => [g, ids.filter((id) => !picked.includes(id))] as const).filter(([, ids]) => ids.length > 0));
  for (const groups of left()) {
    const sorted = [...groups].sort((a, b) => b[1].length - a[1].length || groupOrder(a[0], b[0]));
    for (const [, ids] of sorted) if (ids.length <= need) take(ids);
  }
  // 3. split: the smallest remaining group that covers the rest, else the largest, until done.
  while (need > 0) {
    const rest = left().flat();
    if (rest.length === 0) break;
    const covering = rest.filter(([, ids]) => ids.length >= need).sort((a, b) => a[1].length - b[1].length || groupOrder(a[0], b[0]));
    take((covering[0] ?? rest.sort((a, b) => b[1].length - a[1].length)[0]!)[1]);
  }
  return [...must, ...picked].sort();
}
