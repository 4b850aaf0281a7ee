import { Unavailable } from '../../lib/errors.js';
import type { QmpClient } from './client.js';

/**
 * Typed wrappers for the QMP commands the agent uses. Anything else (migration, qom-*)
 * goes through `qmp.execute<Result>(name, args)` directly.
 */

/** `query-status` run states (qapi/run-state.json). */
export type RunState =
  | 'debug'
  | 'inmigrate'
  | 'internal-error'
  | 'io-error'
  | 'paused'
  | 'postmigrate'
  | 'prelaunch'
  | 'finish-migrate'
  | 'restore-vm'
  | 'running'
  | 'save-vm'
  | 'shutdown'
  | 'suspended'
  | 'watchdog'
  | 'guest-panicked'
  | 'colo';

export interface StatusInfo {
  running: boolean;
  status: RunState;
}

export interface CpuInfoFast {
  'cpu-index': number;
  'qom-path': string;
  /** Thread id as seen in QEMU's own PID namespace. */
  'thread-id': number;
  props?: { 'node-id'?: number; 'socket-id'?: number; 'core-id'?: number; 'thread-id'?: number };
  target: string;
}

export interface BlockInfo {
  device: string;
  qdev?: string;
  type: string;
  removable: boolean;
  locked: boolean;
  inserted?: { 'node-name'?: string; file: string; ro: boolean; drv: string; image?: { 'virtual-size': number } };
}

export interface PciDeviceInfo {
  bus: number;
  slot: number;
  function: number;
  class_info: { desc?: string; class: number };
  id: { device: number; vendor: number };
  qdev_id: string;
  pci_bridge?: { bus: { number: number; secondary: number; subordinate: number }; devices?: PciDeviceInfo[] };
}

export interface PciInfo {
  bus: number;
  devices: PciDeviceInfo[];
}

export const queryStatus = (q: QmpClient) => q.execute<StatusInfo>('query-status');
export const queryCpusFast = (q: QmpClient) => q.execute<CpuInfoFast[]>('query-cpus-fast');
export const queryBlock = (q: QmpClient) => q.execute<BlockInfo[]>('query-block');
export const queryPci = (q: QmpClient) => q.execute<PciInfo[]>('query-pci');
export const cont = (q: QmpClient) => q.execute<Record<string, never>>('cont');
export const stop = (q: QmpClient) => q.execute<Record<string, never>>('stop');
export const systemPowerdown = (q: QmpClient) => q.execute<Record<string, never>>('system_powerdown');
export const systemReset = (q: QmpClient) => q.execute<Record<string, never>>('system_reset');

/** `quit`: QEMU may close the socket before or after answering; both mean it is going. */
export async function quit(q: QmpClient): Promise<void> {
  try {
    await q.execute('quit', undefined, { timeoutMs: 10_000 });
  } catch (e) {
    if (!(e instanceof Unavailable)) throw e;
  }
}

/** `device_add`: `driver` and `id` plus driver properties (`bus`, `addr`, `drive`, `netdev`, `mac`, ...). */
export const deviceAdd = (q: QmpClient, props: { driver: string; id: string } & Record<string, unknown>) =>
  q.execute<Record<string, never>>('device_add', props);

/**
 * `device_del` and wait for the guest to let go: QEMU only *requests* removal and
 * reports completion with DEVICE_DELETED (`data.device` = id). Without a cooperating
 * guest OS the event never comes: this rejects with DeadlineExceeded after `timeoutMs`
 * and the device stays (a later event is still honoured by QEMU).
 */
export async function deviceDel(q: QmpClient, id: string, timeoutMs = 30_000): Promise<void> {
  const waiter = q.waitEvent('DEVICE_DELETED', { timeoutMs, match: (ev) => ev.data.device === id });
  try {
    await q.execute('device_del', { id });
  } catch (e) {
    waiter.cancel();
    throw e;
  }
  await waiter.promise;
}

export const blockdevAdd = (q: QmpClient, options: { 'node-name': string; driver: string } & Record<string, unknown>) =>
  q.execute<Record<string, never>>('blockdev-add', options);
export const blockdevDel = (q: QmpClient, nodeName: string) => q.execute<Record<string, never>>('blockdev-del', { 'node-name': nodeName });

export const netdevAdd = (q: QmpClient, options: { type: string; id: string } & Record<string, unknown>) =>
  q.execute<Record<string, never>>('netdev_add', options);
export const netdevDel = (q: QmpClient, id: string) => q.execute<Record<string, never>>('netdev_del', { id });

/** `block_resize` on a block node; `size` in bytes (QEMU rejects shrinking below the image's data only for some formats). */
export const blockResize = (q: QmpClient, nodeName: string, size: number) =>
  q.execute<Record<string, never>>('block_resize', { 'node-name': nodeName, size });

export const qomGet = <T = unknown>(q: QmpClient, path: string, property: string) => q.execute<T>('qom-get', { path, property });

/**
 * Where device `id` actually sits: the qdev id of its parent bus's owner (`pcie.0` for the
 * root complex, else the root port's id) and its slot/function. `query-pci` cannot tell this
 * before the guest numbers the buses, QOM can.
 */
export async function deviceAddress(q: QmpClient, id: string): Promise<{ bus: string; slot: number; function: number }> {
  const base = `/machine/peripheral/${id}`;
  const devfn = await qomGet<number>(q, base, 'addr');
  const busPath = await qomGet<string>(q, base, 'parent_bus');
  // "/machine/peripheral/rp1/rp1" behind a root port; "/machine/q35/pcie.0" on the root complex
  const parts = busPath.split('/').filter(Boolean);
  const bus = parts[parts.length - 1] ?? busPath;
  return { bus, slot: devfn >> 3, function: devfn & 7 };
}
