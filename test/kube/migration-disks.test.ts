/**
 * Cluster migration of a VM on a node-local disk: two agents (nodes A and B) on the fake API
 * server, each with its own real CSI driver (qcow2 pool, loop-published Block volumes), kubelet-
 * like sandboxes whose container sees its volume at the `volumeDevices` devicePath (bind-mounted
 * in the sandbox's mount namespace, as the kubelet does), real QEMU under TCG, TLS on.
 *
 * The test plays scheduler, external-provisioner and kubelet: the target pod's claim is a fresh
 * podvirt volume on B. The agents decide from the claims' PVs that the disk is node-local, and
 * the driver mirrors it over NBD (on the target pod's address, TLS) while the guest writes.
 * A first attempt whose target QEMU dies mid-mirror, and a second whose target pod is deleted
 * mid-mirror, leave the source running, its mirror gone and the migration's Secret deleted.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import type { CoreV1Event, V1Pod } from '@kubernetes/client-node';
import { CoreV1Api } from '@kubernetes/client-node';
import { ClusterAgent } from '../../agent/kube/cluster-agent.js';
import { KubeMigration } from '../../agent/kube/kube-migration.js';
import { kubectlMain } from '../../agent/kube/kubectl/main.js';
import { kubeVolumeLookup } from '../../agent/kube/local-volumes.js';
import { VmCoreRuntime } from '../../agent/kube/vm-core-runtime.js';
import { CsiBackend } from '../../agent/local/csi-backend.js';
import type { ClaimRecord, VolumeAttachmentRecord } from '../../agent/local/pod-store.js';
import { DEFAULT_MIGRATION_CONFIG } from '../../agent/migration/config.js';
import { exec } from '../../lib/exec.js';
import { createLogger } from '../../lib/log.js';
import { PROJECT_ROOT } from '../../lib/project-root.js';
import { skipBecause } from '../helpers/skip.js';
import { FakeApiServer } from './fake-apiserver.js';
import { createKubeletSandbox, type KubeletSandbox } from './kubelet-sandbox.js';
import { typeLine } from '../helpers/serial.js';
import { until as waitUntil, type Probe, alive } from '../helpers/until.js';

const log = createLogger('test-kube-mig-disk', process.env.PODVIRT_TEST_LOG ?? 'silent');
const guest = path.join(PROJECT_ROOT, '.cache', 'guest');
const MiB = 2 ** 20;
const SIZE = 32 * MiB;
const AGENT_NS = 'podvirt-system';

const until = <T>(what: string, probe: Probe<T>, timeoutMs = 60000): Promise<T> => waitUntil(what, probe, timeoutMs, 50);

/** Bytes of a block device read with O_DIRECT (no page cache of the host in between). */
async function readDevice(dev: string, skipMiB: number, countMiB: number, tmp: string): Promise<Buffer> {
  const out = path.join(tmp, `read-${randomBytes(3).toString('hex')}`);
  await exec('dd', [`if=${dev}`, `of=${out}`, 'bs=1M', `skip=${skipMiB}`, `count=${countMiB}`, 'iflag=direct', 'status=none']);
  try {
    return await fs.readFile(out);
  } finally {
    await fs.rm(out, { force: true });
  }
}

describe('cluster migration with a node-local disk (two agents, two CSI drivers, real QEMU, TLS)', function () {
  this.timeout(300_000);
  const tag = `pvt-kdsk-${randomBytes(3).toString('hex')}`;
  const sub = 100 + (randomBytes(1)[0]! % 100);
  const nodes = { a: `${tag}-a`, b: `${tag}-b` } as const;
  type Node = keyof typeof nodes;
  let api: FakeApiServer;
  let tmp: string;
  let devicePath: string;
  let kubeconfig: string;
  const agents: ClusterAgent[] = [];
  const runtimes = {} as Record<Node, VmCoreRuntime>;
  const csi = {} as Record<Node, CsiBackend>;
  const sandboxes: KubeletSandbox[] = [];
  const attached: Array<{ node: Node; att: VolumeAttachmentRecord }> = [];
  const provisioned: Array<{ node: Node; rec: ClaimRecord }> = [];

  // The VM's own tuning: a 4 MiB/s cap makes the 32 MiB mirror take long enough to write during it.
  const spec = `cpus: 1\nmemory: 128Mi\naccel: tcg\nkernel: ${guest}/vmlinuz\ninitrd: ${guest}/initramfs.cpio.gz\ncmdline: console=ttyS0 podvirt.nodhcp=1\ndisks:\n  - name: data\n    volume: data\nmigration:\n  maxBandwidth: 4Mi\n`;

  const pod = (name: string) => api.getObject('pods', 'default', name) as V1Pod | undefined;
  const ann = (name: string, key: string) => pod(name)?.metadata?.annotations?.[key];
  const cond = (name: string) => pod(name)?.status?.conditions?.find((c) => c.type === 'podvirt.io/VMReady');
  const status = (name: string) => JSON.parse(ann(name, 'vm.podvirt.io/status') ?? '{}') as { phase?: string; qemuPid?: number; consoleSocket?: string };
  const migration = (name: string) => JSON.parse(ann(name, 'vm.podvirt.io/migration') ?? '{}') as { phase?: string; message?: string; target?: string };
  const secrets = () => api.listObjects('secrets').filter((s) => (s.metadata as { namespace?: string }).namespace === AGENT_NS);
  const events = async (name: string): Promise<CoreV1Event[]> =>
    (await api.kubeConfig().makeApiClient(CoreV1Api).listNamespacedEvent({ namespace: 'default', fieldSelector: `involvedObject.name=${name}` })).items;

  /** External-provisioner + kubelet for one claim: a podvirt volume on `node`, its PV and PVC, published for `podName`. */
  async function volumeFor(node: Node, podName: string, claim: string): Promise<string> {
    const rec = await csi[node].provision({ name: `${tag}-${claim}`, sizeBytes: SIZE, volumeMode: 'Block', ephemeral: false, parameters: {} }, undefined);
    provisioned.push({ node, rec });
    api.createObject('persistentvolumes', {
      metadata: { name: `pv-${claim}` },
      spec: { capacity: { storage: '32Mi' }, accessModes: ['ReadWriteOnce'], volumeMode: 'Block', storageClassName: 'podvirt', csi: { driver: 'csi.podvirt.io', volumeHandle: rec.volumeId } },
    });
    const pvc = api.getObject('persistentvolumeclaims', 'default', claim);
    if (pvc) {
      // Bind the claim kubectl made, as the PV controller would.
      (pvc.spec as { volumeName: string }).volumeName = `pv-${claim}`;
      api.replaceObject('persistentvolumeclaims', pvc);
    } else {
      api.createObject('persistentvolumeclaims', {
        metadata: { name: claim, namespace: 'default', annotations: { 'volume.kubernetes.io/storage-provisioner': 'csi.podvirt.io' } },
        spec: { accessModes: ['ReadWriteOnce'], volumeMode: 'Block', storageClassName: 'podvirt', resources: { requests: { storage: '32Mi' } }, volumeName: `pv-${claim}` },
      });
    }
    const att = await csi[node].attach(`${tag}-${podName}`, 'data', rec, 107, 107);
    attached.push({ node, att });
    return att.publishPath;
  }

  /** Kubelet: the sandbox, with the published volume at the container's devicePath (its own mount namespace). */
  async function sandboxFor(name: string, publishPath: string): Promise<KubeletSandbox> {
    const p = pod(name)!;
    const sb = await createKubeletSandbox(tag, { uid: p.metadata!.uid! });
    sandboxes.push(sb);
    await exec('nsenter', ['-t', String(sb.pid), '-m', 'mount', '--bind', publishPath, devicePath]);
    return sb;
  }

  function markRunning(name: string, sb: KubeletSandbox, ip: string): void {
    const p = pod(name)!;
    api.setStatus('pods', 'default', name, {
      phase: 'Running',
      podIP: ip,
      conditions: (p.status?.conditions ?? []).filter((c) => c.type.includes('/')),
      containerStatuses: [{ name: 'compute', containerID: `containerd://${sb.containerId}`, ready: true, restartCount: 0, image: 'x', imageID: 'x', state: { running: {} } }],
    });
  }

  /** A pod network link between the source sandbox and a target sandbox (one /30 per target). */
  async function link(a: KubeletSandbox, b: KubeletSandbox, n: number): Promise<string> {
    const [x, y] = [`pd${tag.slice(-6)}${n}x`, `pd${tag.slice(-6)}${n}y`];
    await exec('ip', ['link', 'add', x, 'netns', a.netnsName, 'type', 'veth', 'peer', 'name', y, 'netns', b.netnsName]);
    await exec('ip', ['-n', a.netnsName, 'addr', 'add', `10.232.${sub}.${4 * n + 1}/30`, 'dev', x]);
    await exec('ip', ['-n', b.netnsName, 'addr', 'add', `10.232.${sub}.${4 * n + 2}/30`, 'dev', y]);
    await exec('ip', ['-n', a.netnsName, 'link', 'set', x, 'up']);
    await exec('ip', ['-n', b.netnsName, 'link', 'set', y, 'up']);
    return `10.232.${sub}.${4 * n + 2}`;
  }

  /**
   * `kubectl podvirt migrate` makes the target pod and a fresh claim for the node-local disk; the
   * test plays scheduler (B), provisioner (a podvirt volume on B) and kubelet.
   */
  async function migrateTo(name: string, sa: KubeletSandbox, n: number): Promise<{ publish: string; code: Promise<number>; err: () => string; sb: KubeletSandbox; ip: string }> {
    const err = new PassThrough();
    let errText = '';
    err.on('data', (b: Buffer) => (errText += b.toString()));
    const code = kubectlMain(['migrate', 'dvm', '--kubeconfig', kubeconfig, '--target-name', name, '--timeout', '200', '--keep-source'], { stdout: new PassThrough(), stderr: err });
    const t = await until('target pod', () => pod(name));
    const claim = t.spec!.volumes!.find((v) => v.name === 'data')!.persistentVolumeClaim!.claimName;
    assert.match(claim, /^dvm-data-mig-[0-9a-f]{5}$/, 'kubectl gave the target its own claim');
    await until('target claim', () => api.getObject('persistentvolumeclaims', 'default', claim));
    t.spec!.nodeName = nodes.b;
    api.replaceObject('pods', t as Record<string, unknown>);
    const publish = await volumeFor('b', name, claim);
    const sb = await sandboxFor(name, publish);
    const ip = await link(sa, sb, n);
    markRunning(name, sb, ip);
    return { publish, code, err: () => errText, sb, ip };
  }

  before(async function () {
    if (!existsSync(path.join(guest, 'vmlinuz'))) skipBecause(this, 'test guest not built (hack/setup.d/20-test-guest.sh)');
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'pvt-kube-mig-disk-'));
    await fs.chmod(tmp, 0o755);
    devicePath = path.join(tmp, 'dev-data');
    await fs.writeFile(devicePath, '');
    api = new FakeApiServer();
    await api.start();
    kubeconfig = await api.writeKubeconfig(tmp);
    for (const k of ['a', 'b'] as const) {
      const node = nodes[k];
      api.createObject('nodes', { metadata: { name: node } });
      // QEMU (uid 107) traverses it to its run dir; the CSI backend would make it 0750.
      await fs.mkdir(path.join(tmp, k), { mode: 0o755 });
      csi[k] = new CsiBackend({ driverStateDir: path.join(tmp, k, 'csi'), stagingDir: path.join(tmp, k, 'staging'), socketPath: path.join(tmp, k, 'csi.sock'), runDir: path.join(tmp, k, 'pub'), nodeId: node, log });
      await csi[k].start();
      const runtime = new VmCoreRuntime({ stateDir: path.join(tmp, k, 'state'), runDir: path.join(tmp, k, 'run'), log });
      runtimes[k] = runtime;
      const agent = new ClusterAgent({
        kc: api.kubeConfig(),
        node,
        runtime,
        migration: new KubeMigration({ runtime, controlAddress: '127.0.0.1', config: { ...DEFAULT_MIGRATION_CONFIG, tls: true }, volumes: kubeVolumeLookup(api.kubeConfig()), log, timeoutMs: 120_000 }),
        namespace: AGENT_NS,
        log: log.child({ node: k }),
        version: 'test',
        metricsAddr: '',
        labelNode: false,
        stopTimeoutMs: 2000,
        retryInitialMs: 100,
      });
      await agent.start();
      agents.push(agent);
    }
  });

  after(async () => {
    for (const a of agents) await a.stop().catch(() => undefined);
    for (const k of ['a', 'b'] as const) await runtimes[k]?.stop(`default/${k === 'a' ? 'dvm' : 'dvm-t'}`, 1000).catch(() => undefined);
    for (const sb of sandboxes) await sb.destroy();
    for (const { node, att } of attached.reverse()) await csi[node].detach(att).catch((e: unknown) => log.error({ err: String(e) }, 'detach'));
    for (const { node, rec } of provisioned) await csi[node].delete(rec).catch(() => undefined);
    for (const k of ['a', 'b'] as const) await csi[k]?.stop();
    await api?.stop();
    if (tmp) await fs.rm(tmp, { recursive: true, force: true });
  });

  it('a failed and a cancelled attempt leave the source running with no mirror and no Secret; the next one carries the disk, written before and during, to B', async () => {
    // The VM on node A, its disk a podvirt volume on A.
    const srcPublish = await volumeFor('a', 'dvm', 'dvm-data');
    api.createObject('pods', {
      metadata: { name: 'dvm', namespace: 'default', annotations: { 'vm.podvirt.io/spec': spec } },
      spec: {
        nodeName: nodes.a,
        volumes: [{ name: 'data', persistentVolumeClaim: { claimName: 'dvm-data' } }],
        containers: [{ name: 'compute', image: 'x', volumeDevices: [{ name: 'data', devicePath }] }],
      },
    });
    const sa = await sandboxFor('dvm', srcPublish);
    markRunning('dvm', sa, `10.232.${sub}.1`);
    await until('source VM running', () => cond('dvm')?.status === 'True');
    const srcPid = status('dvm').qemuPid!;
    const console = status('dvm').consoleSocket!;
    const srcLog = path.join(path.dirname(console), 'serial.log');
    const serial = () => fs.readFile(srcLog, 'utf8').catch(() => '');
    await until('guest booted on A', async () => (await serial()).includes('PODVIRT-GUEST-READY'));
    await typeLine(console, 'diskpattern write /dev/vda before-kube-migration');
    await until('pattern written', async () => (await serial()).includes('PODVIRT-DISK-WRITTEN /dev/vda before-kube-migration'), 30_000);

    // 1. Target QEMU killed while the disk is mirrored.
    const first = await migrateTo('dvm-f', sa, 1);
    await until('mirroring into dvm-f', () => migration('dvm').target === 'default/dvm-f' && migration('dvm').phase === 'MirroringDisks');
    const request = JSON.parse(ann('dvm', 'vm.podvirt.io/migration-request')!) as Record<string, unknown>;
    assert.equal(request.token, undefined, 'no token on the pod');
    assert.match(String(request.secretName), /^podvirt-migration-[a-z0-9]+$/);
    const live = secrets();
    assert.equal(live.length, 1);
    const sec = live[0]! as { metadata: { name: string; labels: Record<string, string> }; data: { token: string } };
    assert.equal(sec.metadata.name, request.secretName);
    assert.equal(sec.metadata.labels['migration.podvirt.io/id'], request.migrationId);
    assert.equal(sec.metadata.labels['migration.podvirt.io/target-node'], nodes.b);
    assert.match(Buffer.from(sec.data.token, 'base64').toString(), /^[0-9a-f]{64}$/);
    const job = await until('mirror copying', async () => ((await runtimes.a.query('default/dvm', 'query-block-jobs')) as Array<{ offset: number; speed: number }>).find((j) => j.offset > 0));
    assert.equal(job.speed, 4 * MiB, "the VM spec's migration.maxBandwidth applies in a cluster");
    const doomed = (await runtimes.b.report('default/dvm-f'))!.qemuPid;
    process.kill(doomed, 'SIGKILL');
    await until('target reports the failure', () => migration('dvm-f').phase === 'failed' && cond('dvm-f')?.reason === 'MigrationFailed');
    assert.equal(await first.code, 1, first.err());
    assert.match(first.err(), /migration failed: .*target QEMU exited/);
    await until('source gives up the request', () => ann('dvm', 'vm.podvirt.io/migration-request') === undefined, 30_000);
    assert.ok((await events('dvm')).some((e) => e.reason === 'MigrationFailed'));
    assert.deepEqual(secrets(), [], 'the Secret went with the migration');
    const st = (await runtimes.a.query('default/dvm', 'query-status')) as { status: string };
    assert.equal(st.status, 'running');
    assert.deepEqual(await runtimes.a.query('default/dvm', 'query-block-jobs'), [], 'mirror job gone');
    const nodesLeft = (await runtimes.a.query('default/dvm', 'query-named-block-nodes')) as Array<{ 'node-name': string }>;
    assert.ok(!nodesLeft.some((n) => n['node-name'].startsWith('pvmig')), 'NBD client node gone');
    assert.equal(status('dvm').qemuPid, srcPid);

    // 2. Cancelled: the target pod is deleted while the disk is mirrored.
    const second = await migrateTo('dvm-c', sa, 2);
    await until('mirroring into dvm-c', () => migration('dvm').target === 'default/dvm-c' && migration('dvm').phase === 'MirroringDisks');
    const cancelledPid = (await runtimes.b.report('default/dvm-c'))!.qemuPid;
    api.deleteObject('pods', 'default', 'dvm-c');
    assert.notEqual(await second.code, 0);
    await until('target QEMU stopped', () => !alive(cancelledPid), 30_000);
    await until('source gives up the request', () => ann('dvm', 'vm.podvirt.io/migration-request') === undefined, 30_000);
    await until('source saw the end', () => migration('dvm').phase === 'Failed' || migration('dvm').phase === 'Cancelled', 30_000);
    assert.deepEqual(secrets(), [], 'the Secret went with the cancelled migration');
    assert.equal(((await runtimes.a.query('default/dvm', 'query-status')) as { status: string }).status, 'running');
    assert.deepEqual(await runtimes.a.query('default/dvm', 'query-block-jobs'), []);
    assert.equal(status('dvm').qemuPid, srcPid);

    // 3. For real: the guest writes while its disk is mirrored.
    const { publish, code, err, sb, ip } = await migrateTo('dvm-t', sa, 3);
    await until('mirroring into dvm-t', () => migration('dvm').target === 'default/dvm-t' && migration('dvm').phase === 'MirroringDisks');
    // The NBD server listens on the target pod's address (port + 1), in the pod's netns, and only speaks TLS.
    assert.match((await exec('ip', ['netns', 'exec', sb.netnsName, 'ss', '-ltnH'])).stdout, new RegExp(`${ip.replace(/\./g, '\\.')}:49153\\b`));
    const plain = await exec('ip', ['netns', 'exec', sa.netnsName, 'qemu-img', 'info', '--image-opts', `driver=nbd,host=${ip},port=49153,export=drive-data`], { allowFailure: true });
    assert.notEqual(plain.code, 0);
    assert.match(plain.stderr, /TLS/i, plain.stderr);
    const mark = (await serial()).length;
    await typeLine(console, 'dd if=/dev/urandom of=/dev/vda bs=1M seek=8 count=4 conv=fsync 2>/dev/null; dd if=/dev/vda bs=1M skip=8 count=4 2>/dev/null | md5sum | sed "s/^/SUM-DURING /"');
    const during = await until('checksum of the data written during the mirror', async () => /SUM-DURING ([0-9a-f]{32})/.exec((await serial()).slice(mark))?.[1], 60_000);
    // Written while the disk was mirrored (or, on a slow machine, already in sync and written to both sides).
    assert.ok(['MirroringDisks', 'PreCopy'].includes(migration('dvm').phase ?? '') && cond('dvm-t')?.reason !== 'Migrated', `phase ${migration('dvm').phase}`);
    assert.equal(await code, 0, err());
    assert.equal(cond('dvm-t')?.reason, 'Migrated', migration('dvm-t').message);
    assert.equal((api.getObject('persistentvolumeclaims', 'default', pod('dvm-t')!.spec!.volumes![0]!.persistentVolumeClaim!.claimName) as { metadata: { ownerReferences?: unknown } }).metadata.ownerReferences, undefined);
    await until('source QEMU gone', () => !alive(srcPid), 30_000);
    // The target's own volume on B holds both (read on the host, past every cache).
    const head = await readDevice(publish, 0, 1, tmp);
    assert.match(head.subarray(0, 512).toString('latin1'), /^PVPAT:before-kube-migration:END\n/);
    assert.equal(createHash('md5').update(await readDevice(publish, 8, 4, tmp)).digest('hex'), during);
    assert.deepEqual(await runtimes.b.query('default/dvm-t', 'query-block-exports'), [], 'NBD export removed on the target');
    assert.deepEqual(secrets(), [], 'no Secret left');
    assert.equal(status('dvm').phase, 'Migrated');
    assert.equal(((await runtimes.b.query('default/dvm-t', 'query-status')) as { status: string }).status, 'running');
  });
});
