/**
 * The seam between the cluster agent (watching pods, writing their status) and whatever runs
 * VMs on the node (the VM core's VmController). The cluster side decides *which* VMs should run
 * and reports; the runtime starts, adopts and stops one VM inside an existing pod sandbox.
 */
import type { V1Pod } from '@kubernetes/client-node';
import type { DiscoveredSandbox } from './pod-discovery.js';

export interface VcpuThread {
  index: number;
  tid: number;
  cpus: number[];
}

/** What the agent publishes as `vm.podvirt.io/status` (JSON) and in metrics. */
export interface VmReport {
  phase: string;
  qemuPid: number;
  vcpuThreads: VcpuThread[];
  /** The VM's resolved device topology (JSON-able), persisted on the pod at first start. */
  topology: unknown;
  /** Unix socket of the serial console on the node, when the runtime offers one. */
  consoleSocket?: string;
  serialLog?: string;
  qmpSocket?: string;
  netns?: string;
  cgroup?: string;
}

export interface VmTarget {
  /** `<namespace>/<name>`. */
  key: string;
  pod: V1Pod;
  /** The raw `vm.podvirt.io/spec` annotation. */
  specText: string;
  sandbox: DiscoveredSandbox;
  /** The stored `vm.podvirt.io/topology`, parsed, to replay; undefined at first start. */
  topology: unknown;
}

export interface VmExit {
  key: string;
  /** `Stopped` (guest or agent shut it down) or `Failed` (crash, kill, panic). */
  phase: 'Stopped' | 'Failed';
  reason: string;
}

export interface VmRuntime {
  /** Starts the VM in the sandbox and returns once QEMU runs and vCPUs are pinned. */
  start(t: VmTarget): Promise<VmReport>;
  /** Re-attaches to a VM this node already runs for the pod (agent restart); undefined if none. */
  adopt(t: VmTarget): Promise<VmReport | undefined>;
  /** Graceful shutdown within `timeoutMs`, then kill; removes what the runtime made. Idempotent. */
  stop(key: string, timeoutMs: number): Promise<void>;
  /** Current report of a running VM. */
  report(key: string): Promise<VmReport | undefined>;
  /** Called when a VM ends on its own. */
  onExit(cb: (e: VmExit) => void): void;
  /** Releases connections without touching VMs (agent shutdown). */
  detachAll(): Promise<void>;
  /** A read-only QMP query on the VM's monitor (metrics: `query-blockstats`, `query-migrate`). */
  query?(key: string, command: string): Promise<unknown>;
}

export interface MigrationProgress {
  phase: string;
  percent?: number;
  transferredBytes?: number;
  remainingBytes?: number;
  downtimeMs?: number;
  totalTimeMs?: number;
  /** Node-local disks mirrored so far, and their total size. */
  diskCopiedBytes?: number;
  diskTotalBytes?: number;
}

/** What the target side asks of the source side. */
export interface MigrationRequest {
  migrationId: string;
  /** `<ns>/<name>` of the target pod. */
  target: string;
  /** The target agent's control endpoint on the migration network. */
  control: { host: string; port: number };
  token: string;
  /** Name in the target's TLS server certificate. */
  tlsHostname: string;
}

/**
 * The request as published on the source pod (`vm.podvirt.io/migration-request`): everything but
 * the token, which stays in the Secret `secretName` in the agents' namespace.
 */
export type PublishedMigrationRequest = Omit<MigrationRequest, 'token'> & { secretName: string };

export interface MigrationOutcome {
  outcome: 'completed' | 'failed' | 'cancelled';
  reason?: string;
  downtimeMs?: number;
  totalTimeMs?: number;
}

/**
 * Handing a migration target pod over to the migration machinery is this one call, made by the
 * agent of the target pod's node once the target sandbox is ready.
 */
export interface MigrationHandoff {
  /**
   * Starts the target QEMU (incoming, from the source's recorded topology) in `target`, asks the
   * source side to send through `ask` (the agent publishes the request on the source pod, where
   * the source node's agent picks it up), reports `progress`, and resolves with the target's
   * report once the VM runs here. Aborting `signal` (the target pod went away) cancels it: the
   * target QEMU is stopped, and the source, losing its peer, keeps the VM.
   */
  migrateInto(target: VmTarget, source: string, ask: (r: MigrationRequest) => Promise<void>, progress: (p: MigrationProgress) => void, signal?: AbortSignal): Promise<VmReport>;
  /**
   * The source half, run by the source node's agent for a running VM when a request appears;
   * `pod` is the source pod (which of its volumes are node-local decides what is mirrored).
   */
  migrateOut(key: string, request: MigrationRequest, progress: (p: MigrationProgress) => void, pod?: V1Pod): Promise<MigrationOutcome>;
}
