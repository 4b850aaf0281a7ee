/**
 * Live migration between two nodes' agents, composed from the migration driver (agent/migration:
 * TargetSide, SourceSide) and the VM core runtime.
 *
 * Target node (the target pod landed here): start QEMU from the source's recorded topology with
 * `-incoming defer` inside the target pod, pinned to the target's cpuset; open the driver's
 * control endpoint on `controlAddress`; publish the request (endpoint, id, token) on the source
 * pod; wait until the VM runs here. QEMU listens for RAM on the target pod's IP (the migration
 * network attachment's, when the pod names one with `vm.podvirt.io/migration-network`), so the
 * stream goes pod to pod, never through the agents.
 * Source node: on the request, run the driver's source half on the VM's QMP.
 *
 * Node-local disks (podvirt CSI volumes, see local-volumes.ts): the target pod's own claims were
 * provisioned empty on the target node; the target QEMU exports them over NBD on its migration
 * address (TLS with the migration's credentials), and the source mirrors its disks into them
 * before RAM moves. Volumes of other drivers are taken as shared and left alone.
 *
 * The guest's IPAM reservation (cni/ipam-owner.ts): with a cluster-wide IPAM both nodes hold the
 * VM's key, and only the node that ends up with the VM may release it. The agents mark the holds
 * of the pods' attachments (found in the CNI attachment records): the target's hold is made
 * provisional before its QEMU starts and promoted when the VM runs there; the source's is handed
 * over when its side completed. A failed migration needs nothing more: the target's DEL releases
 * nothing, the source keeps owning the reservation.
 */
import { statSync } from 'node:fs';
import * as path from 'node:path';
import type { V1Pod } from '@kubernetes/client-node';
import { activateTap } from '../../cni/activate.js';
import { readAttachments, type TapAttachment } from '../../cni/attachment-events.js';
import { handOverHold, promoteHold, provisionalHold, type HoldChange, type HoldRef } from '../../cni/ipam-owner.js';
import { Aborted, FailedPrecondition, errorMessage } from '../../lib/errors.js';
import type { Logger } from '../../lib/log.js';
import { DEFAULT_MIGRATION_CONFIG, resolveMigrationConfig, type MigrationConfig } from '../migration/config.js';
import { podVmInput } from '../spec/index.js';
import { ControlClient, newMigrationToken } from '../migration/control.js';
import type { MirroredDisk } from '../migration/plan.js';
import { postCopySupported } from '../migration/postcopy-support.js';
import type { MigrationProgress as DriverProgress } from '../migration/progress.js';
import { SourceSide } from '../migration/source.js';
import { TargetSide } from '../migration/target.js';
import { nodeLocalDisks, nodeLocalVolumes, type VolumeLookup } from './local-volumes.js';
import type { VmController } from '../vm/index.js';
import type { VmCoreRuntime } from './vm-core-runtime.js';
import type { MigrationHandoff, MigrationOutcome, MigrationProgress, MigrationRequest, VmReport, VmTarget } from './vm-runtime.js';

export const ANN_MIGRATION_NETWORK = 'vm.podvirt.io/migration-network';
const NETWORK_STATUS = 'k8s.v1.cni.cncf.io/network-status';

export interface KubeMigrationOptions {
  runtime: VmCoreRuntime;
  /** Address of this agent's control endpoint, reachable from the other nodes' agents (the node IP). */
  controlAddress: string;
  config?: MigrationConfig;
  log: Logger;
  /** How long a target waits for the source to finish. */
  timeoutMs?: number;
  /**
   * How long a target waits for the source agent to connect after asking (default 120 s): a
   * source that cannot act (its agent is down, cannot read the Secret, has no such VM) never
   * connects, and the target should not hold its pod for the whole migration timeout.
   */
  connectTimeoutMs?: number;
  /**
   * PVC/PV reads that tell node-local volumes from shared ones. Without it every volume counts
   * as shared (nothing is mirrored).
   */
  volumes?: VolumeLookup;
  /** `vm.unprivileged_userfaultfd` (tests point it elsewhere). */
  userfaultfdSysctl?: string;
  /**
   * Where the CNI plugin records attachments (cni/attachment-events.ts): the keyed IPAM holds
   * of the pods are marked from them. Without it no hold is marked.
   */
  attachmentDir?: string;
  /** The migration driver's halves (tests replace them). */
  sides?: MigrationSides;
}

export interface MigrationSides {
  source: (o: ConstructorParameters<typeof SourceSide>[0]) => Pick<SourceSide, 'run' | 'on'>;
  target: (o: ConstructorParameters<typeof TargetSide>[0]) => TargetSide;
}

const realSides: MigrationSides = { source: (o) => new SourceSide(o), target: (o) => new TargetSide(o) };

/**
 * A pod's tap attachments (pure): records of the pod (by `K8S_POD_*`) and, when both sides know
 * it, of its network namespace; a record that matches neither way, or contradicts one, is
 * someone else's.
 */
export function podAttachments(attachments: readonly TapAttachment[], pod: V1Pod, netnsId?: { ino: number; dev: number }): TapAttachment[] {
  const m = pod.metadata ?? {};
  return attachments.filter((a) => {
    const byPod = a.pod ? a.pod.namespace === m.namespace && a.pod.name === m.name && (!a.pod.uid || !m.uid || a.pod.uid === m.uid) : undefined;
    const byNetns = netnsId && a.netnsId ? a.netnsId.ino === netnsId.ino && a.netnsId.dev === netnsId.dev : undefined;
    return byPod !== false && byNetns !== false && (byPod === true || byNetns === true);
  });
}

/** The keyed IPAM holds of a pod's tap attachments (pure). */
export function podIpamHolds(attachments: readonly TapAttachment[], pod: V1Pod, netnsId?: { ino: number; dev: number }): HoldRef[] {
  return podAttachments(attachments, pod, netnsId).flatMap((a) =>
    a.ipamKey && a.stateDir ? [{ stateDir: a.stateDir, network: a.network, key: a.ipamKey, ifname: a.ifname, containerId: a.containerId }] : [],
  );
}

function netnsIdOf(p: string | undefined): { ino: number; dev: number } | undefined {
  if (!p) return undefined;
  try {
    const s = statSync(p);
    return { ino: s.ino, dev: s.dev };
  } catch {
    return undefined;
  }
}

const HOLD_MARKS = { provisional: provisionalHold, promote: promoteHold, 'hand-over': handOverHold } as const;

/** Where the target QEMU listens: the migration attachment's IP, else the pod IP (pure). */
export function migrationAddressOf(pod: V1Pod): string {
  const nad = pod.metadata?.annotations?.[ANN_MIGRATION_NETWORK];
  if (nad) {
    let status: Array<{ name?: string; ips?: string[] }> = [];
    try {
      status = JSON.parse(pod.metadata?.annotations?.[NETWORK_STATUS] ?? '[]') as typeof status;
    } catch {
      /* below */
    }
    const full = nad.includes('/') ? nad : `${pod.metadata?.namespace ?? 'default'}/${nad}`;
    const ip = status.find((s) => s.name === full || s.name === nad)?.ips?.[0];
    if (!ip) throw new FailedPrecondition(`migration network ${nad} has no address on pod ${pod.metadata?.name} (${NETWORK_STATUS})`);
    return ip;
  }
  const ip = pod.status?.podIP;
  if (!ip) throw new FailedPrecondition(`target pod ${pod.metadata?.name} has no IP yet`);
  return ip;
}

/**
 * Where QEMU's migration credentials go: a directory beside QEMU's sockets as QEMU sees it
 * (`tlsQemuView`), written by the agent through the path the controller maps it to (QEMU may
 * run in the pod's mount namespace, where `/proc/<qemu>/root/...` reaches it).
 */
function tlsDirs(vm: Pick<VmController, 'stateSnapshot' | 'agentPath'>, leaf: string): { tlsQemuDir: string; tlsQemuView: string } {
  const view = path.join(vm.stateSnapshot.runDir, leaf);
  return { tlsQemuDir: vm.agentPath(view), tlsQemuView: view };
}

/** The driver's progress as the pods show it (pure): while disks are mirrored, the percentage is theirs, as in local mode. */
export function toProgress(p: DriverProgress): MigrationProgress {
  const mirroring = p.phase === 'MirroringDisks' && p.disks && p.disks.bytesTotal > 0;
  const pct = mirroring
    ? Math.min(100, Math.round((100 * p.disks!.bytesCopied) / p.disks!.bytesTotal))
    : p.bytesTotal > 0
      ? Math.min(100, Math.round((100 * (p.bytesTotal - p.bytesRemaining)) / p.bytesTotal))
      : undefined;
  return {
    phase: p.phase,
    ...(pct !== undefined ? { percent: p.phase === 'Completed' ? 100 : pct } : {}),
    transferredBytes: p.bytesTransferred,
    remainingBytes: p.bytesRemaining,
    ...(p.disks ? { diskCopiedBytes: p.disks.bytesCopied, diskTotalBytes: p.disks.bytesTotal } : {}),
    ...(p.downtimeMs !== undefined ? { downtimeMs: p.downtimeMs } : {}),
    ...(p.totalTimeMs !== undefined ? { totalTimeMs: p.totalTimeMs } : {}),
  };
}

export class KubeMigration implements MigrationHandoff {
  private readonly config: MigrationConfig;
  private readonly sides: MigrationSides;
  constructor(private readonly o: KubeMigrationOptions) {
    this.config = o.config ?? DEFAULT_MIGRATION_CONFIG;
    this.sides = o.sides ?? realSides;
  }

  /**
   * Marks the keyed IPAM holds of `pod`'s attachments; throws the first failure after trying
   * them all (the caller decides whether that matters).
   */
  private async markHolds(mark: keyof typeof HOLD_MARKS, pod: V1Pod | undefined, netns: string | undefined): Promise<Array<HoldRef & { change: HoldChange }>> {
    if (!this.o.attachmentDir || !pod) return [];
    const holds = podIpamHolds(readAttachments(this.o.attachmentDir), pod, netnsIdOf(netns));
    const done: Array<HoldRef & { change: HoldChange }> = [];
    let failure: unknown;
    for (const h of holds) {
      try {
        const change = await HOLD_MARKS[mark](h, this.o.log);
        done.push({ ...h, change });
      } catch (e) {
        failure ??= e;
        this.o.log.error({ mark, hold: h, err: errorMessage(e) }, 'cannot mark an IPAM hold');
      }
    }
    if (done.length) this.o.log.info({ mark, pod: `${pod.metadata?.namespace}/${pod.metadata?.name}`, holds: done.map((d) => `${d.network}/${d.key}@${d.ifname}: ${d.change}`) }, 'IPAM holds marked');
    if (failure !== undefined) throw failure;
    return done;
  }

  /**
   * Switch-over on the target: opens the taps the CNI made silent for a migration target (ADD
   * with `migrationTarget`), so the VM's frames reach the bridge once QEMU announces it here.
   */
  private async openTargetTaps(target: VmTarget): Promise<void> {
    if (!this.o.attachmentDir) return;
    const silent = podAttachments(readAttachments(this.o.attachmentDir), target.pod, netnsIdOf(target.sandbox.netns)).filter((a) => a.migrationTarget);
    await Promise.all(silent.map((a) => activateTap({ netns: target.sandbox.netns, ifname: a.ifname })));
    if (silent.length) this.o.log.info({ pod: target.key, taps: silent.map((a) => a.ifname) }, 'target taps opened');
  }

  async migrateInto(target: VmTarget, source: string, ask: (r: MigrationRequest) => Promise<void>, progress: (p: MigrationProgress) => void, signal?: AbortSignal): Promise<VmReport> {
    if (signal?.aborted) throw new Aborted('migration cancelled: the target pod is going away');
    const address = migrationAddressOf(target.pod);
    // Before anything can fail: a target whose ADD was not flagged as one owns its fresh hold of a
    // cluster-wide reservation, and its DEL after a failure would free the source's address.
    // Failing here would not help (the target pod goes, and its DEL releases all the same), so
    // the migration goes on; a success promotes the hold anyway.
    await this.markHolds('provisional', target.pod, target.sandbox.netns).catch(() => undefined);
    // Decided before QEMU starts: a volume nobody can classify fails the migration, not the VM.
    const localDisks = this.o.volumes ? nodeLocalDisks(target.pod, await nodeLocalVolumes(target.pod, this.o.volumes)) : [];
    const owner = this.o.runtime.runAs(target.pod);
    const uffd = await postCopySupported({ qemuUid: owner.uid, ...(this.o.userfaultfdSysctl ? { sysctlPath: this.o.userfaultfdSysctl } : {}) });
    const vm = await this.o.runtime.startIncoming(target);
    const migrationId = `${target.pod.metadata!.uid!.slice(0, 8)}${Date.now().toString(36)}`;
    const token = newMigrationToken();
    const runDir = this.o.runtime.runDirOf(target.pod);
    const side = this.sides.target({
      migrationId,
      token,
      qmp: vm.qmp,
      migrationAddress: address,
      localDiskNodes: localDisks.map((d) => d.node),
      fillAllLocalDisks: true,
      postCopySupported: uffd,
      tlsWorkDir: path.join(runDir, '..', `${path.basename(runDir)}-mig-ca`),
      ...tlsDirs(vm, 'mig-tls'),
      qemuOwner: owner,
      onResume: () => this.openTargetTaps(target),
      log: this.o.log,
    });
    try {
      const port = await side.listen(this.o.controlAddress, 0);
      const done = new Promise<void>((resolve, reject) => {
        side.once('resumed', () => resolve());
        side.once('failed', (why: string) => reject(new FailedPrecondition(`migration failed: ${why}`)));
      });
      side.on('status', (status: string) => progress({ phase: status }));
      await ask({ migrationId, target: target.key, control: { host: this.o.controlAddress, port }, token, tlsHostname: `${migrationId}.migration.podvirt.io` });
      progress({ phase: 'requested' });
      let timer: NodeJS.Timeout | undefined;
      let connectTimer: NodeJS.Timeout | undefined;
      let onAbort: (() => void) | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new FailedPrecondition(`migration from ${source} did not finish within ${(this.o.timeoutMs ?? 900_000) / 1000} s`)), this.o.timeoutMs ?? 900_000);
        const connectMs = this.o.connectTimeoutMs ?? 120_000;
        connectTimer = setTimeout(() => reject(new FailedPrecondition(`the source agent did not connect within ${connectMs / 1000} s (is the agent of ${source}'s node running, and can it read the migration Secret?)`)), connectMs);
        side.server.once('authenticated', () => clearTimeout(connectTimer));
        onAbort = () => reject(new Aborted('migration cancelled: the target pod is going away'));
        signal?.addEventListener('abort', onAbort);
      });
      try {
        await Promise.race([done, timeout]);
      } finally {
        clearTimeout(timer);
        clearTimeout(connectTimer);
        if (onAbort) signal?.removeEventListener('abort', onAbort);
      }
      const report = await this.o.runtime.report(target.key);
      if (!report) throw new FailedPrecondition('target VM vanished after the migration');
      // The VM runs here: this node owns its address now. A hold left provisional only means its
      // last DEL releases nothing (a leak, never a stolen address), so a failure here is logged.
      await this.markHolds('promote', target.pod, target.sandbox.netns).catch(() => undefined);
      return { ...report, netns: target.sandbox.netns, cgroup: target.sandbox.cgroup.display };
    } catch (e) {
      this.o.log.warn({ pod: target.key, err: errorMessage(e) }, 'incoming migration failed; stopping the target VM');
      await this.o.runtime.stop(target.key, 1000).catch(() => undefined);
      throw e;
    } finally {
      await side.close().catch(() => undefined);
    }
  }

  /** The source's node-local disks with their sizes, as the driver mirrors them. */
  private async mirroredDisks(pod: V1Pod | undefined, qmp: { execute<T>(cmd: string): Promise<T> }): Promise<MirroredDisk[]> {
    if (!pod || !this.o.volumes) return [];
    const local = nodeLocalDisks(pod, await nodeLocalVolumes(pod, this.o.volumes));
    if (!local.length) return [];
    const blocks = await qmp.execute<Array<{ inserted?: { 'node-name'?: string; image?: { 'virtual-size': number } } }>>('query-block');
    return local.map((d) => {
      const size = blocks.find((b) => b.inserted?.['node-name'] === d.node)?.inserted?.image?.['virtual-size'];
      if (!size) throw new FailedPrecondition(`disk ${d.disk}: no block node ${d.node} in the running VM`);
      // Same node name on both sides: the target runs from the source's recorded topology.
      return { sourceNode: d.node, targetNode: d.node, sizeBytes: size };
    });
  }

  /** Tells a waiting target that this source will not send (it would otherwise wait for its timeout). */
  private async refuse(req: MigrationRequest, reason: string): Promise<void> {
    try {
      const c = await ControlClient.connect({ host: req.control.host, port: req.control.port, migrationId: req.migrationId, token: req.token, timeoutMs: 5000 });
      c.notify('abort', { reason });
      await new Promise((r) => setTimeout(r, 50));
      c.close();
    } catch (e) {
      this.o.log.warn({ migrationId: req.migrationId, err: errorMessage(e) }, 'cannot tell the target that the migration is off');
    }
  }

  async migrateOut(key: string, req: MigrationRequest, progress: (p: MigrationProgress) => void, pod?: V1Pod): Promise<MigrationOutcome> {
    const vm = this.o.runtime.controller(key);
    if (!vm) {
      await this.refuse(req, 'no running VM on the source node');
      throw new FailedPrecondition(`no running VM for ${key} on this node`);
    }
    let disks: MirroredDisk[];
    let uffd: boolean;
    let config: MigrationConfig;
    try {
      // The VM spec's `migration:` block tunes its own migrations over the agent's defaults.
      config = resolveMigrationConfig([{ where: 'spec.migration', value: pod ? podVmInput(pod).spec.migration : undefined }], this.config);
      disks = await this.mirroredDisks(pod, vm.qmp);
      uffd = await postCopySupported({ qemuUid: vm.stateSnapshot.sandbox.uid, ...(this.o.userfaultfdSysctl ? { sysctlPath: this.o.userfaultfdSysctl } : {}) });
    } catch (e) {
      await this.refuse(req, errorMessage(e));
      throw e;
    }
    const side = this.sides.source({
      migrationId: req.migrationId,
      token: req.token,
      control: req.control,
      qmp: vm.qmp,
      config,
      memoryBytes: vm.topology.memoryBytes,
      disks,
      postCopySupported: uffd,
      tlsHostname: req.tlsHostname,
      ...tlsDirs(vm, `mig-tls-${req.migrationId}`),
      qemuOwner: { uid: vm.stateSnapshot.sandbox.uid, gid: vm.stateSnapshot.sandbox.gid },
      log: this.o.log,
    });
    side.on('progress', (p: DriverProgress) => progress(toProgress(p)));
    const r = await side.run();
    if (r.outcome === 'completed') {
      // Before the caller stops QEMU and reports: the pod's deletion (and its DEL) follows that.
      const snap = vm.stateSnapshot;
      await this.markHolds('hand-over', pod, snap.sandbox.netns ?? `/proc/${snap.qemuPid}/ns/net`).catch(() => undefined);
    }
    return {
      outcome: r.outcome,
      ...(r.reason ? { reason: r.reason } : {}),
      ...(r.downtimeMs !== undefined ? { downtimeMs: r.downtimeMs } : {}),
      ...(r.totalTimeMs !== undefined ? { totalTimeMs: r.totalTimeMs } : {}),
    };
  }
}
