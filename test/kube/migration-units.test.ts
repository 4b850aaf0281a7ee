/**
 * Cluster migration parts without QEMU: the token's Secret (through the fake API server and the
 * real client), the source agent refusing requests whose token is not in such a Secret, which
 * volumes count as node-local, and the userfaultfd check behind post-copy.
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import { PassThrough } from 'node:stream';
import * as os from 'node:os';
import * as path from 'node:path';
import type { V1PersistentVolume, V1PersistentVolumeClaim, V1Pod } from '@kubernetes/client-node';
import { CoreV1Api } from '@kubernetes/client-node';
import { EventEmitter } from 'node:events';
import { EventRecorder } from '../../agent/kube/event-recorder.js';
import { KubeMigration, toProgress } from '../../agent/kube/kube-migration.js';
import type { VmCoreRuntime } from '../../agent/kube/vm-core-runtime.js';
import { kubectlMain } from '../../agent/kube/kubectl/main.js';
import { claimOf, nodeLocalDisks, nodeLocalVolumes, type VolumeLookup } from '../../agent/kube/local-volumes.js';
import { LABEL_MIGRATION_ID, MigrationSecretStore, secretNameOf } from '../../agent/kube/migration-secrets.js';
import { podKey } from '../../agent/kube/pod-informer.js';
import { PodWriter } from '../../agent/kube/pod-writer.js';
import { PodReconciler } from '../../agent/kube/reconciler.js';
import type { MigrationHandoff, MigrationRequest, VmRuntime } from '../../agent/kube/vm-runtime.js';
import type { DiscoveredSandbox } from '../../agent/kube/pod-discovery.js';
import { postCopySupported } from '../../agent/migration/postcopy-support.js';
import { createLogger } from '../../lib/log.js';
import { FakeApiServer } from './fake-apiserver.js';
import { until as waitUntil, type Probe } from '../helpers/until.js';

const log = createLogger('test-kube-mig-units', process.env.PODVIRT_TEST_LOG ?? 'silent');
const NS = 'podvirt-system';

const until = <T>(what: string, probe: Probe<T>, timeoutMs = 10000): Promise<T> => waitUntil(what, probe, timeoutMs, 20);

describe('cluster migration: token Secrets', () => {
  let api: FakeApiServer;
  before(async () => {
    api = new FakeApiServer();
    await api.start();
    api.createObject('pods', { metadata: { name: 'agent-x', namespace: NS }, spec: { containers: [{ name: 'agent', image: 'x' }] } });
  });
  after(async () => api?.stop());

  it('stores a token per migration in the agents namespace, labelled, owned by the agent pod; reads it back only for its own migration', async () => {
    const store = new MigrationSecretStore({ kc: api.kubeConfig(), namespace: NS, node: 'node-1', ownerPod: 'agent-x', log });
    const token = 'ab'.repeat(32);
    const name = await store.create('m1abc', token, { source: 'vms/a', target: 'vms/b' });
    assert.equal(name, 'podvirt-migration-m1abc');
    const s = api.getObject('secrets', NS, name) as { metadata: { labels: Record<string, string>; ownerReferences: Array<{ kind: string; name: string; uid: string }> }; data: Record<string, string>; type: string };
    assert.equal(s.type, 'Opaque');
    assert.deepEqual(Object.keys(s.data), ['token']);
    assert.equal(s.metadata.labels[LABEL_MIGRATION_ID], 'm1abc');
    assert.equal(s.metadata.labels['migration.podvirt.io/target-node'], 'node-1');
    const agentPod = api.getObject('pods', NS, 'agent-x') as { metadata: { uid: string } };
    assert.deepEqual(s.metadata.ownerReferences.map((o) => [o.kind, o.name, o.uid]), [['Pod', 'agent-x', agentPod.metadata.uid]]);
    assert.equal(await store.token('m1abc', name), token);
    await assert.rejects(store.token('m2', name), /not this migration's/);
    await assert.rejects(store.token('m1abc', 'default-token-xyz'), /not this migration's/);
    assert.throws(() => secretNameOf('../etc'), /not a valid name part/);
    // A Secret with the right name but not made by an agent does not count.
    api.createObject('secrets', { metadata: { name: 'podvirt-migration-m3', namespace: NS, labels: { [LABEL_MIGRATION_ID]: 'm3' } }, data: { token: Buffer.from(token).toString('base64') } });
    await assert.rejects(store.token('m3', 'podvirt-migration-m3'), /not a podvirt migration Secret/);
    await store.delete('m1abc');
    await store.delete('m1abc');
    assert.equal(api.getObject('secrets', NS, name), undefined);
  });

  it('at start, an agent deletes the Secrets of its own node only', async () => {
    const mine = new MigrationSecretStore({ kc: api.kubeConfig(), namespace: NS, node: 'node-1', log });
    const other = new MigrationSecretStore({ kc: api.kubeConfig(), namespace: NS, node: 'node-2', log });
    await mine.create('s1', 'cd'.repeat(32), { source: 'a/a', target: 'a/b' });
    await mine.create('s2', 'cd'.repeat(32), { source: 'a/a', target: 'a/c' });
    await other.create('s3', 'cd'.repeat(32), { source: 'a/a', target: 'a/d' });
    assert.equal(await mine.collectStale(), 2);
    const left = api.listObjects('secrets').map((s) => (s.metadata as { name: string }).name).filter((n) => n.startsWith('podvirt-migration-s'));
    assert.deepEqual(left, ['podvirt-migration-s3']);
    await other.delete('s3');
  });
});

describe('cluster migration: the source agent acts only on requests whose token the agents stored', () => {
  let api: FakeApiServer;
  let reconciler: PodReconciler;
  let store: MigrationSecretStore;
  const calls: MigrationRequest[] = [];
  const key = 'vms/vm1';

  before(async () => {
    api = new FakeApiServer();
    await api.start();
    const kc = api.kubeConfig();
    store = new MigrationSecretStore({ kc, namespace: NS, node: 'node-a', log });
    const runtime: VmRuntime = {
      start: () => Promise.reject(new Error('not used')),
      adopt: () => Promise.resolve({ phase: 'Running', qemuPid: 4242, vcpuThreads: [], topology: {} }),
      stop: () => Promise.resolve(),
      report: () => Promise.resolve({ phase: 'Running', qemuPid: 4242, vcpuThreads: [], topology: {} }),
      onExit: () => undefined,
      detachAll: () => Promise.resolve(),
    };
    const migration: MigrationHandoff = {
      migrateInto: () => Promise.reject(new Error('not used')),
      migrateOut: (_k, req) => {
        calls.push(req);
        return Promise.resolve({ outcome: 'failed', reason: 'test handoff' });
      },
    };
    reconciler = new PodReconciler({
      node: 'node-a',
      runtime,
      writer: new PodWriter(kc),
      events: new EventRecorder(kc, 'node-a', log),
      getPod: (k) => api.getObject('pods', k.split('/')[0], k.split('/')[1]!) as V1Pod | undefined,
      discover: () => Promise.resolve({} as DiscoveredSandbox),
      migration,
      secrets: store,
      log,
    });
    api.createObject('pods', {
      metadata: { name: 'vm1', namespace: 'vms', annotations: { 'vm.podvirt.io/spec': 'cpus: 1\nmemory: 64Mi\nkernel: /k\n' } },
      spec: { nodeName: 'node-a', containers: [{ name: 'compute', image: 'x' }] },
    });
    api.setStatus('pods', 'vms', 'vm1', { phase: 'Running', containerStatuses: [{ name: 'compute', containerID: `containerd://${'ab'.repeat(32)}`, ready: true, restartCount: 0, image: 'x', imageID: 'x', state: { running: {} } }] });
    reconciler.enqueue(key);
    await reconciler.idle();
    assert.equal(reconciler.vms.get(key)?.state, 'running');
  });
  after(async () => {
    await reconciler?.shutdown();
    await api?.stop();
  });

  const request = (id: string, secretName: string) => ({ migrationId: id, target: 'vms/vm1-t', control: { host: '127.0.0.1', port: 1 }, tlsHostname: `${id}.migration.podvirt.io`, secretName });
  const annotate = (v: unknown) => {
    const p = api.getObject('pods', 'vms', 'vm1') as V1Pod;
    p.metadata!.annotations = { ...p.metadata!.annotations, 'vm.podvirt.io/migration-request': JSON.stringify(v) };
    api.replaceObject('pods', p as Record<string, unknown>);
    reconciler.enqueue(podKey(p));
  };
  const requestOnPod = () => (api.getObject('pods', 'vms', 'vm1') as V1Pod).metadata?.annotations?.['vm.podvirt.io/migration-request'];
  const events = async () => (await api.kubeConfig().makeApiClient(CoreV1Api).listNamespacedEvent({ namespace: 'vms' })).items;

  it('a forged request (token in the annotation, no Secret) is refused and cleared; the VM is never handed over', async () => {
    annotate({ ...request('forged1', 'podvirt-migration-forged1'), token: 'ef'.repeat(32) });
    await until('request cleared', () => requestOnPod() === undefined);
    assert.equal(calls.length, 0);
    assert.ok((await events()).some((e) => e.reason === 'MigrationFailed' && /no migration Secret podvirt-system\/podvirt-migration-forged1: the request was not made by a podvirt agent/.test(e.message ?? '')));
  });

  it('a request naming another Secret is refused', async () => {
    annotate(request('forged2', 'podvirt-migration-other'));
    await until('request cleared', () => requestOnPod() === undefined);
    assert.equal(calls.length, 0);
  });

  it('a request whose Secret the target agent stored reaches the hand-off with the token', async () => {
    const token = '12'.repeat(32);
    const secretName = await store.create('real1', token, { source: key, target: 'vms/vm1-t' });
    annotate(request('real1', secretName));
    await until('hand-off called', () => calls.length === 1);
    assert.equal(calls[0]!.token, token);
    assert.equal(calls[0]!.migrationId, 'real1');
    await until('request cleared', () => requestOnPod() === undefined);
    await store.delete('real1');
  });
});

describe('cluster migration: node-local volumes', () => {
  const pvcs: Record<string, V1PersistentVolumeClaim> = {
    'ns/local-claim': { spec: { volumeName: 'pv-local' } },
    'ns/shared-claim': { spec: { volumeName: 'pv-shared' } },
    'ns/vm1-scratch': { spec: { volumeName: 'pv-eph' } },
    'ns/unbound': { spec: {} },
  };
  const pvs: Record<string, V1PersistentVolume> = {
    'pv-local': { spec: { csi: { driver: 'csi.podvirt.io', volumeHandle: 'v1' } } },
    'pv-eph': { spec: { csi: { driver: 'csi.podvirt.io', volumeHandle: 'v2' } } },
    'pv-shared': { spec: { csi: { driver: 'rbd.csi.ceph.com', volumeHandle: 'v3' } } },
  };
  const lookup: VolumeLookup = {
    claim: (ns, name) => (pvcs[`${ns}/${name}`] ? Promise.resolve(pvcs[`${ns}/${name}`]!) : Promise.reject(new Error('not found'))),
    volume: (name) => (pvs[name] ? Promise.resolve(pvs[name]!) : Promise.reject(new Error('not found'))),
  };
  const pod = (volumes: NonNullable<V1Pod['spec']>['volumes'], disks = ''): V1Pod => ({
    metadata: { name: 'vm1', namespace: 'ns', annotations: { 'vm.podvirt.io/spec': `cpus: 1\nmemory: 64Mi\nkernel: /k\n${disks}` } },
    spec: {
      volumes,
      containers: [{ name: 'compute', image: 'x', volumeDevices: [{ name: 'root', devicePath: '/dev/root' }, { name: 'scratch', devicePath: '/dev/scratch' }], volumeMounts: [{ name: 'files', mountPath: '/files' }] }],
    },
  });

  it('podvirt CSI volumes (claims, generic ephemeral, inline) are node-local; other drivers and non-claim volumes are not', async () => {
    const p = pod([
      { name: 'root', persistentVolumeClaim: { claimName: 'local-claim' } },
      { name: 'shared', persistentVolumeClaim: { claimName: 'shared-claim' } },
      { name: 'scratch', ephemeral: { volumeClaimTemplate: { spec: { accessModes: ['ReadWriteOnce'] } } } },
      { name: 'inline', csi: { driver: 'csi.podvirt.io' } },
      { name: 'cfg', configMap: { name: 'x' } },
    ]);
    assert.equal(claimOf(p, 'scratch'), 'vm1-scratch');
    assert.deepEqual([...(await nodeLocalVolumes(p, lookup))].sort(), ['inline', 'root', 'scratch']);
  });

  it('a claim it cannot classify fails instead of being taken for shared', async () => {
    await assert.rejects(nodeLocalVolumes(pod([{ name: 'root', persistentVolumeClaim: { claimName: 'unbound' } }]), lookup), /volume root \(claim ns\/unbound\): cannot tell whether it is node-local: not bound yet/);
    await assert.rejects(nodeLocalVolumes(pod([{ name: 'root', persistentVolumeClaim: { claimName: 'gone' } }]), lookup), /cannot tell/);
  });

  it('node-local block disks become mirrored block nodes; a file disk on a node-local volume is refused', () => {
    const p = pod([], 'disks:\n  - name: os\n    volume: root\n  - name: tmp\n    volume: scratch\n  - name: img\n    volume: files\n    type: file\n    path: a.img\n');
    assert.deepEqual(nodeLocalDisks(p, new Set(['root'])), [{ disk: 'os', node: 'drive-os' }]);
    assert.deepEqual(nodeLocalDisks(p, new Set()), []);
    assert.throws(() => nodeLocalDisks(p, new Set(['root', 'files'])), /disk img: a file disk on the node-local volume files cannot be migrated/);
  });
});

describe('cluster migration: post-copy needs userfaultfd for QEMU\'s user', () => {
  it('root always; others only with vm.unprivileged_userfaultfd=1 (missing knob = no)', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'pvt-uffd-'));
    try {
      const knob = path.join(dir, 'unprivileged_userfaultfd');
      assert.equal(await postCopySupported({ qemuUid: 0, sysctlPath: knob }), true);
      assert.equal(await postCopySupported({ qemuUid: 107, sysctlPath: knob }), false);
      await fs.writeFile(knob, '0\n');
      assert.equal(await postCopySupported({ qemuUid: 107, sysctlPath: knob }), false);
      await fs.writeFile(knob, '1\n');
      assert.equal(await postCopySupported({ qemuUid: 107, sysctlPath: knob }), true);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});

describe('kubectl podvirt migrate: node-local claims get fresh copies on the target', () => {
  let api: FakeApiServer;
  let tmp: string;
  before(async () => {
    api = new FakeApiServer();
    await api.start();
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'pvt-kmig-claims-'));
  });
  after(async () => {
    await api?.stop();
    if (tmp) await fs.rm(tmp, { recursive: true, force: true });
  });

  it('copies podvirt claims (class, mode, size), leaves shared ones, ties the copies to the target pod until it succeeded', async () => {
    const claim = (name: string, provisioner: string, size: string) =>
      api.createObject('persistentvolumeclaims', {
        metadata: { name, namespace: 'vms', labels: { app: 'db' }, annotations: { 'volume.kubernetes.io/storage-provisioner': provisioner } },
        spec: { accessModes: ['ReadWriteOnce'], volumeMode: 'Block', storageClassName: 'podvirt', resources: { requests: { storage: size } }, volumeName: `pv-${name}` },
      });
    claim('db-root', 'csi.podvirt.io', '10Gi');
    claim('db-shared', 'rbd.csi.ceph.com', '5Gi');
    api.createObject('pods', {
      metadata: { name: 'db', namespace: 'vms', annotations: { 'vm.podvirt.io/spec': 'cpus: 1\nmemory: 64Mi\nkernel: /k\n', 'vm.podvirt.io/topology': '{}' } },
      spec: {
        nodeName: 'node-1',
        volumes: [{ name: 'root', persistentVolumeClaim: { claimName: 'db-root' } }, { name: 'shared', persistentVolumeClaim: { claimName: 'db-shared' } }],
        containers: [{ name: 'compute', image: 'x' }],
      },
    });
    const kubeconfig = await api.writeKubeconfig(tmp);
    const err = new PassThrough();
    let errText = '';
    err.on('data', (b: Buffer) => (errText += b.toString()));
    const out = new PassThrough();
    const run = kubectlMain(['migrate', 'db', '--kubeconfig', kubeconfig, '-n', 'vms', '--target-name', 'db-t', '--timeout', '30'], { stdout: out, stderr: err });
    const t = await until('target pod', () => api.getObject('pods', 'vms', 'db-t') as V1Pod | undefined);
    const vols = Object.fromEntries(t.spec!.volumes!.map((v) => [v.name, v.persistentVolumeClaim!.claimName]));
    assert.equal(vols.shared, 'db-shared', 'shared storage: the same claim');
    assert.match(vols.root!, /^db-root-mig-[0-9a-f]{5}$/);
    const fresh = await until('fresh claim', () => api.getObject('persistentvolumeclaims', 'vms', vols.root!) as V1PersistentVolumeClaim | undefined);
    assert.deepEqual(fresh.spec, { accessModes: ['ReadWriteOnce'], volumeMode: 'Block', storageClassName: 'podvirt', resources: { requests: { storage: '10Gi' } } });
    assert.equal(fresh.metadata!.labels!.app, 'db');
    assert.equal(fresh.metadata!.annotations!['migration.podvirt.io/from-claim'], 'vms/db-root');
    assert.deepEqual(fresh.metadata!.ownerReferences!.map((o) => [o.kind, o.name, o.uid]), [['Pod', 'db-t', t.metadata!.uid]]);
    // The target's agent reports success.
    await until('kubectl watching', () => api.watchCount('pods') > 0);
    api.setStatus('pods', 'vms', 'db-t', { phase: 'Running', conditions: [{ type: 'podvirt.io/VMReady', status: 'True', reason: 'Migrated', message: 'QEMU pid 9' }] });
    // ... and the source's agent its side (kubectl deletes the source pod only then).
    const src = api.getObject('pods', 'vms', 'db')!;
    (src.metadata as { annotations: Record<string, string> }).annotations['vm.podvirt.io/status'] = JSON.stringify({ phase: 'Migrated', target: 'vms/db-t' });
    api.replaceObject('pods', src);
    assert.equal(await run, 0, errText);
    assert.equal((api.getObject('persistentvolumeclaims', 'vms', vols.root!) as V1PersistentVolumeClaim).metadata!.ownerReferences, undefined, 'the VM\'s disk now outlives the pod');
    assert.match(errText, /claim vms\/db-root is no longer used by the VM/);
    assert.ok(api.getObject('persistentvolumeclaims', 'vms', 'db-root'), 'the old claim is left to its owner');
  });
});

describe('cluster migration: a target whose source never connects', () => {
  it('gives up after the connect timeout, stops its QEMU and says why', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'pvt-kmig-conn-'));
    const stopped: string[] = [];
    // The runtime's part is only to start and stop the incoming QEMU; a QMP that never speaks is enough here.
    const runtime = {
      runAs: () => ({ uid: 107, gid: 107 }),
      runDirOf: () => path.join(dir, 'run'),
      startIncoming: () => Promise.resolve({ qmp: new EventEmitter(), stateSnapshot: { runDir: path.join(dir, 'run') }, agentPath: (p: string) => p }),
      stop: (key: string) => {
        stopped.push(key);
        return Promise.resolve();
      },
    } as unknown as VmCoreRuntime;
    const m = new KubeMigration({ runtime, controlAddress: '127.0.0.1', log, connectTimeoutMs: 300 });
    const asked: MigrationRequest[] = [];
    const target = { key: 'vms/t', pod: { metadata: { name: 't', namespace: 'vms', uid: '0123456789' }, status: { podIP: '127.0.0.1' } }, specText: '', sandbox: {} as DiscoveredSandbox, topology: {} };
    try {
      await assert.rejects(
        m.migrateInto(target, 'vms/s', async (r) => void asked.push(r), () => undefined),
        /the source agent did not connect within 0.3 s/,
      );
      assert.equal(asked.length, 1);
      assert.deepEqual(stopped, ['vms/t']);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});

describe('cluster migration: progress on the pods', () => {
  const base = { migrationId: 'm', qemuStatus: 'active', bytesTransferred: 0, bytesRemaining: 100, bytesTotal: 100, dirtyRateBytesPerSec: 0, mbps: 0, pass: 0, postCopy: false, elapsedMs: 0 };
  it('the percentage follows the disks while they are mirrored, then the memory', () => {
    assert.deepEqual(toProgress({ ...base, phase: 'MirroringDisks', disks: { bytesCopied: 25, bytesTotal: 200 } }), {
      phase: 'MirroringDisks', percent: 13, transferredBytes: 0, remainingBytes: 100, diskCopiedBytes: 25, diskTotalBytes: 200,
    });
    assert.equal(toProgress({ ...base, phase: 'PreCopy', bytesTransferred: 60, bytesRemaining: 40, disks: { bytesCopied: 200, bytesTotal: 200 } }).percent, 60);
    assert.equal(toProgress({ ...base, phase: 'Completed', bytesRemaining: 3 }).percent, 100);
    assert.equal(toProgress({ ...base, phase: 'Preparing', bytesTotal: 0 }).percent, undefined);
  });
});
