/**
 * Conformance of the fake API server, driven through the real @kubernetes/client-node:
 * resourceVersions, list+watch, selectors, bookmarks, 410 Gone, 409 Conflict, patches, status.
 */
import assert from 'node:assert/strict';
import {
  ApiException,
  CoreV1Api,
  ListWatch,
  PatchStrategy,
  Watch,
  setHeaderOptions,
  type V1Pod,
} from '@kubernetes/client-node';
import { FakeApiServer } from './fake-apiserver.js';

function pod(name: string, node: string, labels: Record<string, string> = {}): V1Pod {
  return {
    metadata: { name, namespace: 'default', labels },
    spec: { nodeName: node, containers: [{ name: 'compute', image: 'x' }] },
  };
}

interface Seen {
  type: string;
  name: string | undefined;
  rv: string | undefined;
  code?: number;
}

/** Opens a raw watch and collects events until `until` is satisfied. */
async function collect(
  api: FakeApiServer,
  query: Record<string, string>,
  until: (seen: Seen[]) => boolean,
  act?: () => Promise<void>,
): Promise<{ seen: Seen[]; ended: boolean }> {
  const w = new Watch(api.kubeConfig());
  const seen: Seen[] = [];
  let ended = false;
  let wake: () => void = () => {};
  const woke = new Promise<void>((r) => (wake = r));
  const ctl = await w.watch(
    '/api/v1/namespaces/default/pods',
    query,
    (type, obj: { metadata?: { name?: string; resourceVersion?: string }; code?: number }) => {
      seen.push({ type, name: obj.metadata?.name, rv: obj.metadata?.resourceVersion, ...(obj.code !== undefined ? { code: obj.code } : {}) });
      if (until(seen)) wake();
    },
    () => {
      ended = true;
      wake();
    },
  );
  if (act) await act();
  if (!until(seen) && !ended) await Promise.race([woke, new Promise((_, rej) => setTimeout(() => rej(new Error(`timeout; seen ${JSON.stringify(seen)}`)), 5000))]);
  ctl.abort();
  return { seen, ended };
}

describe('fake API server (through @kubernetes/client-node)', function () {
  let api: FakeApiServer;
  let core: CoreV1Api;

  beforeEach(async () => {
    api = new FakeApiServer({ bookmarkIntervalMs: 100 });
    await api.start();
    core = api.kubeConfig().makeApiClient(CoreV1Api);
  });
  afterEach(async () => {
    await api.stop();
  });

  it('stamps increasing resourceVersions on objects and lists, and rejects bad tokens', async () => {
    const a = await core.createNamespacedPod({ namespace: 'default', body: pod('a', 'n1') });
    const b = await core.createNamespacedPod({ namespace: 'default', body: pod('b', 'n2') });
    assert.ok(Number(b.metadata!.resourceVersion) > Number(a.metadata!.resourceVersion));
    assert.match(a.metadata!.uid!, /^[0-9a-f-]{36}$/);
    const list = await core.listNamespacedPod({ namespace: 'default' });
    assert.equal(list.metadata!.resourceVersion, b.metadata!.resourceVersion);
    assert.deepEqual(list.items.map((p) => p.metadata!.name).sort(), ['a', 'b']);
    const other = api.kubeConfig();
    other.users[0] = { name: 'tester', token: 'wrong' };
    await assert.rejects(other.makeApiClient(CoreV1Api).listNamespacedPod({ namespace: 'default' }), (e: ApiException<unknown>) => e.code === 401);
  });

  it('filters lists by field and label selectors', async () => {
    await core.createNamespacedPod({ namespace: 'default', body: pod('a', 'n1', { app: 'vm', tier: 'x' }) });
    await core.createNamespacedPod({ namespace: 'default', body: pod('b', 'n2', { app: 'vm' }) });
    await core.createNamespacedPod({ namespace: 'default', body: pod('c', 'n1', { app: 'db' }) });
    const names = async (q: { fieldSelector?: string; labelSelector?: string }) =>
      (await core.listPodForAllNamespaces(q)).items.map((p) => p.metadata!.name).sort();
    assert.deepEqual(await names({ fieldSelector: 'spec.nodeName=n1' }), ['a', 'c']);
    assert.deepEqual(await names({ fieldSelector: 'spec.nodeName!=n1' }), ['b']);
    assert.deepEqual(await names({ labelSelector: 'app=vm' }), ['a', 'b']);
    assert.deepEqual(await names({ labelSelector: 'app in (vm,db),!tier' }), ['b', 'c']);
    assert.deepEqual(await names({ fieldSelector: 'spec.nodeName=n1', labelSelector: 'app notin (db)' }), ['a']);
    await assert.rejects(names({ fieldSelector: 'spec.nodeName in (n1)' }), (e: ApiException<unknown>) => e.code === 400);
  });

  it('watch from a resourceVersion replays later events only, then streams new ones', async () => {
    await core.createNamespacedPod({ namespace: 'default', body: pod('old', 'n1') });
    const rv = (await core.listNamespacedPod({ namespace: 'default' })).metadata!.resourceVersion!;
    await core.createNamespacedPod({ namespace: 'default', body: pod('mid', 'n1') });
    const { seen } = await collect(
      api,
      { resourceVersion: rv },
      (s) => s.some((e) => e.type === 'DELETED'),
      async () => {
        await core.createNamespacedPod({ namespace: 'default', body: pod('new', 'n1') });
        await core.deleteNamespacedPod({ namespace: 'default', name: 'mid' });
      },
    );
    assert.deepEqual(
      seen.map((e) => `${e.type}:${e.name}`),
      ['ADDED:mid', 'ADDED:new', 'DELETED:mid'],
    );
    const rvs = seen.map((e) => Number(e.rv));
    assert.deepEqual([...rvs].sort((x, y) => x - y), rvs, 'resourceVersions increase along the stream');
  });

  it('watch with a field selector turns moves in and out of the selection into ADDED/DELETED', async () => {
    await core.createNamespacedPod({ namespace: 'default', body: pod('p', 'n1') });
    const { seen } = await collect(
      api,
      { fieldSelector: 'spec.nodeName=n2', resourceVersion: String(api.resourceVersion) },
      (s) => s.length >= 2,
      async () => {
        await core.patchNamespacedPod(
          { namespace: 'default', name: 'p', body: { spec: { nodeName: 'n2' } } },
          setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
        );
        await core.patchNamespacedPod(
          { namespace: 'default', name: 'p', body: { spec: { nodeName: 'n3' } } },
          setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
        );
      },
    );
    assert.deepEqual(
      seen.map((e) => `${e.type}:${e.name}`),
      ['ADDED:p', 'DELETED:p'],
    );
  });

  it('sends BOOKMARKs only when asked', async () => {
    const withBm = await collect(api, { allowWatchBookmarks: 'true', resourceVersion: String(api.resourceVersion) }, (s) => s.some((e) => e.type === 'BOOKMARK'));
    const bm = withBm.seen.find((e) => e.type === 'BOOKMARK')!;
    assert.equal(bm.rv, String(api.resourceVersion));
    const t0 = Date.now();
    const without = await collect(api, { resourceVersion: String(api.resourceVersion) }, () => Date.now() - t0 > 300, async () => {
      await new Promise((r) => setTimeout(r, 350));
      await core.createNamespacedPod({ namespace: 'default', body: pod('x', 'n1') });
    });
    assert.ok(!without.seen.some((e) => e.type === 'BOOKMARK'));
  });

  it('answers a compacted resourceVersion with an ERROR 410 event and closes the stream', async () => {
    const a = await core.createNamespacedPod({ namespace: 'default', body: pod('a', 'n1') });
    await core.createNamespacedPod({ namespace: 'default', body: pod('b', 'n1') });
    api.compact();
    const { seen, ended } = await collect(api, { resourceVersion: a.metadata!.resourceVersion! }, () => false);
    assert.equal(ended, true);
    assert.equal(seen.length, 1);
    assert.equal(seen[0]!.type, 'ERROR');
    assert.equal(seen[0]!.code, 410);
    // Watching from the current resourceVersion is still fine.
    const ok = await collect(api, { resourceVersion: String(api.resourceVersion) }, (s) => s.length > 0, async () => {
      await core.createNamespacedPod({ namespace: 'default', body: pod('c', 'n1') });
    });
    assert.deepEqual(ok.seen.map((e) => `${e.type}:${e.name}`), ['ADDED:c']);
  });

  it('client-node ListWatch re-lists after 410 and resumes after a dropped stream without duplicates', async () => {
    await core.createNamespacedPod({ namespace: 'default', body: pod('a', 'n1') });
    const kc = api.kubeConfig();
    const events: string[] = [];
    const lw = new ListWatch<V1Pod>(
      '/api/v1/pods',
      new Watch(kc),
      () => core.listPodForAllNamespaces({ fieldSelector: 'spec.nodeName=n1' }),
      false,
      undefined,
      'spec.nodeName=n1',
    );
    lw.on('add', (p) => events.push(`add:${p.metadata!.name}`));
    lw.on('update', (p) => events.push(`update:${p.metadata!.name}`));
    lw.on('delete', (p) => events.push(`delete:${p.metadata!.name}`));
    const errors: unknown[] = [];
    lw.on('error', (e) => errors.push(e));
    await lw.start();
    await api.waitForWatches('pods', 1);
    const until = async (pred: () => boolean) => {
      for (let i = 0; i < 200 && !pred(); i++) await new Promise((r) => setTimeout(r, 25));
      assert.ok(pred(), `events: ${events.join(',')}`);
    };
    await until(() => events.length === 1);

    // Dropped connection: the informer re-watches from its resourceVersion; changes made while it
    // was away arrive exactly once.
    api.dropWatches();
    await core.createNamespacedPod({ namespace: 'default', body: pod('b', 'n1') });
    await api.waitForWatches('pods', 1);
    await until(() => events.includes('add:b'));

    // History compacted behind the informer's back: its re-watch gets 410, it re-lists, and
    // reports only real differences.
    // (Synchronous store changes: all happen before the client can reconnect.)
    api.dropWatches();
    api.deleteObject('pods', 'default', 'a');
    api.createObject('pods', pod('c', 'n1') as Record<string, unknown>);
    api.compact();
    await until(() => events.includes('add:c') && events.includes('delete:a'));
    await core.createNamespacedPod({ namespace: 'default', body: pod('d', 'n1') });
    await until(() => events.includes('add:d'));
    assert.deepEqual(events.sort(), ['add:a', 'add:b', 'add:c', 'add:d', 'delete:a'].sort());
    assert.deepEqual(errors, []);
    assert.ok(api.requests.filter((r) => r.path === '/api/v1/pods' && !r.query.watch).length >= 2, 'listed again after 410');

    // A connection torn down mid-stream is an error to client-node's ListWatch: it stops and
    // reports it, which is why the agent wraps its informer in a restarting supervisor.
    api.dropWatches({ abrupt: true });
    await until(() => errors.length === 1);
    await lw.stop();
  });

  it('rejects updates carrying a stale resourceVersion with 409 Conflict', async () => {
    const p = await core.createNamespacedPod({ namespace: 'default', body: pod('a', 'n1') });
    const stale = structuredClone(p);
    p.metadata!.labels = { x: '1' };
    const p2 = await core.replaceNamespacedPod({ namespace: 'default', name: 'a', body: p });
    assert.equal(p2.metadata!.labels!.x, '1');
    stale.metadata!.labels = { x: '2' };
    await assert.rejects(core.replaceNamespacedPod({ namespace: 'default', name: 'a', body: stale }), (e: ApiException<string>) => {
      assert.equal(e.code, 409);
      assert.match(JSON.parse(e.body).reason, /Conflict/);
      return true;
    });
    // A merge patch with a resourceVersion precondition conflicts the same way.
    await assert.rejects(
      core.patchNamespacedPod(
        { namespace: 'default', name: 'a', body: { metadata: { resourceVersion: stale.metadata!.resourceVersion, labels: { y: '1' } } } },
        setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
      ),
      (e: ApiException<string>) => e.code === 409,
    );
    await assert.rejects(core.createNamespacedPod({ namespace: 'default', body: pod('a', 'n1') }), (e: ApiException<string>) => e.code === 409);
    await assert.rejects(core.readNamespacedPod({ namespace: 'default', name: 'zz' }), (e: ApiException<string>) => e.code === 404);
  });

  it('applies merge, strategic-merge and JSON patches; status only through the subresource', async () => {
    await core.createNamespacedPod({ namespace: 'default', body: { ...pod('a', 'n1'), metadata: { name: 'a', annotations: { keep: '1', drop: '1' } } } });
    const merged = await core.patchNamespacedPod(
      { namespace: 'default', name: 'a', body: { metadata: { annotations: { drop: null, add: 'v' } } } },
      setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
    );
    assert.deepEqual(merged.metadata!.annotations, { keep: '1', add: 'v' });
    // Status in a main-resource patch is ignored, as on a real apiserver.
    const ignored = await core.patchNamespacedPod(
      { namespace: 'default', name: 'a', body: { status: { phase: 'Running' } } },
      setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
    );
    assert.equal(ignored.status!.phase, 'Pending');
    const cond = (type: string, status: string) => ({ type, status, lastTransitionTime: new Date() });
    await core.patchNamespacedPodStatus(
      { namespace: 'default', name: 'a', body: { status: { conditions: [cond('Ready', 'False'), cond('podvirt.io/VMReady', 'False')] } } },
      setHeaderOptions('Content-Type', PatchStrategy.StrategicMergePatch),
    );
    const s = await core.patchNamespacedPodStatus(
      { namespace: 'default', name: 'a', body: { status: { conditions: [cond('podvirt.io/VMReady', 'True')] } } },
      setHeaderOptions('Content-Type', PatchStrategy.StrategicMergePatch),
    );
    assert.deepEqual(
      s.status!.conditions!.map((c) => `${c.type}=${c.status}`),
      ['Ready=False', 'podvirt.io/VMReady=True'],
      'strategic merge merges conditions by type',
    );
    const j = await core.patchNamespacedPod({
      namespace: 'default',
      name: 'a',
      body: [
        { op: 'test', path: '/metadata/annotations/keep', value: '1' },
        { op: 'add', path: '/metadata/labels', value: { 'a/b': 'c' } },
      ],
    });
    assert.deepEqual(j.metadata!.labels, { 'a/b': 'c' });
    await assert.rejects(
      core.patchNamespacedPod({ namespace: 'default', name: 'a', body: [{ op: 'test', path: '/metadata/annotations/keep', value: '2' }] }),
      (e: ApiException<string>) => e.code === 422,
    );
  });

  it('serves nodes, core events and events.k8s.io events', async () => {
    api.createObject('nodes', { metadata: { name: 'n1', labels: { a: 'b' } } });
    const n = await core.patchNode(
      { name: 'n1', body: { metadata: { labels: { 'podvirt.io/kvm': 'true' } } } },
      setHeaderOptions('Content-Type', PatchStrategy.StrategicMergePatch),
    );
    assert.deepEqual(n.metadata!.labels, { a: 'b', 'podvirt.io/kvm': 'true' });
    await core.createNamespacedEvent({
      namespace: 'default',
      body: { metadata: { generateName: 'a.' }, involvedObject: { kind: 'Pod', name: 'a', namespace: 'default' }, reason: 'Started', message: 'm', type: 'Normal' },
    });
    const ev = await core.listNamespacedEvent({ namespace: 'default', fieldSelector: 'involvedObject.name=a' });
    assert.equal(ev.items.length, 1);
    assert.match(ev.items[0]!.metadata!.name!, /^a\.[0-9a-f]{5}$/);
    assert.equal(api.listObjects('events', 'events.k8s.io').length, 0);
  });
  it('graceful pod deletion and finalizers: deletionTimestamp first, gone on grace 0 or when the last finalizer goes', async () => {
    const g = new FakeApiServer({ gracefulPodDeletion: true });
    await g.start();
    try {
      const gc = g.kubeConfig().makeApiClient(CoreV1Api);
      await gc.createNamespacedPod({ namespace: 'default', body: pod('a', 'n1') });
      await gc.deleteNamespacedPod({ namespace: 'default', name: 'a' });
      const terminating = await gc.readNamespacedPod({ namespace: 'default', name: 'a' });
      assert.ok(terminating.metadata!.deletionTimestamp);
      assert.equal(terminating.metadata!.deletionGracePeriodSeconds, 30);
      // Status writes during the grace period keep the pod.
      await gc.patchNamespacedPodStatus({ namespace: 'default', name: 'a', body: { status: { phase: 'Running' } } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch));
      assert.ok(g.getObject('pods', 'default', 'a'));
      await gc.deleteNamespacedPod({ namespace: 'default', name: 'a', gracePeriodSeconds: 0 });
      assert.equal(g.getObject('pods', 'default', 'a'), undefined);
      g.createObject('nodes', { metadata: { name: 'n', finalizers: ['x/y'] } });
      await gc.deleteNode({ name: 'n' });
      assert.ok(g.getObject('nodes', undefined, 'n'));
      await gc.patchNode({ name: 'n', body: { metadata: { finalizers: null } } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch));
      assert.equal(g.getObject('nodes', undefined, 'n'), undefined);
    } finally {
      await g.stop();
    }
  });
});
