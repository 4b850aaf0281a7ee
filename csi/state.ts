import * as path from 'node:path';
import { readJsonIfExists, writeJsonAtomic } from '../lib/fs-atomic.js';
import type { AccessType, FsType, Mode, PublishArgs } from './plan.js';

/**
 * The driver's durable state: one JSON document under the state dir, rewritten atomically
 * after every change, so a restarted driver knows every volume, snapshot, stage and publish.
 *
 * Storage model: every qcow2 file in the pool is a *layer*. A volume owns one writable head
 * layer; a snapshot owns one frozen layer; layers point at their backing parent. Nothing
 * copies data: snapshot = freeze the head and stack a new head on it; clone = a new head on a
 * frozen layer. A layer lives while a volume head or a snapshot reaches it through parent links
 * (reference counting by reachability), so deleting a volume or snapshot others are layered on
 * only hides it; its file goes when the last dependent goes.
 */

export interface LayerRec {
  id: string;
  parent: string | null;
}

export interface VolumeRec {
  id: string;
  name: string;
  capacityBytes: number;
  head: string;
  accessTypes: AccessType[];
  fsType: FsType;
  /** The StorageClass parameters as given (idempotency compares them). */
  parameters: Record<string, string>;
  source: { snapshotId: string } | { volumeId: string } | null;
  createdAt: string;
}

export interface SnapshotRec {
  id: string;
  name: string;
  sourceVolumeId: string;
  layer: string;
  sizeBytes: number;
  createdAt: string;
}

export interface StageRec {
  volumeId: string;
  stagingPath: string;
  type: AccessType;
  fsType: FsType;
  mountFlags: string[];
  mode: Mode;
  loopDevice: string;
}

/** A publish as recorded: the arguments NodePublishVolume compares, plus what it made. */
export interface PublishRec extends PublishArgs {
  volumeId: string;
  /**
   * A read-only block publish gets its own read-only loop device on the same export: the
   * kernel lets anyone open a device node for writing even on a read-only bind mount.
   */
  roLoop?: string;
}

export interface CsiState {
  version: 1;
  layers: Record<string, LayerRec>;
  volumes: Record<string, VolumeRec>;
  snapshots: Record<string, SnapshotRec>;
  /** Keyed by volume id: a volume is staged at most once per node. */
  stages: Record<string, StageRec>;
  /** Keyed by target path. */
  publishes: Record<string, PublishRec>;
}

export function emptyState(): CsiState {
  return { version: 1, layers: {}, volumes: {}, snapshots: {}, stages: {}, publishes: {} };
}

/** Layers nobody reaches any more: what may be deleted. */
export function unreachableLayers(s: CsiState): string[] {
  const live = new Set<string>();
  const mark = (id: string | null) => {
    while (id !== null && !live.has(id)) {
      live.add(id);
      id = s.layers[id]?.parent ?? null;
    }
  };
  for (const v of Object.values(s.volumes)) mark(v.head);
  for (const sn of Object.values(s.snapshots)) mark(sn.layer);
  return Object.keys(s.layers).filter((id) => !live.has(id));
}

/** Number of layers a volume's head sits on (its backing chain length, head included). */
export function chainDepth(s: CsiState, layer: string): number {
  let n = 0;
  for (let id: string | null = layer; id !== null; id = s.layers[id]?.parent ?? null) n++;
  return n;
}

/**
 * Persists the state; writes are serialised so a slow write can never overwrite a newer one.
 */
export class StateStore {
  private chain: Promise<void> = Promise.resolve();
  constructor(
    readonly file: string,
    public state: CsiState,
  ) {}

  static async open(stateDir: string): Promise<StateStore> {
    const file = path.join(stateDir, 'state.json');
    const loaded = await readJsonIfExists<CsiState>(file);
    if (loaded && loaded.version !== 1) throw new Error(`${file}: unsupported state version ${String(loaded.version)}`);
    return new StateStore(file, loaded ?? emptyState());
  }

  save(): Promise<void> {
    const next = this.chain.then(() => writeJsonAtomic(this.file, this.state));
    this.chain = next.catch(() => undefined);
    return next;
  }
}
