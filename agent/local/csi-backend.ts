import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { status } from '@grpc/grpc-js';
import { CsiClient, isGrpcCode } from '../../csi/client.js';
import { startCsiDriver, type CsiDriver } from '../../csi/server.js';
import { InvalidArgument } from '../../lib/errors.js';
import type { Logger } from '../../lib/log.js';
import type { ClaimSpec } from './manifest.js';
import type { VolumeBackend } from './backends.js';
import type { ClaimRecord, VolumeAttachmentRecord } from './pod-store.js';

export interface CsiBackendOptions {
  /** The CSI driver's own state dir (volumes, snapshots). */
  driverStateDir: string;
  /** Where staged volumes are mounted (the kubelet's `plugins/kubernetes.io/csi/.../globalmount`). */
  stagingDir: string;
  socketPath: string;
  /** Directory under which each pod's volumes are published (`<run>/<pod>/volumes/<volume>`). */
  runDir: string;
  nodeId?: string;
  log: Logger;
}

type Capability = { access_mode: { mode: 'SINGLE_NODE_WRITER' }; block?: Record<string, never>; mount?: { fs_type: string } };

function capability(mode: 'Block' | 'Filesystem', fsType: string | undefined): Capability {
  return mode === 'Block'
    ? { access_mode: { mode: 'SINGLE_NODE_WRITER' }, block: {} }
    : { access_mode: { mode: 'SINGLE_NODE_WRITER' }, mount: { fs_type: fsType ?? 'ext4' } };
}

/**
 * Volumes through the real CSI driver, hosted in the agent (its qemu-storage-daemon exports must
 * outlive `podvirt run`). The calls are the kubelet's: CreateVolume (the external provisioner's
 * part), NodeStageVolume to a per-volume staging dir, NodePublishVolume to the pod's path; and the
 * reverse on stop. Ownership goes to QEMU's uid/gid, as KubeVirt's handler does for block volumes.
 */
export class CsiBackend implements VolumeBackend {
  private driver: CsiDriver | undefined;
  private client: CsiClient | undefined;

  constructor(private readonly o: CsiBackendOptions) {}

  async start(): Promise<void> {
    await fs.mkdir(this.o.driverStateDir, { recursive: true, mode: 0o700 });
    this.driver = await startCsiDriver({
      socketPath: this.o.socketPath,
      nodeId: this.o.nodeId ?? 'local',
      stateDir: this.o.driverStateDir,
      logger: this.o.log,
    });
    this.client = new CsiClient(this.o.socketPath);
  }

  async stop(): Promise<void> {
    this.client?.close();
    await this.driver?.stop();
    this.client = undefined;
    this.driver = undefined;
  }

  private get c(): CsiClient {
    if (!this.client) throw new Error('CSI backend not started');
    return this.client;
  }

  async provision(claim: ClaimSpec, existing: ClaimRecord | undefined): Promise<ClaimRecord> {
    if (existing) return existing;
    if (claim.sizeBytes <= 0) {
      throw new InvalidArgument(
        `claim ${claim.name}: no PersistentVolumeClaim document in FILE and no volume from an earlier run (add the claim to FILE)`,
      );
    }
    const { volume } = await this.c.controller.CreateVolume({
      name: `pvc-${claim.name}`,
      capacity_range: { required_bytes: claim.sizeBytes },
      volume_capabilities: [capability(claim.volumeMode, claim.parameters.fsType)],
      parameters: claim.parameters,
    });
    return {
      name: claim.name,
      volumeId: volume!.volume_id,
      sizeBytes: Number(volume!.capacity_bytes),
      volumeMode: claim.volumeMode,
      ephemeral: claim.ephemeral,
      ...(claim.volumeMode === 'Filesystem' ? { fsType: claim.parameters.fsType ?? 'ext4' } : {}),
    };
  }

  async attach(pod: string, volume: string, claim: ClaimRecord, uid: number, gid: number): Promise<VolumeAttachmentRecord> {
    const cap = capability(claim.volumeMode, claim.fsType);
    const stagingPath = path.join(this.o.stagingDir, claim.volumeId.replace(/[^A-Za-z0-9._-]/g, '_'));
    const publishPath = path.join(this.o.runDir, pod, 'volumes', volume);
    await fs.mkdir(stagingPath, { recursive: true, mode: 0o750 });
    await fs.mkdir(path.dirname(publishPath), { recursive: true, mode: 0o755 });
    await this.c.node.NodeStageVolume({ volume_id: claim.volumeId, staging_target_path: stagingPath, volume_capability: cap });
    const rec: VolumeAttachmentRecord = { claim: claim.name, volume, volumeId: claim.volumeId, volumeMode: claim.volumeMode, stagingPath, publishPath };
    try {
      await this.c.node.NodePublishVolume({
        volume_id: claim.volumeId,
        staging_target_path: stagingPath,
        target_path: publishPath,
        volume_capability: cap,
        readonly: false,
      });
      // The unprivileged QEMU opens the device node (block) or writes into the filesystem root.
      if (claim.volumeMode === 'Block') {
        rec.hostNode = await hostNodeOwner(publishPath);
      }
      await fs.chown(publishPath, uid, gid);
      if (claim.volumeMode === 'Filesystem') await fs.chmod(publishPath, 0o770);
    } catch (e) {
      await this.detach(rec).catch(() => undefined);
      throw e;
    }
    return rec;
  }

  async detach(rec: VolumeAttachmentRecord): Promise<void> {
    if (rec.hostNode) await restoreNode(rec.publishPath, rec.hostNode);
    await this.c.node.NodeUnpublishVolume({ volume_id: rec.volumeId, target_path: rec.publishPath });
    await this.c.node.NodeUnstageVolume({ volume_id: rec.volumeId, staging_target_path: rec.stagingPath });
    await fs.rm(rec.stagingPath, { recursive: true, force: true });
  }

  async delete(claim: ClaimRecord): Promise<void> {
    try {
      await this.c.controller.DeleteVolume({ volume_id: claim.volumeId });
    } catch (e) {
      if (!isGrpcCode(e, status.NOT_FOUND)) throw e;
    }
  }
}

/** Gives the host's loop device node back its own owner and mode (it may be gone already: fine). */
async function restoreNode(file: string, node: { uid: number; gid: number; mode: number }): Promise<void> {
  try {
    await fs.chown(file, node.uid, node.gid);
    await fs.chmod(file, node.mode);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
}

/**
 * The owner a loop node should get back. A node some earlier crash left owned by another uid is
 * not recorded as it is: it gets the owner of /dev/loop-control, which udev (or the container
 * runtime) set the same way as the loop nodes it created.
 */
async function hostNodeOwner(file: string): Promise<{ uid: number; gid: number; mode: number }> {
  const st = await fs.stat(file);
  if (st.uid === 0) return { uid: st.uid, gid: st.gid, mode: st.mode & 0o7777 };
  const ctl = await fs.stat('/dev/loop-control').catch(() => undefined);
  return { uid: 0, gid: ctl?.gid ?? 0, mode: (ctl?.mode ?? 0o600) & 0o660 };
}
