/**
 * `podvirt agent` in a cluster, composed: the pod informer feeds the reconciler, which drives the
 * VM runtime inside the pods' sandboxes and reports on the pods; alongside run the node labeller,
 * the metrics/health endpoint and the in-process servers (device plugin, CSI, CNI, DHCP), each
 * restarted with backoff. VMs outlive the agent: stopping it leaves them running for the next one
 * to adopt.
 */
import { CoreV1Api, type KubeConfig, type V1Node } from '@kubernetes/client-node';
import { Backoff, sleep } from '../../lib/backoff.js';
import { errorMessage } from '../../lib/errors.js';
import type { Logger } from '../../lib/log.js';
import { detectCgroupLayout, type CgroupLayout } from '../sandbox/cgroup-layout.js';
import { EventRecorder } from './event-recorder.js';
import { MigrationSecretStore } from './migration-secrets.js';
import { HealthServer } from './health-server.js';
import { AgentMetrics, type VolumeFigures } from './metrics.js';
import { applyNodeLabels, gatherNodeFacts, planNodeLabels } from './node-labels.js';
import { discoverPodSandbox } from './pod-discovery.js';
import { PodInformer, podKey } from './pod-informer.js';
import { PodWriter } from './pod-writer.js';
import { PodReconciler } from './reconciler.js';
import { Supervised, type ServerHandle } from './supervised.js';
import type { MigrationHandoff, VmRuntime } from './vm-runtime.js';

export interface ClusterAgentOptions {
  kc: KubeConfig;
  node: string;
  runtime: VmRuntime;
  migration?: MigrationHandoff;
  /** The agents' namespace (`$POD_NAMESPACE`): migration tokens live there as Secrets. */
  namespace?: string;
  /** This agent's pod (`$POD_NAME`): owner of the migration Secrets it creates. */
  agentPod?: string;
  log: Logger;
  version: string;
  /** `[host]:port` for /metrics, /healthz, /readyz; empty disables. */
  metricsAddr: string;
  procRoot?: string;
  sysRoot?: string;
  devRoot?: string;
  layout?: CgroupLayout;
  labelNode?: boolean;
  servers?: Array<{ name: string; start: () => Promise<ServerHandle> }>;
  volumes?: () => Promise<VolumeFigures | undefined>;
  stopTimeoutMs?: number;
  /** Periodic re-reconcile of every pod (status refresh, missed edge). */
  resyncMs?: number;
  retryInitialMs?: number;
}

export class ClusterAgent {
  readonly informer: PodInformer;
  readonly reconciler: PodReconciler;
  readonly metrics: AgentMetrics;
  readonly servers: Supervised[];
  readonly migrationSecrets: MigrationSecretStore | undefined;
  private health: HealthServer | undefined;
  private nodeObj: V1Node | undefined;
  private labelled = false;
  private readonly ac = new AbortController();
  private resyncTimer: NodeJS.Timeout | undefined;
  private bg: Promise<void>[] = [];
  metricsPort: number | undefined;

  constructor(private readonly o: ClusterAgentOptions) {
    this.informer = new PodInformer(o.kc, o.node, o.log.child({ part: 'informer' }));
    let layout = o.layout;
    this.migrationSecrets = o.migration
      ? new MigrationSecretStore({ kc: o.kc, namespace: o.namespace ?? 'default', node: o.node, ownerPod: o.agentPod, log: o.log.child({ part: 'migration-secrets' }) })
      : undefined;
    this.reconciler = new PodReconciler({
      node: o.node,
      runtime: o.runtime,
      writer: new PodWriter(o.kc),
      events: new EventRecorder(o.kc, o.node, o.log.child({ part: 'events' })),
      getPod: (k) => this.informer.get(k),
      discover: async (uid, cid) => {
        layout ??= await detectCgroupLayout();
        return discoverPodSandbox(uid, cid, { layout, ...(o.procRoot ? { procRoot: o.procRoot } : {}) });
      },
      ...(o.migration ? { migration: o.migration } : {}),
      ...(this.migrationSecrets ? { secrets: this.migrationSecrets } : {}),
      log: o.log.child({ part: 'reconciler' }),
      ...(o.stopTimeoutMs !== undefined ? { stopTimeoutMs: o.stopTimeoutMs } : {}),
      ...(o.retryInitialMs !== undefined ? { retryInitialMs: o.retryInitialMs } : {}),
      onMigrationProgress: (key, p) => {
        const [namespace, pod] = key.split('/') as [string, string];
        if (p.transferredBytes !== undefined) this.metrics.migrationTransferred.set({ namespace, pod }, p.transferredBytes);
        if (p.remainingBytes !== undefined) this.metrics.migrationRemaining.set({ namespace, pod }, p.remainingBytes);
        if (p.downtimeMs !== undefined) this.metrics.migrationDowntime.set({ namespace, pod }, p.downtimeMs / 1000);
        if (p.totalTimeMs !== undefined) this.metrics.migrationTotalTime.set({ namespace, pod }, p.totalTimeMs / 1000);
      },
    });
    this.metrics = new AgentMetrics({
      vms: () =>
        [...this.reconciler.vms.entries()].flatMap(([key, v]) => {
          if (v.state !== 'running') return [];
          const [namespace, pod] = key.split('/') as [string, string];
          const query = o.runtime.query?.bind(o.runtime);
          return [
            {
              namespace,
              pod,
              qemuPid: v.report.qemuPid,
              vcpuThreads: v.report.vcpuThreads,
              ...(query ? { blockstats: () => query(key, 'query-blockstats') } : {}),
            },
          ];
        }),
      stats: () => this.reconciler.stats,
      pods: () => this.informer.list(),
      node: () => this.nodeObj,
      ...(o.volumes ? { volumes: o.volumes } : {}),
      ...(o.procRoot ? { procRoot: o.procRoot } : {}),
    });
    this.servers = (o.servers ?? []).map((s) => new Supervised(s.name, s.start, o.log.child({ part: 'server' })));
    this.informer.on('restart', () => this.metrics.watchRestarts.inc());
    for (const ev of ['add', 'update', 'delete'] as const) {
      this.informer.on(ev, (p) => this.reconciler.enqueue(podKey(p)));
    }
  }

  async start(): Promise<void> {
    const { o } = this;
    if (o.metricsAddr) {
      this.health = new HealthServer({
        addr: o.metricsAddr,
        registry: this.metrics.registry,
        liveness: { 'event-loop': () => ({ ok: true }) },
        readiness: {
          'pod-informer': () => ({ ok: this.informer.hasSynced, detail: this.informer.hasSynced ? undefined : 'not synced' }),
          ...Object.fromEntries(this.servers.map((s) => [s.name, () => ({ ok: s.up, detail: s.up ? undefined : s.lastError })])),
        },
      });
      this.metricsPort = (await this.health.start()).port;
    }
    await Promise.all(this.servers.map((s) => s.start()));
    for (const s of this.servers) {
      this.metrics.serverUp.set({ server: s.name }, s.up ? 1 : 0);
    }
    if (o.labelNode !== false) this.bg.push(this.labelLoop());
    if (this.migrationSecrets) {
      // A migration into this node does not survive its agent: what an earlier run left is stale.
      const n = await this.migrationSecrets.collectStale().catch((e: unknown) => {
        o.log.warn({ err: errorMessage(e) }, 'cannot collect stale migration Secrets');
        return 0;
      });
      if (n) o.log.info({ deleted: n }, 'stale migration Secrets deleted');
    }
    await this.informer.start();
    this.reconciler.resyncAll(this.informer.list());
    this.resyncTimer = setInterval(() => {
      for (const s of this.servers) this.metrics.serverUp.set({ server: s.name }, s.up ? 1 : 0);
      this.reconciler.resyncAll(this.informer.list());
    }, o.resyncMs ?? 30_000);
    o.log.info({ node: o.node, metricsPort: this.metricsPort }, 'cluster agent running');
  }

  get nodeLabelled(): boolean {
    return this.labelled;
  }

  /** Labels the node once, then refreshes the cached Node (metrics) every minute; retries on error. */
  private async labelLoop(): Promise<void> {
    const core = this.o.kc.makeApiClient(CoreV1Api);
    const backoff = new Backoff(500, 30_000);
    while (!this.ac.signal.aborted) {
      try {
        if (!this.labelled) {
          const facts = await gatherNodeFacts(this.o.version, { ...(this.o.sysRoot ? { sysRoot: this.o.sysRoot } : {}), ...(this.o.devRoot ? { devRoot: this.o.devRoot } : {}) });
          const changed = await applyNodeLabels(this.o.kc, this.o.node, planNodeLabels(facts));
          this.labelled = true;
          this.o.log.info({ changed: Object.keys(changed).length }, 'node labelled');
        }
        this.nodeObj = await core.readNode({ name: this.o.node });
        backoff.reset();
        await sleep(60_000, this.ac.signal);
      } catch (e) {
        this.o.log.warn({ err: errorMessage(e) }, 'cannot label or read node; retrying');
        await sleep(backoff.next(), this.ac.signal);
      }
    }
  }

  /** Stops watching and serving; VMs keep running. */
  async stop(): Promise<void> {
    this.ac.abort();
    if (this.resyncTimer) clearInterval(this.resyncTimer);
    await this.informer.stop();
    await this.reconciler.shutdown();
    await Promise.all(this.servers.map((s) => s.stop()));
    await Promise.allSettled(this.bg);
    await this.health?.stop();
    await this.o.runtime.detachAll();
  }
}
