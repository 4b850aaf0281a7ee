/**
 * Migration by target pod, end to end on one host: two cluster agents (nodes A and B) on the fake
 * API server, kubelet-like sandboxes whose netns are joined by a veth (the pod network between
 * the two pods), real QEMU under TCG. `kubectl podvirt migrate` creates the target pod; the test
 * plays scheduler and kubelet for it; agent B starts the incoming QEMU in it and asks agent A
 * (through the source pod), agent A sends the VM; the guest keeps counting on B.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import type { CoreV1Event, V1Pod } from '@kubernetes/client-node';
import { CoreV1Api } from '@kubernetes/client-node';
import { ClusterAgent } from '../../agent/kube/cluster-agent.js';
import { KubeMigration } from '../../agent/kube/kube-migration.js';
import { kubectlMain } from '../../agent/kube/kubectl/main.js';
import { VmCoreRuntime } from '../../agent/kube/vm-core-runtime.js';
import { DEFAULT_MIGRATION_CONFIG } from '../../agent/migration/config.js';
import { exec } from '../../lib/exec.js';
import { createLogger } from '../../lib/log.js';
import { PROJECT_ROOT } from '../../lib/project-root.js';
import { skipBecause } from '../helpers/skip.js';
import { FakeApiServer } from './fake-apiserver.js';
import { createKubeletSandbox, type KubeletSandbox } from './kubelet-sandbox.js';
import { until as waitUntil, type Probe, alive } from '../helpers/until.js';

const log = createLogger('test-kube-mig', process.env.PODVIRT_TEST_LOG ?? 'silent');
const guest = path.join(PROJECT_ROOT, '.cache', 'guest');

const until = <T>(what: string, probe: Probe<T>, timeoutMs = 60000): Promise<T> => waitUntil(what, probe, timeoutMs, 50);

describe('migration by target pod (two agents, real QEMU)', function () {
  this.timeout(240_000);
  const tag = `pvt-kube-${randomBytes(3).toString('hex')}`;
  const sub = 100 + (randomBytes(1)[0]! % 100);
  const nodes = { a: `${tag}-a`, b: `${tag}-b` };
  let api: FakeApiServer;
  let tmp: string;
  const agents: ClusterAgent[] = [];
  const sandboxes: KubeletSandbox[] = [];

  const spec = `cpus: 1\nmemory: 128Mi\naccel: tcg\nkernel: ${guest}/vmlinuz\ninitrd: ${guest}/initramfs.cpio.gz\ncmdline: console=ttyS0 podvirt.nodhcp=1\n`;

  /** Plays the kubelet for a pod bound to a node: its sandbox (netns, cgroups, container process). */
  async function sandboxFor(name: string): Promise<KubeletSandbox> {
    const pod = api.getObject('pods', 'default', name) as V1Pod;
    const sb = await createKubeletSandbox(tag, { uid: pod.metadata!.uid! });
    sandboxes.push(sb);
    return sb;
  }

  /** ... then reports it Running with the container ID and pod IP. */
  function markRunning(name: string, sb: KubeletSandbox, ip: string): void {
    const pod = api.getObject('pods', 'default', name) as V1Pod;
    api.setStatus('pods', 'default', name, {
      phase: 'Running',
      podIP: ip,
      conditions: (pod.status?.conditions ?? []).filter((c) => c.type.includes('/')),
      containerStatuses: [{ name: 'compute', containerID: `containerd://${sb.containerId}`, ready: true, restartCount: 0, image: 'x', imageID: 'x', state: { running: {} } }],
    });
  }

  const pod = (name: string) => api.getObject('pods', 'default', name) as V1Pod | undefined;
  const cond = (name: string) => pod(name)?.status?.conditions?.find((c) => c.type === 'podvirt.io/VMReady');
  const status = (name: string) => JSON.parse(pod(name)?.metadata?.annotations?.['vm.podvirt.io/status'] ?? '{}') as { phase?: string; qemuPid?: number; consoleSocket?: string };
  const events = async (name: string): Promise<CoreV1Event[]> =>
    (await api.kubeConfig().makeApiClient(CoreV1Api).listNamespacedEvent({ namespace: 'default', fieldSelector: `involvedObject.name=${name}` })).items;

  before(async function () {
    if (!existsSync(path.join(guest, 'vmlinuz'))) skipBecause(this, 'test guest not built (hack/setup.d/20-test-guest.sh)');
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'pvt-kube-mig-'));
    await fs.chmod(tmp, 0o755);
    api = new FakeApiServer();
    await api.start();
    for (const [k, node] of Object.entries(nodes)) {
      api.createObject('nodes', { metadata: { name: node } });
      const runtime = new VmCoreRuntime({ stateDir: path.join(tmp, k, 'state'), runDir: path.join(tmp, k, 'run'), log });
      const agent = new ClusterAgent({
        kc: api.kubeConfig(),
        node,
        runtime,
        migration: new KubeMigration({ runtime, controlAddress: '127.0.0.1', config: { ...DEFAULT_MIGRATION_CONFIG, tls: false }, log, timeoutMs: 120_000 }),
        log: log.child({ node: k }),
        version: 'test',
        metricsAddr: '127.0.0.1:0',
        labelNode: false,
        stopTimeoutMs: 2000,
        retryInitialMs: 100,
      });
      await agent.start();
      agents.push(agent);
    }
  });

  after(async () => {
    for (const a of agents) await a.stop();
    for (const sb of sandboxes) await sb.destroy();
    await api?.stop();
    if (tmp) await fs.rm(tmp, { recursive: true, force: true });
  });

  it('kubectl podvirt migrate: target pod created, VM moved by the two agents, guest keeps running', async () => {
    api.createObject('pods', {
      metadata: { name: 'mvm', namespace: 'default', annotations: { 'vm.podvirt.io/spec': spec } },
      spec: { nodeName: nodes.a, containers: [{ name: 'compute', image: 'x' }] },
    });
    const sa = await sandboxFor('mvm');
    markRunning('mvm', sa, `10.231.${sub}.1`);
    await until('source VM running', () => (cond('mvm')?.status === 'True' ? true : undefined));
    const srcPid = status('mvm').qemuPid!;
    const srcLog = path.join(path.dirname(status('mvm').consoleSocket!), 'serial.log');
    await until('guest booted on A', async () => ((await fs.readFile(srcLog, 'utf8').catch(() => '')).includes('PODVIRT-GUEST-READY') ? true : undefined));
    // The source's log goes with its QEMU (kubectl returns only once the source reports Migrated,
    // by then its run dir is cleaned up): follow it while the migration runs.
    let lastOnA = 0;
    const followA = setInterval(() => {
      fs.readFile(srcLog, 'utf8').then(
        (text) => (lastOnA = Math.max(lastOnA, Number([...text.matchAll(/tick (\d+) /g)].pop()?.[1] ?? 0))),
        () => undefined,
      );
    }, 100);

    const kubeconfig = await api.writeKubeconfig(tmp);
    const err = new PassThrough();
    let errText = '';
    err.on('data', (b: Buffer) => (errText += b.toString()));
    const out = new PassThrough();
    let outText = '';
    out.on('data', (b: Buffer) => (outText += b.toString()));
    const run = kubectlMain(['migrate', 'mvm', '--kubeconfig', kubeconfig, '--target-name', 'mvm-t', '--timeout', '180'], { stdout: out, stderr: err });

    // Scheduler: bind the target to node B (the plugin kept it off A). Kubelet: run its sandbox.
    await until('target pod', () => pod('mvm-t'));
    const t = pod('mvm-t')!;
    assert.equal(t.metadata!.annotations!['vm.podvirt.io/migrate-from'], 'default/mvm');
    t.spec!.nodeName = nodes.b;
    api.replaceObject('pods', t as Record<string, unknown>);
    const sbB = await sandboxFor('mvm-t');
    // The pod network between the two pods (in place before the kubelet reports the pod running).
    const [vx, vy] = [`pk${tag.slice(-6)}x`, `pk${tag.slice(-6)}y`];
    await exec('ip', ['link', 'add', vx, 'netns', sa.netnsName, 'type', 'veth', 'peer', 'name', vy, 'netns', sbB.netnsName]);
    await exec('ip', ['-n', sa.netnsName, 'addr', 'add', `10.231.${sub}.1/30`, 'dev', vx]);
    await exec('ip', ['-n', sbB.netnsName, 'addr', 'add', `10.231.${sub}.2/30`, 'dev', vy]);
    await exec('ip', ['-n', sa.netnsName, 'link', 'set', vx, 'up']);
    await exec('ip', ['-n', sbB.netnsName, 'link', 'set', vy, 'up']);
    markRunning('mvm-t', sbB, `10.231.${sub}.2`);

    const code = await run.finally(() => clearInterval(followA));
    assert.equal(code, 0, errText);
    assert.match(outText, /default\/mvm migrated to mvm-t/);
    assert.match(errText, /\d+%/, 'progress shown');
    const tgt = status('mvm-t');
    assert.equal(tgt.phase, 'Running');
    assert.ok(tgt.qemuPid && tgt.qemuPid !== srcPid && alive(tgt.qemuPid));
    assert.equal(cond('mvm-t')?.reason, 'Migrated');
    // The guest continues on B: ticks beyond the last one seen on A, no reboot.
    const before = lastOnA;
    assert.ok(before > 0, 'ticks seen on A');
    const dstLog = path.join(path.dirname(tgt.consoleSocket!), 'serial.log');
    const ticks = await until('ticks on B', async () => {
      const text = await fs.readFile(dstLog, 'utf8').catch(() => '');
      const n = Number([...text.matchAll(/tick (\d+) /g)].pop()?.[1] ?? 0);
      return n > before ? { n, text } : undefined;
    });
    assert.doesNotMatch(ticks.text, /PODVIRT-GUEST-READY/, 'no reboot on the target');
    // Source side: VM gone, pod says where it went.
    await until('source QEMU gone', () => (alive(srcPid) ? undefined : true), 30_000);
    // The plugin deleted the source pod once the VM ran on B (events of the old pod remain).
    assert.match(errText, /source pod default\/mvm deleted/);
    await until('source pod gone', () => (pod('mvm') ? undefined : true));
    const srcEvents = await events('mvm');
    assert.ok(srcEvents.some((e) => e.reason === 'Migrating'));
    assert.ok((await events('mvm-t')).some((e) => e.reason === 'Migrated'));
    const targetAgentMetrics = await (await fetch(`http://127.0.0.1:${agents[1]!.metricsPort}/metrics`)).text();
    assert.match(targetAgentMetrics, /podvirt_vm_starts_total\{how="migrated"\} 1/);
    const sourceAgentMetrics = await (await fetch(`http://127.0.0.1:${agents[0]!.metricsPort}/metrics`)).text();
    assert.match(sourceAgentMetrics, /podvirt_vm_migration_transferred_bytes\{namespace="default",pod="mvm"\} [1-9]/);
    assert.match(sourceAgentMetrics, /podvirt_vm_migration_total_time_seconds\{namespace="default",pod="mvm"\} [0-9.]+/);
  });
});
