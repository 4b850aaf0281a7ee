import { createHash } from 'node:crypto';
import { InvalidArgument } from '../../lib/errors.js';
import type { VmDiskSpec } from '../spec/vm-spec.js';
import type { TopologyDevice, TopologyPort } from './types.js';

/**
 * QEMU option objects for each device kind. The same objects go on the command line
 * (as JSON `-device`/`-blockdev`) and through QMP (`device_add`, `blockdev-add`) for hotplug,
 * so a cold-plugged and a hot-plugged device are configured identically.
 */

export type CacheMode = NonNullable<VmDiskSpec['cache']>;

/** `cache` default: O_DIRECT for block devices, page cache for files (tmpfs has no O_DIRECT). */
export function cacheMode(d: Pick<VmDiskSpec, 'cache'>, block: boolean): CacheMode {
  return d.cache ?? (block ? 'none' : 'writeback');
}

function cacheFlags(mode: CacheMode): { direct: boolean; noFlush: boolean; writeCache: boolean } {
  switch (mode) {
    case 'none':
      return { direct: true, noFlush: false, writeCache: true };
    case 'writeback':
      return { direct: false, noFlush: false, writeCache: true };
    case 'writethrough':
      return { direct: false, noFlush: false, writeCache: false };
    case 'directsync':
      return { direct: true, noFlush: false, writeCache: false };
    case 'unsafe':
      return { direct: false, noFlush: true, writeCache: true };
  }
}

export const fileNodeName = (disk: string) => `file-${disk}`;
export const driveNodeName = (disk: string) => `drive-${disk}`;

/** The protocol node (file or host_device) and the format node on top of it, in `blockdev-add` form. */
export function blockdevNodes(
  disk: Pick<VmDiskSpec, 'name' | 'format' | 'readonly' | 'cache'>,
  src: { file: string; block: boolean },
): [Record<string, unknown> & { 'node-name': string; driver: string }, Record<string, unknown> & { 'node-name': string; driver: string }] {
  const c = cacheFlags(cacheMode(disk, src.block));
  const cache = { direct: c.direct, 'no-flush': c.noFlush };
  return [
    {
      driver: src.block ? 'host_device' : 'file',
      filename: src.file,
      'node-name': fileNodeName(disk.name),
      cache,
      aio: c.direct ? 'native' : 'threads',
      'read-only': disk.readonly,
      discard: 'unmap',
    },
    {
      driver: src.block ? 'raw' : disk.format,
      'node-name': driveNodeName(disk.name),
      file: fileNodeName(disk.name),
      cache,
      'read-only': disk.readonly,
    },
  ];
}

export function diskDeviceProps(
  td: TopologyDevice,
  disk: Pick<VmDiskSpec, 'name' | 'cache'>,
  block: boolean,
  bootIndex: number | undefined,
): Record<string, unknown> & { driver: string; id: string } {
  const c = cacheFlags(cacheMode(disk, block));
  const p: Record<string, unknown> & { driver: string; id: string } = {
    driver: td.driver,
    id: td.id,
    drive: driveNodeName(disk.name),
    bus: td.bus,
    'write-cache': c.writeCache ? 'on' : 'off',
  };
  if (td.driver === 'scsi-hd') {
    p.channel = 0;
    p['scsi-id'] = td.addr;
    p.lun = 0;
  } else {
    p.addr = `0x${td.addr.toString(16)}`;
  }
  if (td.serial !== undefined) p.serial = td.serial;
  if (bootIndex !== undefined) p.bootindex = bootIndex;
  return p;
}

export const netdevId = (nic: string) => `netdev-${nic}`;

/** `netdev_add` options: a pre-created tap (no scripts: QEMU has no privileges) or a passt socket. */
export function netdevProps(
  nic: string,
  backend: { tap: string; vhost?: boolean } | { passtSocket: string },
): Record<string, unknown> & { type: string; id: string } {
  if ('tap' in backend) {
    const p: Record<string, unknown> & { type: string; id: string } = {
      type: 'tap',
      id: netdevId(nic),
      ifname: backend.tap,
      script: 'no',
      downscript: 'no',
    };
    if (backend.vhost) p.vhost = true;
    return p;
  }
  return { type: 'stream', id: netdevId(nic), server: false, addr: { type: 'unix', path: backend.passtSocket } };
}

export function nicDeviceProps(td: TopologyDevice, nic: string): Record<string, unknown> & { driver: string; id: string } {
  const p: Record<string, unknown> & { driver: string; id: string } = {
    driver: td.driver,
    id: td.id,
    netdev: netdevId(nic),
    bus: td.bus,
    addr: `0x${td.addr.toString(16)}`,
  };
  if (td.mac !== undefined) p.mac = td.mac;
  return p;
}

export function rootPortProps(p: TopologyPort): Record<string, unknown> & { driver: string; id: string } {
  return {
    driver: 'pcie-root-port',
    id: p.id,
    bus: 'pcie.0',
    chassis: p.chassis,
    port: p.port,
    addr: `0x${p.slot.toString(16)}.${p.function}`,
  };
}

/** `PCI_RESOURCE_<NAME>=0000:01:00.0,...` and `MDEV_PCI_RESOURCE_<NAME>=<uuid>,...` from the device plugin. */
export function hostDevices(env: Record<string, string>): Array<{ key: string; id: string; env: string; host?: string; mdev?: string }> {
  const out: Array<{ key: string; id: string; env: string; host?: string; mdev?: string }> = [];
  for (const k of Object.keys(env).sort()) {
    const mdev = k.startsWith('MDEV_PCI_RESOURCE_');
    if (!mdev && !k.startsWith('PCI_RESOURCE_')) continue;
    const items = env[k]!.split(',').map((s) => s.trim()).filter(Boolean);
    items.forEach((v, i) => {
      if (!mdev && !/^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/i.test(v)) throw new InvalidArgument(`${k}: "${v}" is not a PCI address`);
      if (mdev && !/^[0-9a-f-]{36}$/i.test(v)) throw new InvalidArgument(`${k}: "${v}" is not an mdev UUID`);
      const id = `hostdev-${createHash('sha256').update(`${k}/${i}`).digest('hex').slice(0, 8)}`;
      out.push({ key: `hostdev:${k}:${i}`, id, env: k, ...(mdev ? { mdev: v } : { host: v.toLowerCase() }) });
    });
  }
  return out;
}

