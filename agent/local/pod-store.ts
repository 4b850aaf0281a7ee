import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { readJsonIfExists, writeJsonAtomic } from '../../lib/fs-atomic.js';
import { sysErrorCode } from '../../lib/errors.js';
import { podRunDir, podStateDir, type LocalPaths } from './paths.js';

/** A claim's volume as the CSI driver created it. */
export interface ClaimRecord {
  name: string;
  volumeId: string;
  sizeBytes: number;
  volumeMode: 'Block' | 'Filesystem';
  ephemeral: boolean;
  /** Filesystem the volume was created with (Filesystem claims): staging must ask for the same one. */
  fsType?: string;
}

/**
 * What survives `stop`: the pod's claims (so `run` reattaches the same data) and the VM's resolved
 * device topology, recorded at first start and replayed on every later start (backpropagation: the
 * guest sees the same PCI addresses, MACs and serials every time).
 */
export interface PodRecord {
  name: string;
  createdAt: string;
  claims: Record<string, ClaimRecord>;
  /** The planner's resolved topology (opaque here), absent until the first start. */
  topology?: unknown;
  /** MAC per network attachment key (`<network>/<ifname>`), kept so the guest's NICs never change. */
  macs: Record<string, string>;
}

/** One CNI attachment of a running pod. */
export interface AttachmentRecord {
  /** The NAD's network name (the CNI config's `name`). */
  network: string;
  /** What the VM spec's `interfaces[].network` calls it: the NAD name, or `pod` for the pod network. */
  vmNetwork: string;
  ifname: string;
  containerId: string;
  /** The tap's MAC (from CNI). */
  mac: string;
  /** The guest NIC's MAC on this attachment (from the VM's topology): what DHCP leases are keyed by. */
  guestMac?: string;
  bridge: string | undefined;
  /** The guest's address (`ip/prefix`) and gateway from IPAM. */
  ip: string | undefined;
  gateway: string | undefined;
  /** The CNI config used for ADD (DEL must get the same). */
  config: Record<string, unknown>;
}

export interface VolumeAttachmentRecord {
  claim: string;
  volume: string;
  volumeId: string;
  volumeMode: 'Block' | 'Filesystem';
  stagingPath: string;
  publishPath: string;
  /**
   * Block volumes: owner and mode of the host device node before QEMU's uid was given it. The
   * published file is a bind mount of the host's /dev/loopN, so the chown lands on that node and
   * must be undone before the loop device can serve anyone else.
   */
  hostNode?: { uid: number; gid: number; mode: number };
}

/** What exists while the pod runs (lost on reboot, as /run is). */
export interface RuntimeRecord {
  name: string;
  manifest: string;
  startedAt: string;
  netnsName: string;
  netns: string;
  cgroup: string;
  cgroupProcs: string[];
  cpus: number[];
  memoryBytes?: number;
  attachments: AttachmentRecord[];
  volumes: VolumeAttachmentRecord[];
  devices: Record<string, string[]>;
  /** VmController's handle for re-adoption (pid, sockets): opaque here. */
  vm?: unknown;
  qemuPid?: number;
}

export class PodStore {
  constructor(private readonly paths: LocalPaths) {}

  async loadPod(name: string): Promise<PodRecord | undefined> {
    return readJsonIfExists<PodRecord>(path.join(podStateDir(this.paths, name), 'pod.json'));
  }

  async savePod(rec: PodRecord): Promise<void> {
    await writeJsonAtomic(path.join(podStateDir(this.paths, rec.name), 'pod.json'), rec);
  }

  async deletePod(name: string): Promise<void> {
    await fs.rm(podStateDir(this.paths, name), { recursive: true, force: true });
  }

  async loadRuntime(name: string): Promise<RuntimeRecord | undefined> {
    return readJsonIfExists<RuntimeRecord>(path.join(podRunDir(this.paths, name), 'runtime.json'));
  }

  async saveRuntime(rec: RuntimeRecord): Promise<void> {
    await writeJsonAtomic(path.join(podRunDir(this.paths, rec.name), 'runtime.json'), rec);
  }

  async deleteRuntime(name: string): Promise<void> {
    await fs.rm(podRunDir(this.paths, name), { recursive: true, force: true });
  }

  /** Names of pods with a runtime record (running, or left behind by a crash). */
  async runningNames(): Promise<string[]> {
    try {
      const out: string[] = [];
      for (const d of await fs.readdir(this.paths.runDir, { withFileTypes: true })) {
        if (d.isDirectory() && (await this.loadRuntime(d.name))) out.push(d.name);
      }
      return out.sort();
    } catch (e) {
      if (sysErrorCode(e) === 'ENOENT') return [];
      throw e;
    }
  }

  /** Names of pods with durable state (stopped ones keep their claims and topology). */
  async knownNames(): Promise<string[]> {
    try {
      return (await fs.readdir(path.join(this.paths.stateDir, 'pods'))).sort();
    } catch (e) {
      if (sysErrorCode(e) === 'ENOENT') return [];
      throw e;
    }
  }
}
