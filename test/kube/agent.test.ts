/**
 * The cluster agent against the fake API server through the real @kubernetes/client-node, with
 * kubelet-like pod sandboxes made on this host (netns + pod cgroup + a sleeping container process),
 * so the agent's discovery is the real /proc scan.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, promises as fs, readlinkSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PROJECT_ROOT } from '../../lib/project-root.js';
import { exec } from '../../lib/exec.js';
import { CoreV1Api, type CoreV1Event, type V1Pod } from '@kubernetes/client-node';
import { ClusterAgent } from '../../agent/kube/cluster-agent.js';
import { buildVmRuntime } from '../../agent/kube/compose.js';
import type { VmRuntime, VmTarget } from '../../agent/kube/vm-runtime.js';
import { createLogger } from '../../lib/log.js';
import { FakeApiServer } from './fake-apiserver.js';
import { createKubeletSandbox, type KubeletSandbox } from './kubelet-sandbox.js';
import { skipBecause } from '../helpers/skip.js';
import { until as waitUntil, type Probe } from '../helpers/until.js';

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
  query(key: string, command: string): Promise<unknown> {
    if (!this.inner.query) return Promise.reject(new Error('runtime has no QMP queries'));
    return this.inner.query(key, command);
  }
  count(prefix: string): number {
    return this.calls.filter((c) => c.startsWith(prefix)).length;
  }
}

const until = <T>(what: string, probe: Probe<T>, timeoutMs = 20000): Promise<T> => waitUntil(what, probe, timeoutMs, 25);

describe('podvirt agent in a cluster (fake API server, kubelet-like sandboxes)', function () {
  this.timeout(120_000);
  const tag = `pvt-kube-${randomBytes(3).toString('hex')}`;
  const node = `${tag}-node`;
  let api: FakeApiServer;
  let core: CoreV1Api;
  let runtime: ObservedRuntime;
  let agent: ClusterAgent;
  const sandboxes: KubeletSandbox[] = [];
  let tmp: string;
  const guest = path.join(PROJECT_ROOT, '.cache', 'guest');
  const vmSpec = (extra = '') =>
    `cpus: 1\nmemory: 128Mi\naccel: tcg\nkernel: ${guest}/vmlinuz\ninitrd: ${guest}/initramfs.cpio.gz\ncmdline: console=ttyS0 podvirt.nodhcp=1\n${extra}`;
  const alive = (pid: number) => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };

  const vmPod = (name: string, nodeName: string, spec = 'cpus: 1\nmemory: 64Mi\naccel: tcg\n'): V1Pod => ({
    metadata: { name, namespace: 'default', annotations: { 'vm.podvirt.io/spec': spec } },
    spec: { nodeName, containers: [{ name: 'compute', image: 'example.org/launcher:dev' }] },
  });

  /** Creates the pod, then plays the kubelet: its uid's sandbox, Running status with the container ID. */
  async function runPod(name: string, spec?: string, edit: (p: V1Pod) => void = () => undefined): Promise<{ pod: V1Pod; sb: KubeletSandbox }> {
    const body = vmPod(name, node, spec);
    edit(body);
    const created = api.createObject('pods', body as Record<string, unknown>) as V1Pod;
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
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'pvt-kube-agent-'));
    // QEMU runs as the pod's uid: its run dir's parents must be traversable.
    await fs.chmod(tmp, 0o755);
    api = new FakeApiServer({ bookmarkIntervalMs: 200, gracefulPodDeletion: true });
    await api.start();
    core = api.kubeConfig().makeApiClient(CoreV1Api);
    api.createObject('nodes', {
      metadata: { name: node, labels: { 'kubernetes.io/hostname': node, 'cpu-feature.podvirt.io/stale-flag': 'true' } },
      status: { capacity: { cpu: '2', 'devices.kubevirt.io/kvm': '1000', 'devices.kubevirt.io/tun': '1000' } },
    });
    runtime = new ObservedRuntime(
      await buildVmRuntime({
        node,
        stateDir: path.join(tmp, 'state'),
        runDir: path.join(tmp, 'run'),
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
    agent = makeAgent();
    await agent.start();
  });

  const makeAgent = () =>
    new ClusterAgent({
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
      stopTimeoutMs: 3000,
    });

  after(async () => {
    await agent?.stop();
    // VMs still running (a failed test) go with their sandboxes' cgroups.
    for (const sb of sandboxes) await sb.destroy();
    await api?.stop();
    if (tmp) await fs.rm(tmp, { recursive: true, force: true });
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
  it('a VM pod on its node: QEMU runs non-root in the pod netns and cgroup; pod status, annotations, events and metrics say so', async function () {
    if (!existsSync(path.join(guest, 'vmlinuz'))) skipBecause(this, 'test guest not built (hack/setup.d/20-test-guest.sh)');
    // A file disk on a filesystem volume of the container (reached by QEMU through /proc/<pid>/root).
    const vol = path.join(tmp, 'vol-vm1');
    await fs.mkdir(vol, { mode: 0o755 });
    await fs.writeFile(path.join(vol, 'disk.img'), '');
    await fs.truncate(path.join(vol, 'disk.img'), 8 * 2 ** 20);
    await fs.chown(path.join(vol, 'disk.img'), 107, 107);
    const { sb } = await runPod('vm1', vmSpec('disks:\n  - {name: data, volume: data, type: file, path: disk.img}\n'), (p) => {
      p.spec!.volumes = [{ name: 'data', emptyDir: {} }];
      p.spec!.containers[0]!.volumeMounts = [{ name: 'data', mountPath: vol }];
    });
    await exec('ip', ['-n', sb.netnsName, 'link', 'add', 'pvtdummy0', 'type', 'veth', 'peer', 'name', 'pvtdummy1']);
    const cond = await until('VMReady=True', () => {
      const c = condition('vm1');
      return c?.status === 'True' ? c : c?.status === 'False' ? Promise.reject(new Error(`VM failed: ${c.message}`)) : undefined;
    }, 60_000);
    assert.equal(cond.reason, 'Running');
    const status = JSON.parse(annotation('vm1', 'vm.podvirt.io/status')!) as { phase: string; qemuPid: number; vcpuThreads: { index: number; tid: number; cpus: number[] }[]; consoleSocket: string };
    assert.equal(status.phase, 'Running');
    const pid = status.qemuPid;
    assert.ok(alive(pid));
    assert.equal(readlinkSync(`/proc/${pid}/ns/net`), readlinkSync(`/proc/${sb.pid}/ns/net`), 'QEMU in the pod netns');
    const cg = await fs.readFile(`/proc/${pid}/cgroup`, 'utf8');
    assert.ok(cg.includes(`/pod${sb.uid}/${sb.containerId}`), `QEMU in the container cgroup: ${cg}`);
    assert.match(await fs.readFile(`/proc/${pid}/status`, 'utf8'), /^Uid:\s+107\s+107\s+107\s+107$/m, 'QEMU non-root');
    assert.equal(status.vcpuThreads.length, 1);
    const topo = JSON.parse(annotation('vm1', 'vm.podvirt.io/topology')!) as { machine: string };
    assert.match(topo.machine, /^pc-q35-/);
    const evs = await events('vm1');
    assert.ok(evs.some((e) => e.reason === 'Started' && e.type === 'Normal' && e.message!.includes(String(pid))));
    // The guest boots (its serial log is the one the status points at).
    await until('guest marker', async () => ((await fs.readFile(path.join(path.dirname(status.consoleSocket), 'serial.log'), 'utf8').catch(() => '')).includes('PODVIRT-GUEST-READY') ? true : undefined), 60_000);
    const m = await (await fetch(`http://127.0.0.1:${agent.metricsPort}/metrics`)).text();
    assert.match(m, new RegExp(`podvirt_vm_info\\{namespace="default",pod="vm1",qemu_pid="${pid}"\\} 1`));
    assert.match(m, /podvirt_vm_vcpu_seconds_total\{namespace="default",pod="vm1",vcpu="0"\} [0-9.]+/);
    assert.match(m, /podvirt_vm_memory_rss_bytes\{namespace="default",pod="vm1"\} [1-9]/);
    assert.match(m, /podvirt_vm_network_receive_bytes_total\{namespace="default",pod="vm1",interface="pvtdummy0"\} 0/);
    assert.match(m, /podvirt_node_vms 1/);
    assert.match(m, /podvirt_vm_disk_read_bytes_total\{namespace="default",pod="vm1",drive="[^"]+"\} [1-9]/, 'the guest read its disk');
    assert.match(m, /podvirt_vm_starts_total\{how="started"\} 1/);
  });

  it('agent restart: the VM keeps running and is re-adopted (same qemuPid, no new Started event)', async function () {
    if (condition('vm1')?.status !== 'True') skipBecause(this, 'needs the VM of the previous test');
    const before = JSON.parse(annotation('vm1', 'vm.podvirt.io/status')!) as { qemuPid: number };
    await agent.stop();
    assert.ok(alive(before.qemuPid), 'VM outlives the agent');
    agent = makeAgent();
    await agent.start();
    await until('Adopted condition', () => (condition('vm1')?.reason === 'Adopted' ? true : undefined));
    const after = JSON.parse(annotation('vm1', 'vm.podvirt.io/status')!) as { qemuPid: number };
    assert.equal(after.qemuPid, before.qemuPid);
    assert.equal(agent.reconciler.stats.adoptions, 1);
    assert.equal(agent.reconciler.stats.starts, 0);
    assert.equal((await events('vm1')).filter((e) => e.reason === 'Started').length, 1);
  });

  it('pod deleted: the VM is shut down within the grace period, reported, and its files removed', async function () {
    if (condition('vm1')?.status !== 'True') skipBecause(this, 'needs the VM of the previous tests');
    const { qemuPid, consoleSocket } = JSON.parse(annotation('vm1', 'vm.podvirt.io/status')!) as { qemuPid: number; consoleSocket: string };
    // kubectl delete: the pod gets a deletionTimestamp and stays while its containers stop.
    await core.deleteNamespacedPod({ namespace: 'default', name: 'vm1' });
    assert.ok((api.getObject('pods', 'default', 'vm1')?.metadata as { deletionTimestamp?: string }).deletionTimestamp);
    await until('QEMU gone', () => (alive(qemuPid) ? undefined : true), 30_000);
    await until('Stopped reported on the terminating pod', () => (condition('vm1')?.reason === 'Stopped' ? true : undefined));
    assert.equal(JSON.parse(annotation('vm1', 'vm.podvirt.io/status')!).phase, 'Stopped');
    assert.ok((await events('vm1')).some((e) => e.reason === 'Stopped'));
    // The kubelet finishes the deletion.
    api.deleteObject('pods', 'default', 'vm1');
    await agent.reconciler.idle();
    assert.equal(existsSync(path.dirname(consoleSocket)), false, 'run dir removed');
    assert.equal(agent.reconciler.vms.has('default/vm1'), false);
    assert.ok(runtime.count('stop default/vm1') >= 1);
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
  it('a VM that dies is reported within seconds: VMReady=False (Failed), status annotation, Warning event', async function () {
    if (!existsSync(path.join(guest, 'vmlinuz'))) skipBecause(this, 'test guest not built (hack/setup.d/20-test-guest.sh)');
    await runPod('vm2', vmSpec());
    await until('vm2 running', () => (condition('vm2')?.status === 'True' ? true : undefined), 60_000);
    const { qemuPid } = JSON.parse(annotation('vm2', 'vm.podvirt.io/status')!) as { qemuPid: number };
    process.kill(qemuPid, 'SIGKILL');
    const c = await until('VMReady=False after the crash', () => (condition('vm2')?.status === 'False' ? condition('vm2') : undefined), 15_000);
    assert.equal(c!.reason, 'Failed');
    assert.equal(JSON.parse(annotation('vm2', 'vm.podvirt.io/status')!).phase, 'Failed');
    assert.ok((await events('vm2')).some((e) => e.type === 'Warning' && e.reason === 'Failed' && /exited|killed/.test(e.message!)), JSON.stringify((await events('vm2')).map((e) => e.message)));
    // Not restarted behind the user's back: the pod keeps saying what happened.
    await agent.reconciler.idle();
    assert.equal(agent.reconciler.vms.get('default/vm2')?.state, 'exited');
    // A restarted agent does not boot it again (the pod says it ended).
    const starts = runtime.count('start default/vm2');
    await agent.stop();
    agent = makeAgent();
    await agent.start();
    await agent.reconciler.idle();
    assert.equal(runtime.count('start default/vm2'), starts);
    assert.equal(agent.reconciler.vms.get('default/vm2')?.state, 'exited');
    assert.equal(condition('vm2')?.reason, 'Failed');
    // Deleting the pod then removes what the dead VM left on the node (if anything is left).
    const uid = (api.getObject('pods', 'default', 'vm2') as V1Pod).metadata!.uid!;
    api.deleteObject('pods', 'default', 'vm2');
    await until('vm2 files removed', () => (existsSync(path.join(tmp, 'run', 'vms', uid)) || existsSync(path.join(tmp, 'state', 'vms', uid)) ? undefined : true));
  });
});
