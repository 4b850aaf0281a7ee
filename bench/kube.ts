/**
 * Cluster-agent reaction times against the in-process fake API server, through the real
 * @kubernetes/client-node, each against a baseline measured in the same process:
 *  - watch delivery: pod created -> the agent's informer sees it, vs. one plain GET round trip;
 *  - reconcile + report: pod with a bad spec created -> its InvalidSpec Event is readable, vs. the
 *    same three API writes (annotation patch, status patch, event create) done directly;
 *  - re-list after 410: compacted history -> informer back in sync with a pod created meanwhile.
 * Run: npx tsx bench/kube.ts
 */
import { CoreV1Api, PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';
import { ClusterAgent } from '../agent/kube/cluster-agent.js';
import type { VmRuntime } from '../agent/kube/vm-runtime.js';
import { silentLogger } from '../lib/log.js';
import { FakeApiServer } from '../test/kube/fake-apiserver.js';

const N = 40;
const node = 'bench-node';

const p50 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const p95 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length * 0.95)]!;

async function until(pred: () => boolean | Promise<boolean>): Promise<void> {
  while (!(await pred())) await new Promise((r) => setImmediate(r));
}

/** The runtime is never reached in this benchmark (bad specs stop before it). */
const unreachable: VmRuntime = {
  start: async () => Promise.reject(new Error('not used')),
  adopt: async () => undefined,
  stop: async () => undefined,
  report: async () => undefined,
  onExit: () => undefined,
  detachAll: async () => undefined,
};

async function main(): Promise<void> {
  const api = new FakeApiServer();
  await api.start();
  api.createObject('nodes', { metadata: { name: node } });
  const core = api.kubeConfig().makeApiClient(CoreV1Api);
  const agent = new ClusterAgent({ kc: api.kubeConfig(), node, runtime: unreachable, log: silentLogger, version: 'bench', metricsAddr: '', labelNode: false, resyncMs: 600_000 });
  await agent.start();
  const seen = new Map<string, number>();
  agent.informer.on('add', (p: { metadata?: { name?: string } }) => seen.set(p.metadata!.name!, performance.now()));

  const rtt: number[] = [];
  const watch: number[] = [];
  const direct: number[] = [];
  const report: number[] = [];
  for (let i = 0; i < N; i++) {
    let t = performance.now();
    await core.readNode({ name: node });
    rtt.push(performance.now() - t);

    t = performance.now();
    api.createObject('pods', { metadata: { name: `ok-${i}`, namespace: 'default' }, spec: { nodeName: node, containers: [{ name: 'c', image: 'x' }] } });
    await until(() => seen.has(`ok-${i}`));
    watch.push(seen.get(`ok-${i}`)! - t);

    t = performance.now();
    await core.patchNamespacedPod({ namespace: 'default', name: `ok-${i}`, body: { metadata: { annotations: { a: 'b' } } } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch));
    await core.patchNamespacedPodStatus({ namespace: 'default', name: `ok-${i}`, body: { status: { conditions: [{ type: 'x/Y', status: 'False' }] } } }, setHeaderOptions('Content-Type', PatchStrategy.StrategicMergePatch));
    await core.createNamespacedEvent({ namespace: 'default', body: { metadata: { name: `ev-${i}` }, involvedObject: { kind: 'Pod', name: `ok-${i}` }, reason: 'R', message: 'm' } });
    direct.push(performance.now() - t);

    t = performance.now();
    api.createObject('pods', { metadata: { name: `bad-${i}`, namespace: 'default', annotations: { 'vm.podvirt.io/spec': 'cpus: 0' } }, spec: { nodeName: node, containers: [{ name: 'c', image: 'x' }] } });
    await until(() => api.listObjects('events').some((e) => (e.involvedObject as { name: string }).name === `bad-${i}`));
    await until(() => (api.getObject('pods', 'default', `bad-${i}`)?.status as { conditions?: unknown[] } | undefined)?.conditions !== undefined);
    report.push(performance.now() - t);
  }

  const relist: number[] = [];
  for (let i = 0; i < 10; i++) {
    const t = performance.now();
    api.dropWatches();
    api.createObject('pods', { metadata: { name: `gone-${i}`, namespace: 'default' }, spec: { nodeName: node, containers: [{ name: 'c', image: 'x' }] } });
    api.compact();
    await until(() => seen.has(`gone-${i}`));
    relist.push(seen.get(`gone-${i}`)! - t);
  }
  await agent.stop();
  await api.stop();

  const row = (name: string, xs: number[], base: number[] | undefined) =>
    `| ${name.padEnd(44)} | ${p50(xs).toFixed(2).padStart(7)} | ${p95(xs).toFixed(2).padStart(7)} | ${base ? (p50(xs) / p50(base)).toFixed(2).padStart(6) : '     -'} |`;
  console.log(`cluster agent vs fake API server, ${N} pods (${node}), times in ms`);
  console.log('| measure                                      |     p50 |     p95 |  ratio |');
  console.log('|----------------------------------------------|---------|---------|--------|');
  console.log(row('baseline: GET node round trip', rtt, undefined));
  console.log(row('pod created -> informer add (÷ GET RTT)', watch, rtt));
  console.log(row('baseline: 3 writes done directly', direct, undefined));
  console.log(row('bad-spec pod -> event+condition (÷ 3 writes)', report, direct));
  console.log(row('410 + re-list -> caught up (÷ GET RTT)', relist, rtt));
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
