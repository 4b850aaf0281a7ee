import type { LocalPod, ClaimSpec } from './manifest.js';
import type { AttachmentRecord, ClaimRecord, VolumeAttachmentRecord } from './pod-store.js';
import type { PodSandbox } from '../sandbox/sandbox.js';
import type { DeviceGrant } from './devices.js';
import type { NetworkSelection } from './manifest.js';

/**
 * The seams between local mode's orchestration (agent.ts) and the real components. Each is
 * implemented once over the real thing (CSI driver, CNI plugin, VmController); the seam exists so
 * the orchestration reads as the kubelet's sequence, not as gRPC and argv plumbing.
 */

/** Volumes through the CSI driver: CreateVolume, NodeStage, NodePublish and back. */
export interface VolumeBackend {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Creates the claim's volume, or finds the one an earlier run created (same name → same volume). */
  provision(claim: ClaimSpec, existing: ClaimRecord | undefined): Promise<ClaimRecord>;
  /** Stages and publishes the volume for the pod; the published path is what QEMU opens. */
  attach(pod: string, volume: string, claim: ClaimRecord, uid: number, gid: number): Promise<VolumeAttachmentRecord>;
  detach(rec: VolumeAttachmentRecord): Promise<void>;
  delete(claim: ClaimRecord): Promise<void>;
}

/** Networks through the CNI plugin (ADD/DEL with the NAD's config into the pod's netns). */
export interface NetworkBackend {
  start(): Promise<void>;
  stop(): Promise<void>;
  add(input: {
    pod: LocalPod;
    containerId: string;
    netns: string;
    selection: NetworkSelection;
    ifname: string;
    config: Record<string, unknown>;
    mac: string | undefined;
    uid: number;
    gid: number;
    /** Live migration (agent/migration): a tap that stays silent until the VM runs on this side. */
    migrationTarget?: boolean;
  }): Promise<AttachmentRecord>;
  del(rec: AttachmentRecord, netns: string | undefined): Promise<void>;
}

export interface VcpuThread {
  index: number;
  tid: number;
  cpus: number[];
}

/** What the VM looks like now, from QMP and /proc. */
export interface VmLiveStatus {
  phase: string;
  qemuPid: number | undefined;
  vcpuThreads: VcpuThread[];
  serialLog: string;
  qmpSocket: string;
  serialSocket: string | undefined;
  topology: unknown;
  uid: number | undefined;
  detail?: Record<string, unknown>;
}

export interface VmStartInput {
  pod: LocalPod;
  runDir: string;
  sandbox: PodSandbox;
  volumes: VolumeAttachmentRecord[];
  attachments: AttachmentRecord[];
  devices: DeviceGrant;
  /** The topology recorded at first start, replayed so the guest's hardware does not drift. */
  topology: unknown;
  /** Live migration (agent/migration): QEMU waits with `-incoming defer`, pinned, not resumed. */
  incoming?: boolean;
  /** Called as start's own steps end (plan, QEMU up and pinned): where the time goes. */
  onStep?: (step: string) => void;
}

/** One VM per pod, through agent core's VmController. */
export interface VmBackend {
  /** uid/gid QEMU runs as (volumes and taps are handed to them). */
  readonly uid: number;
  readonly gid: number;
  start(input: VmStartInput): Promise<{ handle: unknown; topology: unknown }>;
  /** Re-attaches to a VM that kept running while the agent was down; false when it is gone. */
  adopt(name: string, handle: unknown, sandbox: PodSandbox): Promise<boolean>;
  status(name: string): Promise<VmLiveStatus | undefined>;
  /** Graceful shutdown within the timeout, then kill. Gone already is fine. */
  stop(name: string, timeoutMs: number): Promise<void>;
  /** Lets go of a VM without touching it (agent shutdown). */
  release(name: string): Promise<void>;
  hotplugDisk(name: string, d: { name: string; file: string; block: boolean }): Promise<unknown>;
  unplugDisk(name: string, disk: string, timeoutMs?: number): Promise<void>;
  hotplugNic(name: string, n: { name: string; tap: string }): Promise<unknown>;
  unplugNic(name: string, iface: string, timeoutMs?: number): Promise<void>;
  /** The VM controller itself (agent core's VmController), for callers inside agent/. */
  controller(name: string): unknown;
}
