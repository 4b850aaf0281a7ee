import { AlreadyExists, Aborted, FailedPrecondition, InvalidArgument, OutOfRange } from '../lib/errors.js';
import type { VolumeCapability__Output } from '../proto/gen/csi/v1/csi/v1/VolumeCapability.js';
import type { CapacityRange__Output } from '../proto/gen/csi/v1/csi/v1/CapacityRange.js';

/**
 * Pure decisions of the CSI driver: request validation, sizes, capabilities, publish rules,
 * pagination and the qemu-storage-daemon command line. Nothing here touches the host.
 */

export type AccessType = 'block' | 'mount';
export type FsType = 'ext4' | 'xfs';
export const FS_TYPES: readonly FsType[] = ['ext4', 'xfs'];
export const DEFAULT_FS: FsType = 'ext4';

export const GiB = 1024 ** 3;
export const MiB = 1024 ** 2;
/** Size of a volume created without a capacity range. */
export const DEFAULT_VOLUME_BYTES = GiB;
/** Smallest volume: a loop device and a filesystem need a few MiB to be useful. */
export const MIN_VOLUME_BYTES = MiB;
/** Anything above this is an input error, not a storage request (qcow2 itself stops at 64 PiB). */
export const MAX_VOLUME_BYTES = 64 * 1024 ** 4;
/** Sizes are multiples of a sector: qcow2 and loop devices work in 512-byte units. */
export const SECTOR = 512;

export type Mode =
  | 'SINGLE_NODE_WRITER'
  | 'SINGLE_NODE_READER_ONLY'
  | 'SINGLE_NODE_SINGLE_WRITER'
  | 'SINGLE_NODE_MULTI_WRITER'
  | 'MULTI_NODE_READER_ONLY'
  | 'MULTI_NODE_SINGLE_WRITER'
  | 'MULTI_NODE_MULTI_WRITER';

/** Node-local storage: only single-node modes can be honoured. */
export const SUPPORTED_MODES: readonly Mode[] = [
  'SINGLE_NODE_WRITER',
  'SINGLE_NODE_READER_ONLY',
  'SINGLE_NODE_SINGLE_WRITER',
  'SINGLE_NODE_MULTI_WRITER',
];

export interface Capability {
  type: AccessType;
  /** Only for mount; empty when the CO left the choice to the driver. */
  fsType: string;
  mountFlags: string[];
  mode: Mode;
}

/** Validates one VolumeCapability's shape (INVALID_ARGUMENT when malformed). */
export function parseCapability(field: string, cap: VolumeCapability__Output | null | undefined): Capability {
  if (!cap) throw new InvalidArgument(`${field} is required`);
  const type: AccessType | undefined = cap.block ? 'block' : cap.mount ? 'mount' : undefined;
  if (!type) throw new InvalidArgument(`${field}: access_type (block or mount) is required`);
  const rawMode = cap.access_mode?.mode;
  if (rawMode === undefined || rawMode === null || rawMode === 'UNKNOWN') throw new InvalidArgument(`${field}: access_mode is required`);
  const mode = rawMode as Mode;
  const fsType = cap.mount?.fs_type ?? '';
  if (type === 'mount' && fsType !== '' && !FS_TYPES.includes(fsType as FsType)) {
    throw new InvalidArgument(`${field}: fs_type "${fsType}" is not supported (supported: ${FS_TYPES.join(', ')})`);
  }
  const mountFlags = cap.mount?.mount_flags ?? [];
  for (const f of mountFlags) {
    if (f === '' || f.includes(',') || /\s/.test(f)) throw new InvalidArgument(`${field}: mount flag "${f}" is not a single option`);
  }
  if (cap.mount?.volume_mount_group) throw new InvalidArgument(`${field}: volume_mount_group is not supported`);
  return { type, fsType, mountFlags: [...mountFlags], mode };
}

export function isSupportedMode(mode: Mode): boolean {
  return SUPPORTED_MODES.includes(mode);
}

/** Parses a required non-empty capability list. */
export function parseCapabilities(field: string, caps: VolumeCapability__Output[] | undefined): Capability[] {
  if (!caps || caps.length === 0) throw new InvalidArgument(`${field} is required`);
  return caps.map((c, i) => parseCapability(`${field}[${i}]`, c));
}

/** Parameters a StorageClass may carry. `csi.storage.k8s.io/*` keys come from the sidecars and are ignored. */
export interface VolumeParams {
  fsType?: FsType;
}

export function parseParameters(params: Record<string, string> | undefined): VolumeParams {
  const out: VolumeParams = {};
  for (const [k, v] of Object.entries(params ?? {})) {
    if (k.startsWith('csi.storage.k8s.io/')) continue;
    if (k === 'fsType') {
      if (!FS_TYPES.includes(v as FsType)) throw new InvalidArgument(`parameter fsType "${v}" is not supported (supported: ${FS_TYPES.join(', ')})`);
      out.fsType = v as FsType;
      continue;
    }
    throw new InvalidArgument(`unknown parameter "${k}" (known: fsType)`);
  }
  return out;
}

/** Only sidecar metadata may reach CreateSnapshot: podvirt snapshots take no options. */
export function parseSnapshotParameters(params: Record<string, string> | undefined): void {
  for (const k of Object.keys(params ?? {})) {
    if (!k.startsWith('csi.storage.k8s.io/')) throw new InvalidArgument(`unknown snapshot parameter "${k}"`);
  }
}

/** The filesystem of a new volume: the parameter and the capabilities must agree. */
export function chooseFsType(params: VolumeParams, caps: Capability[]): FsType {
  const fromCaps = new Set(caps.filter((c) => c.type === 'mount' && c.fsType !== '').map((c) => c.fsType as FsType));
  if (fromCaps.size > 1) throw new InvalidArgument(`volume_capabilities ask for different filesystems: ${[...fromCaps].join(', ')}`);
  const capFs = [...fromCaps][0];
  if (params.fsType && capFs && params.fsType !== capFs) {
    throw new InvalidArgument(`parameter fsType "${params.fsType}" contradicts the capability's fs_type "${capFs}"`);
  }
  return params.fsType ?? capFs ?? DEFAULT_FS;
}

function toInt(field: string, v: string | number | undefined): number {
  const n = typeof v === 'number' ? v : Number(v ?? '0');
  if (!Number.isSafeInteger(n)) throw new OutOfRange(`${field} ${String(v)} is not a usable size`);
  return n;
}

export interface CapacityLimits {
  defaultBytes: number;
  minBytes: number;
  maxBytes: number;
}

export const DEFAULT_LIMITS: CapacityLimits = { defaultBytes: DEFAULT_VOLUME_BYTES, minBytes: MIN_VOLUME_BYTES, maxBytes: MAX_VOLUME_BYTES };

/**
 * The size to allocate for a capacity range: exactly `required_bytes` when it is a sector
 * multiple, else rounded up to one, but never above `limit_bytes` (OUT_OF_RANGE instead).
 */
export function resolveCapacity(range: CapacityRange__Output | null | undefined, limits: CapacityLimits = DEFAULT_LIMITS, floorBytes = 0): number {
  const required = toInt('required_bytes', range?.required_bytes);
  const limit = toInt('limit_bytes', range?.limit_bytes);
  if (required < 0 || limit < 0) throw new OutOfRange('capacity_range must not be negative');
  if (limit > 0 && required > limit) throw new OutOfRange(`required_bytes ${required} exceeds limit_bytes ${limit}`);
  let size = required > 0 ? required : Math.max(floorBytes, limit > 0 ? Math.min(limits.defaultBytes, limit) : limits.defaultBytes);
  size = Math.max(size, limits.minBytes, floorBytes);
  size = Math.ceil(size / SECTOR) * SECTOR;
  if (limit > 0 && size > limit) {
    throw new OutOfRange(`no size in [${required}, ${limit}] is at least ${Math.max(limits.minBytes, floorBytes)} bytes and a multiple of ${SECTOR}`);
  }
  if (size > limits.maxBytes) throw new OutOfRange(`${size} bytes exceeds the maximum volume size ${limits.maxBytes}`);
  return size;
}

/** Does an existing size satisfy a capacity range (idempotent CreateVolume, ControllerExpand)? */
export function sizeSatisfies(size: number, range: CapacityRange__Output | null | undefined): boolean {
  const required = toInt('required_bytes', range?.required_bytes);
  const limit = toInt('limit_bytes', range?.limit_bytes);
  return size >= required && (limit === 0 || size <= limit);
}

/** Can a volume created for `types` serve a request for `cap`? */
export function capabilityMatches(volume: { accessTypes: AccessType[]; fsType: FsType }, cap: Capability): string | undefined {
  if (!volume.accessTypes.includes(cap.type)) return `volume was created for ${volume.accessTypes.join('/')} access, not ${cap.type}`;
  if (cap.type === 'mount' && cap.fsType !== '' && cap.fsType !== volume.fsType) {
    return `volume has filesystem ${volume.fsType}, not ${cap.fsType}`;
  }
  if (!isSupportedMode(cap.mode)) return `access mode ${cap.mode} is not supported by node-local volumes`;
  return undefined;
}

/** What NodePublishVolume compares to decide "same publish" (the spec's P). */
export interface PublishArgs {
  targetPath: string;
  stagingPath: string;
  type: AccessType;
  mode: Mode;
  readonly: boolean;
  mountFlags: string[];
}

export function publishKey(a: PublishArgs): string {
  return JSON.stringify([a.stagingPath, a.type, a.mode, a.readonly, [...a.mountFlags].sort()]);
}

/**
 * The spec's second-publish table: `existing` (already published at T), same args → 'exists';
 * different args → ALREADY_EXISTS; another target while the mode is not multi-writer →
 * FAILED_PRECONDITION; otherwise 'new'.
 */
export function decidePublish(req: PublishArgs, others: PublishArgs[]): 'exists' | 'new' {
  const same = others.find((o) => o.targetPath === req.targetPath);
  if (same) {
    if (publishKey(same) === publishKey(req)) return 'exists';
    throw new AlreadyExists(`volume is already published at ${req.targetPath} with different arguments`);
  }
  const elsewhere = others.filter((o) => o.targetPath !== req.targetPath);
  if (elsewhere.length > 0) {
    const multi = (m: Mode) => m === 'SINGLE_NODE_MULTI_WRITER' || m.startsWith('MULTI_NODE');
    if (!multi(req.mode) || elsewhere.some((o) => !multi(o.mode))) {
      throw new FailedPrecondition(
        `volume is already published at ${elsewhere[0]!.targetPath} and access mode ${req.mode} allows one target only (use SINGLE_NODE_MULTI_WRITER)`,
      );
    }
  }
  return 'new';
}

/**
 * Key-token pagination over items sorted by key: the token is the last key returned, the next
 * page starts after it. Unlike an index it stays right when entries are added or deleted
 * between pages (even the token's own entry). A token that is not a key we could have issued
 * (`validToken` false) → ABORTED, as the spec asks.
 */
export function paginate<T>(
  items: T[],
  key: (t: T) => string,
  maxEntries: number,
  token: string,
  validToken: (t: string) => boolean,
): { page: T[]; next: string } {
  if (maxEntries < 0) throw new InvalidArgument('max_entries must not be negative');
  if (token !== '' && !validToken(token)) throw new Aborted(`starting_token "${token}" is not valid`);
  const rest = token === '' ? items : items.filter((i) => key(i) > token);
  const page = maxEntries === 0 ? rest : rest.slice(0, maxEntries);
  return { page, next: page.length < rest.length ? key(page[page.length - 1]!) : '' };
}

/** QEMU's option syntax doubles commas inside values. */
function q(v: string): string {
  return v.replace(/,/g, ',,');
}

export interface QsdPlan {
  headFile: string;
  exportFile: string;
  qmpSocket: string;
  pidFile: string;
  /** Open the image with O_DIRECT (no host page cache under the FUSE export). */
  cacheDirect: boolean;
}

/** Node names inside each daemon: the export follows the active layer across snapshots. */
export const QSD_FILE_NODE = 'file0';
export const QSD_DISK_NODE = 'disk0';
export const QSD_EXPORT_ID = 'export0';

/**
 * One daemon per staged volume: it owns the volume's writable head (QEMU's image locking
 * enforces that) and exposes a raw FUSE view of the qcow2 chain for a loop device.
 * Zero writes become unallocated clusters (`detect-zeroes=unmap`), so mkfs and guest zeroing
 * keep volumes thin; discards punch holes.
 */
export function qsdArgv(p: QsdPlan): string[] {
  return [
    '--blockdev',
    `driver=file,node-name=${QSD_FILE_NODE},filename=${q(p.headFile)},aio=threads,cache.direct=${p.cacheDirect ? 'on' : 'off'},discard=unmap`,
    '--blockdev',
    `driver=qcow2,node-name=${QSD_DISK_NODE},file=${QSD_FILE_NODE},discard=unmap,detect-zeroes=unmap`,
    '--export',
    `type=fuse,id=${QSD_EXPORT_ID},node-name=${QSD_DISK_NODE},mountpoint=${q(p.exportFile)},writable=on`,
    '--chardev',
    `socket,id=qmp0,path=${q(p.qmpSocket)},server=on,wait=off`,
    '--monitor',
    'chardev=qmp0',
    '--pidfile',
    p.pidFile,
    '--daemonize',
  ];
}
