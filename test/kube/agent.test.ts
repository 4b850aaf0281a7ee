/**
 * The cluster agent against the fake API server through the real @kubernetes/client-node, with
 * kubelet-like pod sandboxes made on this host (netns + pod cgroup + a sleeping container process),
 * so the agent's discovery is the real /proc scan.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { CoreV1Api, type CoreV1Event, type V1Pod } from '@kubernetes/client-node';
import { ClusterAgent } from '../../agent/kube/cluster-agent.js';
import { buildVmRuntime } from '../../agent/kube/compose.js';
import type { VmRuntime, VmTarget } from '../../agent/kube/vm-runtime.js';
import { createLogger } from '../../lib/log.js';
import { FakeApiServer } from './fake-apiserver.js';
import { createKubeletSandbox, type KubeletSandbox } from './kubelet-sandbox.js';

const log = createLogger('test-kube-agent', process.env.PODVIRT_TEST_LOG ?? 'silent');

/** Observes the calls the agent makes into a runtime (the runtime itself is the real one). */
export class ObservedRuntime implements VmRuntime {
  readonly targets: VmTarget[] = [];
  readonly calls: string[] = [];
  constructor(private readonly inner: VmRuntime) {}
  async start(t: VmTarget) {
    this.targets.push(t);
    this.calls.push(`start ${t.key}`);
    return this.inner.start(t);
  }
  async adopt(t: VmTarget) {
    this.calls.push(`adopt ${t.key}`);
    return this.inner.adopt(t);
  }
  async stop(key: string, timeoutMs: number) {
    this.calls.push(`stop ${key}`);
    return this.inner.stop(key, timeoutMs);
  }
  report(key: string) {
    return this.inner.report(key);
  }
  onExit(cb: Parameters<VmRuntime['onExit']>[0]) {
    this.inner.onExit(cb);
  }
  detachAll() {
    return this.inner.detachAll();
  }
  count(prefix: string): number {
    return this.calls.filter((c) => c.startsWith(prefix)).length;
  }
}

async function until<T>(what: string, probe: () => T | undefined | Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe('podvirt agent in a cluster (fake API server, kubelet-like sandboxes)', function () {
  this.timeout(120_000);
  const tag = `pvt-kube-${randomBytes(3).toString('hex')}`;
  const node = `${tag}-node`;
  let api: FakeApiServer;
  let core: CoreV1Api;
  let runtime: ObservedRuntime;
  let agent: ClusterAgent;
  const sandboxes: KubeletSandbox[] = [];

  const vmPod = (name: string, nodeName: string, spec = 'cpus: 1\nmemory: 64Mi\naccel: tcg\n'): V1Pod => ({
    metadata: { name, namespace: 'default', annotations: { 'vm.podvirt.io/spec': spec } },
    spec: { nodeName, containers: [{ name: 'compute', image: 'example.org/launcher:dev' }] },
  });

  /** Creates the pod, then plays the kubelet: its uid's sandbox, Running status with the container ID. */
  async function runPod(name: string, spec?: string): Promise<{ pod: V1Pod; sb: KubeletSandbox }> {
    const created = api.createObject('pods', vmPod(name, node, spec) as Record<string, unknown>) as V1Pod;
    const sb = await createKubeletSandbox(tag, { uid: created.metadata!.uid! });
    sandboxes.push(sb);
    // Like the kubelet's status manager, keep conditions other components own.
    const conditions = ((api.getObject('pods', 'default', name) as V1Pod).status?.conditions ?? []).filter((c) => c.type.includes('/'));
    const pod = api.setStatus('pods', 'default', name, {
      phase: 'Running',
      conditions,
      containerStatuses: [{ name: 'compute', containerID: `containerd://${sb.containerId}`, ready: true, restartCount: 0, image: 'x', imageID: 'x', state: { running: { startedAt: new Date().toISOString() } } }],
    }) as V1Pod;
    return { pod, sb };
  }

  const events = async (name: string): Promise<CoreV1Event[]> =>
    (await core.listNamespacedEvent({ namespace: 'default', fieldSelector: `involvedObject.name=${name}` })).items;
  const condition = (name: string) => (api.getObject('pods', 'default', name) as V1Pod | undefined)?.status?.conditions?.find((c) => c.type === 'podvirt.io/VMReady');
  const annotation = (name: string, key: string) => (api.getObject('pods', 'default', name) as V1Pod | undefined)?.metadata?.annotations?.[key];

  before(async () => {
    api = new FakeApiServer({ bookmarkIntervalMs: 200 });
    await api.start();
    core = api.kubeConfig().makeApiClient(CoreV1Api);
    api.createObject('nodes', {
      metadata: { name: node, labels: { 'kubernetes.io/hostname': node, 'cpu-feature.podvirt.io/stale-flag': 'true' } },
      status: { capacity: { cpu: '2', 'devices.kubevirt.io/kvm': '1000', 'devices.kubevirt.io/tun': '1000' } },
    });
    runtime = new ObservedRuntime(
      await buildVmRuntime({
        node,
        stateDir: '/nonexistent',
        runDir: '/nonexistent',
        cniBinDir: '/nonexistent',
        kubeletDir: '/nonexistent',
        devicePluginConfig: undefined,
        csiEndpoint: undefined,
        csiStateDir: undefined,
        procRoot: '/proc',
        sysRoot: '/sys',
        devRoot: '/dev',
        disabled: new Set(),
        log,
      }),
    );
    agent = new ClusterAgent({
      kc: api.kubeConfig(),
      node,
      runtime,
      log,
      version: '0.1.0-test',
      metricsAddr: '127.0.0.1:0',
      labelNode: true,
      servers: [],
      resyncMs: 60_000,
      retryInitialMs: 100,
    });
    await agent.start();
  });

  after(async () => {
    await agent?.stop();
    for (const sb of sandboxes) await sb.destroy();
    await api?.stop();
  });

  it('watches only its own node, labels the node and serves health and metrics', async () => {
    const watch = api.requests.find((r) => r.path === '/api/v1/pods' && r.query.watch === 'true');
    assert.equal(watch?.query.fieldSelector, `spec.nodeName=${node}`);
    const labels = await until('node labels', () => {
      const l = (api.getObject('nodes', undefined, node)?.metadata as { labels?: Record<string, string> } | undefined)?.labels;
      return l?.['podvirt.io/version'] ? l : undefined;
    });
    assert.equal(labels['podvirt.io/version'], '0.1.0-test');
    assert.match(labels['podvirt.io/kvm']!, /^(true|false)$/);
    assert.ok(labels['cpu.podvirt.io/vendor']);
    assert.equal(labels['podvirt.io/numa-nodes'], '1');
    assert.equal(labels['cpu-feature.podvirt.io/stale-flag'], undefined, 'stale podvirt labels removed');
    assert.equal(labels['kubernetes.io/hostname'], node, 'foreign labels kept');
    const base = `http://127.0.0.1:${agent.metricsPort}`;
    assert.equal((await fetch(`${base}/healthz`)).status, 200);
    const ready = await fetch(`${base}/readyz`);
    assert.equal(ready.status, 200);
    assert.match(await ready.text(), /\[\+\]pod-informer ok/);
    await until('node cached for metrics', () => (agent as unknown as { nodeObj?: unknown }).nodeObj);
    const m = await (await fetch(`${base}/metrics`)).text();
    assert.match(m, /podvirt_node_devices_advertised\{resource="devices.kubevirt.io\/kvm"\} 1000/);
    assert.match(m, /podvirt_node_vms 0/);
  });

  it('ignores VM pods on other nodes; reports a VM that cannot start on its pod', async () => {
    api.createObject('pods', vmPod('elsewhere', `${tag}-other`) as Record<string, unknown>);
    const { sb } = await runPod('bad', 'cpus: 0\nmemory: 64Mi\naccel: tcg\n');
    const cond = await until('VMReady=False on the pod', () => {
      const c = condition('bad');
      return c?.status === 'False' ? c : undefined;
    });
    assert.equal(cond.reason, 'InvalidSpec');
    assert.match(cond.message!, /spec\.cpus/, 'the message names the field');
    const evs = await events('bad');
    assert.deepEqual(evs.map((e) => `${e.type}/${e.reason}`), ['Warning/InvalidSpec']);
    assert.equal(JSON.parse(annotation('bad', 'vm.podvirt.io/status')!).phase, 'Failed');
    assert.equal(runtime.calls.filter((c) => c.includes('default/bad')).length, 0, 'a bad spec never reaches the runtime');
    void sb;
    assert.equal(runtime.calls.filter((c) => c.includes('elsewhere')).length, 0);
    assert.equal((await events('elsewhere')).length, 0);
    assert.equal(annotation('elsewhere', 'vm.podvirt.io/status'), undefined);
  });
  it('resumes after a torn connection and after 410 Gone without missing or repeating work', async () => {
    const bad = (name: string) => vmPod(name, node, 'cpus: 0\n') as Record<string, unknown>;
    const restarts = agent.informer.restartCount;
    // A torn stream is an error to client-node: the supervisor restarts the same ListWatch.
    api.dropWatches({ abrupt: true });
    api.createObject('pods', bad('bad-while-torn'));
    await until('event for the pod created while disconnected', async () => ((await events('bad-while-torn')).length ? true : undefined));
    assert.ok(agent.informer.restartCount > restarts, 'watch restarted');
    // History compacted while the watch was away: re-watch gets 410, the informer re-lists.
    const lists = api.requests.filter((r) => r.path === '/api/v1/pods' && r.query.watch !== 'true').length;
    api.dropWatches();
    api.createObject('pods', bad('bad-after-410'));
    api.compact();
    await until('event for the pod created behind the 410', async () => ((await events('bad-after-410')).length ? true : undefined));
    assert.ok(api.requests.filter((r) => r.path === '/api/v1/pods' && r.query.watch !== 'true').length > lists, 're-listed after 410');
    await agent.reconciler.idle();
    for (const name of ['bad', 'bad-while-torn', 'bad-after-410']) {
      const evs = await events(name);
      assert.equal(evs.length, 1, `${name}: one event`);
      assert.equal(evs[0]!.count, 1, `${name}: reported once`);
    }
    const m = await (await fetch(`http://127.0.0.1:${agent.metricsPort}/metrics`)).text();
    assert.match(m, /podvirt_agent_watch_restarts_total [1-9]/);
    assert.match(m, /podvirt_vm_failures_total 3/);
  });
});
