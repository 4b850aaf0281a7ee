/**
 * Reads what the host offers: device nodes under the dev root, PCI functions and mediated devices
 * under the sys root. No decisions here: plan.ts turns an inventory plus config into resources.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { sysErrorCode } from '../lib/errors.js';
import { Sysfs } from '../lib/sysfs.js';
import { DEVICE_NODE_NAMES, DEVICE_NODE_RESOURCES, type DeviceNodeName } from './resources.js';

export interface PciFunction {
  /** PCI address, `0000:3b:00.0`. */
  bdf: string;
  /** `VVVV:DDDD`, upper case. */
  pciId: string | undefined;
  driver: string | undefined;
  iommuGroup: string | undefined;
  /** undefined when the kernel reports -1 (no affinity) or nothing. */
  numaNode: number | undefined;
}

export interface MediatedDevice {
  uuid: string;
  /** The type's `name` (`GRID T4-1Q`), or the type directory's name when it has none. */
  typeName: string | undefined;
  parentBdf: string | undefined;
  iommuGroup: string | undefined;
  numaNode: number | undefined;
}

export interface Inventory {
  deviceNodes: Record<DeviceNodeName, boolean>;
  pci: PciFunction[];
  mdevs: MediatedDevice[];
  /** `/dev/vfio/vfio` exists. */
  vfioContainer: boolean;
  /** IOMMU groups whose `/dev/vfio/<N>` exists. */
  vfioGroupNodes: Set<string>;
}

export interface DiscoveryRoots {
  dev: string;
  sys: string;
}

async function exists(p: string): Promise<boolean> {
  try {
    await fs.stat(p);
    return true;
  } catch (e) {
    const c = sysErrorCode(e);
    if (c === 'ENOENT' || c === 'ENOTDIR') return false;
    throw e;
  }
}

function parseNuma(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const n = Number.parseInt(text, 10);
  return Number.isInteger(n) && n >= 0 ? n : undefined;
}

async function readPciId(sys: Sysfs, dir: string): Promise<string | undefined> {
  const uevent = await sys.read(dir, 'uevent');
  const m = uevent !== undefined ? /^PCI_ID=([0-9A-Fa-f]{4}:[0-9A-Fa-f]{4})$/m.exec(uevent) : null;
  if (m) return m[1]!.toUpperCase();
  // Older or trimmed trees: the separate vendor/device files hold "0x10de".
  const vendor = await sys.read(dir, 'vendor');
  const device = await sys.read(dir, 'device');
  if (vendor === undefined || device === undefined) return undefined;
  return `${vendor.replace(/^0x/, '')}:${device.replace(/^0x/, '')}`.toUpperCase();
}

export async function discoverPci(sys: Sysfs): Promise<PciFunction[]> {
  const out: PciFunction[] = [];
  for (const bdf of await sys.list('bus/pci/devices')) {
    const dir = path.join('bus/pci/devices', bdf);
    out.push({
      bdf,
      pciId: await readPciId(sys, dir),
      driver: await sys.linkName(dir, 'driver'),
      iommuGroup: await sys.linkName(dir, 'iommu_group'),
      numaNode: parseNuma(await sys.read(dir, 'numa_node')),
    });
  }
  return out;
}

export async function discoverMdevs(sys: Sysfs): Promise<MediatedDevice[]> {
  const out: MediatedDevice[] = [];
  for (const uuid of await sys.list('bus/mdev/devices')) {
    const dir = path.join('bus/mdev/devices', uuid);
    let parentBdf: string | undefined;
    try {
      // The mdev lives under its parent device: .../0000:3b:00.0/<uuid>.
      parentBdf = path.basename(path.dirname(await fs.realpath(sys.path(dir))));
    } catch (e) {
      if (sysErrorCode(e) !== 'ENOENT') throw e;
      continue; // vanished while listing
    }
    const typeName = (await sys.read(dir, 'mdev_type', 'name')) ?? (await sys.linkName(dir, 'mdev_type'));
    out.push({
      uuid,
      typeName,
      parentBdf,
      iommuGroup: await sys.linkName(dir, 'iommu_group'),
      numaNode: parseNuma(await sys.read('bus/pci/devices', parentBdf, 'numa_node')),
    });
  }
  return out;
}

/** Everything plan.ts needs. PCI and mdev walks are skipped when no config entry asks for them. */
export async function discover(roots: DiscoveryRoots, want: { pci: boolean; mdev: boolean }): Promise<Inventory> {
  const sys = new Sysfs(roots.sys);
  const deviceNodes = {} as Record<DeviceNodeName, boolean>;
  for (const n of DEVICE_NODE_NAMES) deviceNodes[n] = await exists(path.join(roots.dev, DEVICE_NODE_RESOURCES[n].rel));
  const vfioGroupNodes = new Set<string>();
  let vfioContainer = false;
  if (want.pci || want.mdev) {
    try {
      for (const e of await fs.readdir(path.join(roots.dev, 'vfio'))) {
        if (e === 'vfio') vfioContainer = true;
        else if (/^\d+$/.test(e)) vfioGroupNodes.add(e);
      }
    } catch (e) {
      if (sysErrorCode(e) !== 'ENOENT' && sysErrorCode(e) !== 'ENOTDIR') throw e;
    }
  }
  return {
    deviceNodes,
    pci: want.pci ? await discoverPci(sys) : [],
    mdevs: want.mdev ? await discoverMdevs(sys) : [],
    vfioContainer,
    vfioGroupNodes,
  };
}
