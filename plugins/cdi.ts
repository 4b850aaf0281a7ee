/**
 * CDI (Container Device Interface) spec for the devices podvirt serves, written to
 * `<cdi-dir>/podvirt.json`, and the fully qualified names Allocate returns in `cdi_devices`.
 * Pure: the controller writes the file.
 *
 * One CDI device per device-node resource (`kvm`, `tun`, ...: every token ID maps to it), one for
 * the VFIO container node (`vfio`), and one per IOMMU group served (`vfio-<N>`): a group node
 * grants the whole group, so the group (not the PCI function) is the unit of injection. Env
 * variables are not in the spec: their value depends on the whole allocation, so they travel in
 * AllocateResponse.envs.
 */
import type { ResourcePlan } from './plan.js';
import { DEVICE_NODE_PERMISSIONS, VFIO_PERMISSIONS } from './resources.js';

export const CDI_KIND = 'podvirt.io/device';
/** 0.6.0 is understood by the CDI library in containerd 1.7+/2.x and CRI-O 1.28+; we use nothing newer. */
export const CDI_VERSION = '0.6.0';
export const CDI_SPEC_FILE = 'podvirt.json';
export const DEFAULT_CDI_DIR = '/var/run/cdi';
export const CDI_VFIO_CONTAINER = 'vfio';

export interface CdiDeviceNode {
  path: string;
  hostPath: string;
  permissions: string;
}

export interface CdiSpec {
  cdiVersion: string;
  kind: string;
  devices: Array<{ name: string; containerEdits: { deviceNodes: CdiDeviceNode[] } }>;
}

export function cdiName(device: string): string {
  return `${CDI_KIND}=${device}`;
}

/** The CDI device name of a device-node resource, or of one IOMMU group of a VFIO resource. */
export function cdiDeviceNameFor(plan: ResourcePlan, group?: string): string {
  if (plan.kind === 'device-node') return plan.node!;
  return `vfio-${group!}`;
}

/** The spec for every served resource's healthy and unhealthy devices (sorted, deterministic). */
export function buildCdiSpec(plans: readonly ResourcePlan[]): CdiSpec {
  const devices = new Map<string, CdiDeviceNode>();
  for (const p of plans) {
    if (p.kind === 'device-node') {
      devices.set(cdiDeviceNameFor(p), { path: p.hostPath!, hostPath: p.hostPath!, permissions: DEVICE_NODE_PERMISSIONS });
      continue;
    }
    if (p.devices.length === 0) continue;
    devices.set(CDI_VFIO_CONTAINER, { path: '/dev/vfio/vfio', hostPath: '/dev/vfio/vfio', permissions: VFIO_PERMISSIONS });
    for (const d of p.devices) {
      const path = `/dev/vfio/${d.iommuGroup!}`;
      devices.set(cdiDeviceNameFor(p, d.iommuGroup), { path, hostPath: path, permissions: VFIO_PERMISSIONS });
    }
  }
  return {
    cdiVersion: CDI_VERSION,
    kind: CDI_KIND,
    devices: [...devices]
      .sort((a, b) => a[0].localeCompare(b[0], 'en', { numeric: true }))
      .map(([name, node]) => ({ name, containerEdits: { deviceNodes: [node] } })),
  };
}
