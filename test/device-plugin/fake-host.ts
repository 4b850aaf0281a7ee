/**
 * Fake /dev and /sys trees in a temp dir, shaped like the kernel's (bus/pci/devices symlinks into
 * devices/, driver and iommu_group symlinks, mdev parents and types). Device nodes are plain files:
 * the plugin only checks presence and never opens them, and plain files work on any filesystem
 * (tmpfs mounted nodev, overlayfs) without CAP_MKNOD.
 */
import { mkdtempSync, mkdirSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';

export interface FakePci {
  bdf: string;
  pciId: string;
  driver: string | null;
  group: string;
  numa: number;
}

export interface FakeMdev {
  uuid: string;
  parent: string;
  typeId: string;
  typeName: string;
  group: string;
}

/** GPUs across NUMA nodes and IOMMU groups; group 50 has a member not bound to vfio-pci. */
export const STANDARD_PCI: FakePci[] = [
  { bdf: '0000:3b:00.0', pciId: '10DE:1EB8', driver: 'vfio-pci', group: '12', numa: 0 },
  { bdf: '0000:3c:00.0', pciId: '10DE:1EB8', driver: 'vfio-pci', group: '13', numa: 0 },
  { bdf: '0000:86:00.0', pciId: '10DE:1EB8', driver: 'vfio-pci', group: '40', numa: 1 },
  { bdf: '0000:86:00.1', pciId: '10DE:10F8', driver: 'vfio-pci', group: '40', numa: 1 },
  { bdf: '0000:af:00.0', pciId: '10DE:1EB8', driver: 'vfio-pci', group: '50', numa: 1 },
  { bdf: '0000:af:00.1', pciId: '10DE:10F8', driver: 'snd_hda_intel', group: '50', numa: 1 },
  { bdf: '0000:d8:00.0', pciId: '10DE:1EB8', driver: 'nvidia', group: '60', numa: 1 },
  { bdf: '0000:5e:00.0', pciId: '8086:1572', driver: 'vfio-pci', group: '70', numa: 1 },
  { bdf: '0000:5e:00.1', pciId: '8086:1572', driver: 'vfio-pci', group: '70', numa: 1 },
  { bdf: '0000:00:1f.0', pciId: '8086:A1C8', driver: null, group: '80', numa: -1 },
];

export const STANDARD_MDEVS: FakeMdev[] = [
  { uuid: 'a1b2c3d4-0000-4000-8000-000000000001', parent: '0000:d8:00.0', typeId: 'nvidia-222', typeName: 'GRID T4-1Q', group: '100' },
  { uuid: 'a1b2c3d4-0000-4000-8000-000000000002', parent: '0000:d8:00.0', typeId: 'nvidia-222', typeName: 'GRID T4-1Q', group: '101' },
  { uuid: 'a1b2c3d4-0000-4000-8000-000000000003', parent: '0000:d8:00.0', typeId: 'nvidia-223', typeName: 'GRID T4-2Q', group: '102' },
];

export class FakeHost {
  readonly root: string;
  readonly dev: string;
  readonly sys: string;
  readonly kubeletDir: string;
  readonly cdiDir: string;

  constructor(prefix = 'pvt-dp-') {
    // Short paths: unix socket paths are limited to 107 bytes.
    this.root = mkdtempSync(path.join(tmpdir(), prefix));
    this.dev = path.join(this.root, 'dev');
    this.sys = path.join(this.root, 'sys');
    this.kubeletDir = path.join(this.root, 'kl');
    this.cdiDir = path.join(this.root, 'cdi');
    for (const d of [this.dev, this.sys, this.kubeletDir, this.cdiDir]) mkdirSync(d, { recursive: true });
  }

  /** `rel` under the dev root, e.g. `kvm`, `net/tun`, `vfio/12`. */
  addNode(rel: string): void {
    const p = path.join(this.dev, rel);
    mkdirSync(path.dirname(p), { recursive: true });
    writeFileSync(p, '');
  }

  removeNode(rel: string): void {
    rmSync(path.join(this.dev, rel), { force: true });
  }

  addStandardDeviceNodes(): void {
    for (const n of ['kvm', 'net/tun', 'vhost-net', 'vhost-vsock']) this.addNode(n);
  }

  addPci(f: FakePci): void {
    const real = path.join(this.sys, 'devices/pci0000:00', f.bdf);
    mkdirSync(real, { recursive: true });
    writeFileSync(path.join(real, 'uevent'), `${f.driver ? `DRIVER=${f.driver}\n` : ''}PCI_CLASS=30000\nPCI_ID=${f.pciId}\nPCI_SLOT_NAME=${f.bdf}\n`);
    const [v, d] = f.pciId.toLowerCase().split(':');
    writeFileSync(path.join(real, 'vendor'), `0x${v}\n`);
    writeFileSync(path.join(real, 'device'), `0x${d}\n`);
    writeFileSync(path.join(real, 'numa_node'), `${f.numa}\n`);
    if (f.driver) {
      mkdirSync(path.join(this.sys, 'bus/pci/drivers', f.driver), { recursive: true });
      symlinkSync(`../../../bus/pci/drivers/${f.driver}`, path.join(real, 'driver'));
    }
    mkdirSync(path.join(this.sys, 'kernel/iommu_groups', f.group, 'devices'), { recursive: true });
    symlinkSync(`../../../kernel/iommu_groups/${f.group}`, path.join(real, 'iommu_group'));
    mkdirSync(path.join(this.sys, 'bus/pci/devices'), { recursive: true });
    symlinkSync(`../../../devices/pci0000:00/${f.bdf}`, path.join(this.sys, 'bus/pci/devices', f.bdf));
  }

  /** Rebinds a PCI function to another driver (null = unbound). */
  setDriver(bdf: string, driver: string | null): void {
    const link = path.join(this.sys, 'devices/pci0000:00', bdf, 'driver');
    // unlink, not rmSync: Node 24.0 to 24.13.0 throw "Path is a directory" for a link to a directory.
    try {
      unlinkSync(link);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    if (driver) {
      mkdirSync(path.join(this.sys, 'bus/pci/drivers', driver), { recursive: true });
      symlinkSync(`../../../bus/pci/drivers/${driver}`, link);
    }
  }

  addMdev(m: FakeMdev): void {
    const parent = path.join(this.sys, 'devices/pci0000:00', m.parent);
    const type = path.join(parent, 'mdev_supported_types', m.typeId);
    mkdirSync(type, { recursive: true });
    writeFileSync(path.join(type, 'name'), `${m.typeName}\n`);
    const dir = path.join(parent, m.uuid);
    mkdirSync(dir, { recursive: true });
    symlinkSync(`../mdev_supported_types/${m.typeId}`, path.join(dir, 'mdev_type'));
    mkdirSync(path.join(this.sys, 'kernel/iommu_groups', m.group, 'devices'), { recursive: true });
    symlinkSync(`../../../kernel/iommu_groups/${m.group}`, path.join(dir, 'iommu_group'));
    mkdirSync(path.join(this.sys, 'bus/mdev/devices'), { recursive: true });
    symlinkSync(`../../../devices/pci0000:00/${m.parent}/${m.uuid}`, path.join(this.sys, 'bus/mdev/devices', m.uuid));
  }

  /** The standard VFIO host: STANDARD_PCI + STANDARD_MDEVS and /dev/vfio nodes for every group. */
  addStandardVfio(): void {
    for (const f of STANDARD_PCI) this.addPci(f);
    for (const m of STANDARD_MDEVS) this.addMdev(m);
    this.addNode('vfio/vfio');
    for (const g of new Set([...STANDARD_PCI.filter((f) => f.driver === 'vfio-pci').map((f) => f.group), ...STANDARD_MDEVS.map((m) => m.group)])) {
      this.addNode(`vfio/${g}`);
    }
  }

  cleanup(): void {
    rmSync(this.root, { recursive: true, force: true });
  }
}
