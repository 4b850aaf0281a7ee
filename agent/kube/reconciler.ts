/**
 * Level-based reconciliation of this node's VM pods: for each pod key it compares what should run
 * (a pod bound here, carrying `vm.podvirt.io/spec`, not terminating or finished) with what runs,
 * and closes the gap. Work per key is serialised and coalesced, so repeated or replayed watch
 * events (re-lists, reconnects) never start a VM twice.
 */
import type { V1Pod } from '@kubernetes/client-node';
import { Backoff } from '../../lib/backoff.js';
import { errorMessage, isPodvirtError } from '../../lib/errors.js';
import type { Logger } from '../../lib/log.js';
import type { EventRecorder } from './event-recorder.js';
import type { MigrationSecretStore } from './migration-secrets.js';
import { ANN_CONTAINER, ANN_MIGRATE_FROM, ANN_MIGRATION, ANN_MIGRATION_REQUEST, ANN_SPEC, ANN_STATUS, ANN_TOPOLOGY, COND_VM_READY, DEFAULT_CONTAINER } from './names.js';
import { podVmInput } from '../spec/index.js';
import { runtimeIdOf, type DiscoveredSandbox } from './pod-discovery.js';
import { podKey } from './pod-informer.js';
import type { PodRef, PodWriter } from './pod-writer.js';
import type { MigrationHandoff, MigrationProgress, MigrationRequest, PublishedMigrationRequest, VmExit, VmReport, VmRuntime, VmTarget } from './vm-runtime.js';

export interface ReconcilerDeps {
  node: string;
  runtime: VmRuntime;
  writer: PodWriter;
  events: EventRecorder;
  /** Current pod for a key (the informer's cache). */
  getPod: (key: string) => V1Pod | undefined;
  discover: (podUid: string, containerId: string | undefined) => Promise<DiscoveredSandbox>;
  migration?: MigrationHandoff;
  /** Where migration tokens live (a Secret per migration in the agents' namespace); required for migrations. */
  secrets?: MigrationSecretStore;
  onMigrationProgress?: (key: string, p: MigrationProgress) => void;
  log: Logger;
  stopTimeoutMs?: number;
  /** Retry delays while the pod's container is not running yet or a start failed. */
  retryInitialMs?: number;
  retryMaxMs?: number;
}

type VmState =
  | { state: 'running'; uid: string; report: VmReport }
  | { state: 'exited'; uid: string; phase: 'Stopped' | 'Failed'; reason: string };

export interface ReconcilerStats {
  starts: number;
  adoptions: number;
  stops: number;
  failures: number;
  migrations: number;
}

export function wantsVm(pod: V1Pod | undefined, node: string): pod is V1Pod {
  if (!pod?.metadata?.annotations?.[ANN_SPEC]) return false;
  if (pod.spec?.nodeName !== node) return false;
  if (pod.metadata.deletionTimestamp) return false;
  const phase = pod.status?.phase;
  return phase !== 'Succeeded' && phase !== 'Failed';
}

/** The container whose namespaces QEMU joins, and its runtime ID if the kubelet reported one. */
export function computeContainerId(pod: V1Pod): string | undefined {
  const want = pod.metadata?.annotations?.[ANN_CONTAINER] ?? (pod.spec?.containers?.some((c) => c.name === DEFAULT_CONTAINER) ? DEFAULT_CONTAINER : pod.spec?.containers?.[0]?.name);
  const st = pod.status?.containerStatuses?.find((c) => c.name === want);
  return st?.state?.running ? runtimeIdOf(st.containerID) : undefined;
}

export class PodReconciler {
  readonly vms = new Map<string, VmState>();
  readonly stats: ReconcilerStats = { starts: 0, adoptions: 0, stops: 0, failures: 0, migrations: 0 };
  private readonly running = new Map<string, Promise<void>>();
  private readonly dirty = new Set<string>();
  private readonly retries = new Map<string, { backoff: Backoff; timer: NodeJS.Timeout | undefined }>();
  private readonly lastError = new Map<string, string>();
  private readonly ac = new AbortController();
  /** Migration ids this agent already serves as the source. */
  private readonly outgoing = new Set<string>();
  /** Incoming migrations by target pod key: aborted when that pod goes away. */
  private readonly incoming = new Map<string, { uid: string; abort: AbortController }>();

  constructor(private readonly d: ReconcilerDeps) {
    d.runtime.onExit((e) => this.onVmExit(e));
  }

  /** Queues a key; safe to call for every watch event. */
  enqueue(key: string): void {
    if (this.ac.signal.aborted) return;
    const inc = this.incoming.get(key);
    if (inc) {
      // The target's reconcile is busy with the migration: a deleted target pod cancels it now.
      const pod = this.d.getPod(key);
      if (!wantsVm(pod, this.d.node) || pod.metadata?.uid !== inc.uid) inc.abort.abort();
    }
    if (this.running.has(key)) {
      this.dirty.add(key);
      return;
    }
    const p = (async () => {
      do {
        this.dirty.delete(key);
        try {
          await this.reconcile(key);
        } catch (e) {
          this.d.log.error({ pod: key, err: errorMessage(e) }, 'reconcile failed');
        }
      } while (this.dirty.has(key) && !this.ac.signal.aborted);
    })().finally(() => this.running.delete(key));
    this.running.set(key, p);
  }

  /** Resolves when no reconcile is in flight (tests, shutdown). */
  async idle(): Promise<void> {
    while (this.running.size) await Promise.allSettled([...this.running.values()]);
  }

  /** Stops reconciling; running VMs are left alone (they outlive the agent). */
  async shutdown(): Promise<void> {
    this.ac.abort();
    // An incoming migration does not survive its agent (the driver's target half lives here).
    for (const i of this.incoming.values()) i.abort.abort();
    for (const r of this.retries.values()) if (r.timer) clearTimeout(r.timer);
    await this.idle();
  }

  private async reconcile(key: string): Promise<void> {
    const pod = this.d.getPod(key);
    const want = wantsVm(pod, this.d.node);
    const have = this.vms.get(key);
    if (have && (!want || have.uid !== pod.metadata?.uid)) {
      this.clearRetry(key);
      if (have.state === 'running') await this.stopVm(key, pod?.metadata?.uid === have.uid ? pod : undefined);
      // An ended VM still has files on the node (run dir, state): the runtime's stop removes them.
      else await this.d.runtime.stop(key, 1000).catch((e: unknown) => this.d.log.warn({ pod: key, err: errorMessage(e) }, 'cleanup failed'));
      this.vms.delete(key);
    }
    if (!want) {
      this.clearRetry(key);
      return;
    }
    const now = this.vms.get(key);
    if (now) {
      if (now.state === 'running') await this.refresh(key, pod, now);
      return;
    }
    await this.bringUp(key, pod);
  }

  private async bringUp(key: string, pod: V1Pod): Promise<void> {
    const uid = pod.metadata!.uid!;
    try {
      // The spec and the pod's volumes checked before anything waits on the sandbox.
      podVmInput(pod);
    } catch (e) {
      await this.fail(key, pod, 'InvalidSpec', errorMessage(e), false);
      return;
    }
    // Until the kubelet reports the container running (and the pod its IP), there is nothing to
    // join; that status update re-queues the pod.
    const containerId = computeContainerId(pod);
    if (!containerId) return;
    let sandbox: DiscoveredSandbox;
    try {
      sandbox = await this.d.discover(uid, containerId);
    } catch (e) {
      // The kubelet has not started the container yet: expected, quiet retry.
      this.d.log.debug({ pod: key, err: errorMessage(e) }, 'pod sandbox not found yet');
      this.scheduleRetry(key);
      return;
    }
    const ann = pod.metadata?.annotations ?? {};
    let topology: unknown;
    try {
      topology = ann[ANN_TOPOLOGY] ? JSON.parse(ann[ANN_TOPOLOGY]) : undefined;
    } catch (e) {
      await this.fail(key, pod, 'InvalidTopology', `annotation ${ANN_TOPOLOGY} is not JSON: ${errorMessage(e)}`, false);
      return;
    }
    const target: VmTarget = { key, pod, specText: ann[ANN_SPEC]!, sandbox, topology };
    let report: VmReport;
    let how: 'Started' | 'Adopted' | 'Migrated';
    let migrating: string | undefined;
    try {
      const adopted = await this.d.runtime.adopt(target);
      const ended = endedBefore(ann[ANN_STATUS]);
      if (adopted) {
        report = adopted;
        how = 'Adopted';
      } else if (ended) {
        // The pod already says its VM ended (shut down, crashed, migrated away, failed migration):
        // a restarted agent must not boot it again behind the user's back.
        this.vms.set(key, { state: 'exited', uid, phase: ended.phase === 'Stopped' ? 'Stopped' : 'Failed', reason: ended.reason ?? ended.phase });
        return;
      } else if (ann[ANN_MIGRATE_FROM]) {
        if (!this.d.migration || !this.d.secrets) {
          await this.fail(key, pod, 'MigrationUnavailable', 'this agent has no migration support; target pod left waiting', false);
          return;
        }
        const source = ann[ANN_MIGRATE_FROM];
        await this.d.events.record(pod, 'Normal', 'Migrating', `migrating VM from ${source}`);
        migrating = source;
        const [sns, sname] = source.split('/') as [string, string];
        const secrets = this.d.secrets;
        let secretOf: string | undefined;
        const cancel = new AbortController();
        this.incoming.set(key, { uid, abort: cancel });
        try {
          report = await this.d.migration.migrateInto(
            target,
            source,
            async (req) => {
              // The token goes into a Secret only the agents can read; the pod gets its name.
              const secretName = await secrets.create(req.migrationId, req.token, { source, target: key });
              secretOf = req.migrationId;
              const published: PublishedMigrationRequest = { migrationId: req.migrationId, target: req.target, control: req.control, tlsHostname: req.tlsHostname, secretName };
              await this.d.writer.annotate({ namespace: sns, name: sname }, { [ANN_MIGRATION_REQUEST]: JSON.stringify(published) });
            },
            (p) => {
              this.d.onMigrationProgress?.(key, p);
              void this.d.writer.annotate(this.ref(pod), { [ANN_MIGRATION]: JSON.stringify({ source, ...p }) }).catch(() => undefined);
            },
            cancel.signal,
          );
        } finally {
          this.incoming.delete(key);
          // Ended either way: the token is worthless from now on, and so is its Secret.
          if (secretOf) await secrets.delete(secretOf).catch((e: unknown) => this.d.log.warn({ pod: key, err: errorMessage(e) }, 'cannot delete the migration Secret'));
        }
        await this.d.writer.annotate(this.ref(pod), { [ANN_MIGRATION]: JSON.stringify({ source, phase: 'completed', percent: 100 }) }).catch(() => undefined);
        how = 'Migrated';
      } else {
        report = await this.d.runtime.start(target);
        how = 'Started';
      }
    } catch (e) {
      if (migrating) {
        // A failed migration is final for this target pod: the source keeps running; a new
        // attempt is a new target pod.
        await this.d.writer.annotate(this.ref(pod), { [ANN_MIGRATION]: JSON.stringify({ source: migrating, phase: 'failed', message: errorMessage(e) }) }).catch(() => undefined);
        await this.fail(key, pod, 'MigrationFailed', errorMessage(e), false);
        return;
      }
      const invalid = isPodvirtError(e) && e.kind === 'InvalidArgument';
      await this.fail(key, pod, invalid ? 'InvalidSpec' : 'StartFailed', errorMessage(e), !invalid);
      return;
    }
    this.clearRetry(key);
    this.lastError.delete(key);
    this.vms.set(key, { state: 'running', uid, report });
    if (how === 'Started') this.stats.starts++;
    else if (how === 'Adopted') this.stats.adoptions++;
    else this.stats.migrations++;
    const annotations: Record<string, string | null> = { [ANN_STATUS]: statusJson(report) };
    if (!ann[ANN_TOPOLOGY] && report.topology !== undefined) annotations[ANN_TOPOLOGY] = JSON.stringify(report.topology);
    await this.write(key, pod, annotations, { status: 'True', reason: how === 'Started' ? 'Running' : how, message: `QEMU pid ${report.qemuPid}` });
    if (how !== 'Adopted') {
      await this.d.events.record(pod, 'Normal', how, `VM ${how.toLowerCase()} on ${this.d.node}: QEMU pid ${report.qemuPid}, ${report.vcpuThreads.length} vCPU(s) pinned`);
    }
    this.d.log.info({ pod: key, qemuPid: report.qemuPid, how }, 'VM running');
  }

  /** Source side: a target agent asked for this VM; runs beside the per-key queue (it takes long). */
  private maybeMigrateOut(key: string, pod: V1Pod): void {
    const raw = pod.metadata?.annotations?.[ANN_MIGRATION_REQUEST];
    if (!raw || !this.d.migration || !this.d.secrets) return;
    let published: PublishedMigrationRequest;
    try {
      published = JSON.parse(raw) as PublishedMigrationRequest;
    } catch {
      return;
    }
    if (typeof published.migrationId !== 'string' || !published.migrationId || this.outgoing.has(published.migrationId)) return;
    this.outgoing.add(published.migrationId);
    const ref = this.ref(pod);
    const secrets = this.d.secrets;
    void (async () => {
      await this.d.events.record(pod, 'Normal', 'Migrating', `sending VM to ${published.target}`);
      let outcome;
      const req: MigrationRequest = { migrationId: published.migrationId, target: published.target, control: published.control, tlsHostname: published.tlsHostname, token: '' };
      try {
        // Only a request whose token the agents themselves stored counts: pod writers cannot forge one.
        req.token = await secrets.token(published.migrationId, String(published.secretName));
        outcome = await this.d.migration!.migrateOut(
          key,
          req,
          (p) => {
            this.d.onMigrationProgress?.(key, p);
            void this.d.writer.annotate(ref, { [ANN_MIGRATION]: JSON.stringify({ target: req.target, ...p }) }).catch(() => undefined);
          },
          pod,
        );
      } catch (e) {
        outcome = { outcome: 'failed' as const, reason: errorMessage(e) };
      }
      if (outcome.outcome === 'completed') {
        // The guest runs on the target now; the source QEMU (paused after the switch-over) goes.
        const vm = this.vms.get(key);
        if (vm) this.vms.set(key, { state: 'exited', uid: vm.uid, phase: 'Stopped', reason: `migrated to ${req.target}` });
        await this.d.runtime.stop(key, 5000).catch(() => undefined);
        await this.d.events.record(pod, 'Normal', 'Migrated', `VM moved to ${req.target}${outcome.downtimeMs !== undefined ? ` (downtime ${outcome.downtimeMs} ms)` : ''}`);
        await this.write(key, pod, { [ANN_STATUS]: JSON.stringify({ phase: 'Migrated', target: req.target }), [ANN_MIGRATION_REQUEST]: null }, { status: 'False', reason: 'Migrated', message: `VM moved to ${req.target}` });
      } else {
        await this.d.events.record(pod, 'Warning', 'MigrationFailed', `migration to ${req.target} ${outcome.outcome}: ${outcome.reason ?? ''}; VM keeps running here`);
        await this.write(key, pod, { [ANN_MIGRATION_REQUEST]: null }, undefined);
      }
    })();
  }

  private async refresh(key: string, pod: V1Pod, vm: Extract<VmState, { state: 'running' }>): Promise<void> {
    this.maybeMigrateOut(key, pod);
    const report = (await this.d.runtime.report(key)) ?? vm.report;
    vm.report = report;
    const want = statusJson(report);
    if (pod.metadata?.annotations?.[ANN_STATUS] !== want) await this.write(key, pod, { [ANN_STATUS]: want }, undefined);
  }

  private async stopVm(key: string, pod: V1Pod | undefined): Promise<void> {
    try {
      await this.d.runtime.stop(key, this.d.stopTimeoutMs ?? 30_000);
      this.stats.stops++;
      this.d.log.info({ pod: key }, 'VM stopped');
      if (pod) {
        await this.d.events.record(pod, 'Normal', 'Stopped', `VM shut down by ${this.d.node} (pod terminating)`);
        await this.write(key, pod, { [ANN_STATUS]: JSON.stringify({ phase: 'Stopped' }) }, { status: 'False', reason: 'Stopped', message: 'pod terminating' });
      }
    } catch (e) {
      this.d.log.error({ pod: key, err: errorMessage(e) }, 'cannot stop VM');
      if (pod) await this.d.events.record(pod, 'Warning', 'StopFailed', errorMessage(e));
    }
  }

  private onVmExit(e: VmExit): void {
    const vm = this.vms.get(e.key);
    if (!vm || vm.state !== 'running') return;
    this.vms.set(e.key, { state: 'exited', uid: vm.uid, phase: e.phase, reason: e.reason });
    const pod = this.d.getPod(e.key);
    if (!pod || pod.metadata?.uid !== vm.uid) return;
    if (e.phase === 'Failed') this.stats.failures++;
    void (async () => {
      await this.d.events.record(pod, e.phase === 'Failed' ? 'Warning' : 'Normal', e.phase, `VM ended: ${e.reason}`);
      await this.write(e.key, pod, { [ANN_STATUS]: JSON.stringify({ phase: e.phase, reason: e.reason }) }, { status: 'False', reason: e.phase, message: e.reason });
    })();
  }

  private async fail(key: string, pod: V1Pod, reason: string, message: string, retry: boolean): Promise<void> {
    this.stats.failures++;
    this.d.log.warn({ pod: key, reason, err: message }, 'VM start failed');
    // Already on the pod (reported by this agent, or by the one before a restart): say it once.
    let onPod: { phase?: string; reason?: string; message?: string } = {};
    try {
      onPod = JSON.parse(pod.metadata?.annotations?.[ANN_STATUS] ?? '{}') as typeof onPod;
    } catch {
      /* rewrite it */
    }
    const reported = onPod.phase === 'Failed' && onPod.reason === reason && onPod.message === message;
    if (!reported && this.lastError.get(key) !== `${reason}:${message}`) {
      this.lastError.set(key, `${reason}:${message}`);
      await this.d.events.record(pod, 'Warning', reason === 'StartFailed' ? 'Failed' : reason, message);
      await this.write(key, pod, { [ANN_STATUS]: JSON.stringify({ phase: 'Failed', reason, message }) }, { status: 'False', reason, message });
    }
    if (retry) this.scheduleRetry(key);
    // Not retried (bad spec, failed migration): remembered so resyncs do not try again; a new pod
    // (new UID) starts afresh.
    else this.vms.set(key, { state: 'exited', uid: pod.metadata!.uid!, phase: 'Failed', reason });
  }

  private async write(key: string, pod: V1Pod, annotations: Record<string, string | null>, cond: { status: 'True' | 'False'; reason: string; message: string } | undefined): Promise<void> {
    const ref = this.ref(pod);
    try {
      await this.d.writer.annotate(ref, annotations);
      if (cond) await this.d.writer.setCondition(ref, pod, { type: COND_VM_READY, ...cond });
    } catch (e) {
      // The pod may be gone already (deleted while we stopped its VM): nothing left to report on.
      this.d.log.warn({ pod: key, err: errorMessage(e) }, 'cannot update pod');
    }
  }

  private ref(pod: V1Pod): PodRef {
    return { namespace: pod.metadata!.namespace!, name: pod.metadata!.name! };
  }

  private scheduleRetry(key: string): void {
    let r = this.retries.get(key);
    if (!r) this.retries.set(key, (r = { backoff: new Backoff(this.d.retryInitialMs ?? 250, this.d.retryMaxMs ?? 15_000), timer: undefined }));
    if (r.timer) return;
    const entry = r;
    entry.timer = setTimeout(() => {
      entry.timer = undefined;
      this.enqueue(key);
    }, entry.backoff.next());
  }

  private clearRetry(key: string): void {
    const r = this.retries.get(key);
    if (r?.timer) clearTimeout(r.timer);
    this.retries.delete(key);
  }

  /** Keys of every pod that should be looked at after a (re)sync. */
  resyncAll(pods: readonly V1Pod[]): void {
    for (const p of pods) this.enqueue(podKey(p));
    for (const k of this.vms.keys()) this.enqueue(k);
  }
}

/** The VM's end as a previous agent reported it on the pod, unless that end was a retryable start failure (pure). */
export function endedBefore(statusAnnotation: string | undefined): { phase: string; reason?: string } | undefined {
  if (!statusAnnotation) return undefined;
  let s: { phase?: string; reason?: string };
  try {
    s = JSON.parse(statusAnnotation) as typeof s;
  } catch {
    return undefined;
  }
  if (s.phase !== 'Migrated' && s.phase !== 'Stopped' && s.phase !== 'Failed') return undefined;
  if (s.reason === 'StartFailed') return undefined;
  return { phase: s.phase, ...(s.reason ? { reason: s.reason } : {}) };
}

export function statusJson(r: VmReport): string {
  return JSON.stringify({
    phase: r.phase,
    qemuPid: r.qemuPid,
    vcpuThreads: r.vcpuThreads,
    ...(r.netns ? { netns: r.netns } : {}),
    ...(r.cgroup ? { cgroup: r.cgroup } : {}),
    ...(r.serialLog ? { serialLog: r.serialLog } : {}),
    // A node path: `kubectl podvirt console` hands it to `podvirt console-attach` in the agent pod.
    ...(r.consoleSocket ? { consoleSocket: r.consoleSocket } : {}),
  });
}

