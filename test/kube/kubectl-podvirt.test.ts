/**
 * kubectl-podvirt against the fake API server with a temp kubeconfig: ps and status output,
 * migrate creating the target pod and following what the target's agent writes on it.
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { FakeApiServer } from './fake-apiserver.js';
import { kubectlMain } from '../../agent/kube/kubectl/main.js';
import { planTargetPod, migrationState } from '../../agent/kube/kubectl/migrate.js';
import { renderBar } from '../../agent/kube/kubectl/progress-bar.js';
import { detachable, pickAgentPod } from '../../agent/kube/kubectl/console.js';
import type { Io } from '../../agent/kube/kubectl/common.js';

function capture(tty = false): { io: Io; out: () => string; err: () => string } {
  const o = new PassThrough();
  const e = new PassThrough();
  let so = '';
  let se = '';
  o.on('data', (b: Buffer) => (so += b.toString()));
  e.on('data', (b: Buffer) => (se += b.toString()));
  (e as unknown as { isTTY: boolean }).isTTY = tty;
  return { io: { stdout: o, stderr: e }, out: () => so, err: () => se };
}

const vmPod = (name: string, node: string | undefined, extra: Record<string, string> = {}) => ({
  metadata: {
    name,
    namespace: 'vms',
    labels: { app: name },
    annotations: { 'vm.podvirt.io/spec': 'cpus: 2\nmemory: 256Mi\n', ...extra },
  },
  spec: { ...(node ? { nodeName: node } : {}), containers: [{ name: 'compute', image: 'example.org/launcher:dev' }] },
});

describe('kubectl-podvirt (fake API server, temp kubeconfig)', function () {
  let api: FakeApiServer;
  let kubeconfig: string;
  before(async () => {
    api = new FakeApiServer();
    await api.start();
    kubeconfig = await api.writeKubeconfig();
    const status = JSON.stringify({ phase: 'Running', qemuPid: 4242, vcpuThreads: [{ index: 0, tid: 4250, cpus: [2] }, { index: 1, tid: 4251, cpus: [3] }] });
    api.createObject('pods', vmPod('vm-a', 'node-1', { 'vm.podvirt.io/status': status, 'vm.podvirt.io/topology': '{"machine":"pc-q35-7.2"}' }));
    api.setStatus('pods', 'vms', 'vm-a', { phase: 'Running', conditions: [{ type: 'podvirt.io/VMReady', status: 'True', reason: 'Running', message: 'QEMU pid 4242' }] });
    api.createObject('pods', vmPod('vm-b', undefined));
    api.createObject('pods', { metadata: { name: 'plain', namespace: 'vms' }, spec: { containers: [{ name: 'c', image: 'x' }] } });
    api.createObject('events', {
      metadata: { name: 'vm-a.1', namespace: 'vms' },
      involvedObject: { kind: 'Pod', name: 'vm-a', namespace: 'vms' },
      type: 'Normal',
      reason: 'Started',
      message: 'VM started on node-1',
      lastTimestamp: new Date().toISOString(),
    });
  });
  after(async () => {
    await api.stop();
    await fs.rm(path.dirname(kubeconfig), { recursive: true, force: true });
  });

  it('ps lists only VM pods with node, phase, readiness, QEMU pid and vCPUs', async () => {
    const c = capture();
    assert.equal(await kubectlMain(['ps', '--kubeconfig', kubeconfig, '-n', 'vms'], c.io), 0);
    const lines = c.out().trim().split('\n');
    assert.match(lines[0]!, /^NAME\s+NODE\s+PHASE\s+READY\s+QEMU-PID\s+VCPUS\s+AGE$/);
    assert.match(lines[1]!, /^vm-a\s+node-1\s+Running\s+True\s+4242\s+2\s+\d+s$/);
    assert.match(lines[2]!, /^vm-b\s+<none>\s+Pending\s+Unknown\s+-\s+-\s+\d+s$/);
    assert.equal(lines.length, 3, 'the plain pod is not listed');
    const j = capture();
    assert.equal(await kubectlMain(['ps', '--kubeconfig', kubeconfig, '-A', '-o', 'json'], j.io), 0);
    const parsed = JSON.parse(j.out()) as Array<{ name: string; qemuPid?: number }>;
    assert.deepEqual(parsed.map((p) => [p.name, p.qemuPid]), [['vm-a', 4242], ['vm-b', undefined]]);
  });

  it('status shows phase, pinning, topology and events; errors are clear', async () => {
    const c = capture();
    assert.equal(await kubectlMain(['status', 'vm-a', '--kubeconfig', kubeconfig, '-n', 'vms'], c.io), 0);
    assert.match(c.out(), /Phase:\s+Running/);
    assert.match(c.out(), /Ready:\s+True \(Running: QEMU pid 4242\)/);
    assert.match(c.out(), /vcpu1\s+tid 4251\s+cpus 3/);
    assert.match(c.out(), /Topology:\s+recorded/);
    assert.match(c.out(), /Normal\s+Started\s+\d+s\s+VM started on node-1/);
    const j = capture();
    assert.equal(await kubectlMain(['status', 'vm-a', '--json', '--kubeconfig', kubeconfig, '-n', 'vms'], j.io), 0);
    const s = JSON.parse(j.out()) as { qemuPid: number; topology: { machine: string }; events: unknown[] };
    assert.equal(s.qemuPid, 4242);
    assert.equal(s.topology.machine, 'pc-q35-7.2');
    assert.equal(s.events.length, 1);
    const missing = capture();
    assert.equal(await kubectlMain(['status', 'nope', '--kubeconfig', kubeconfig, '-n', 'vms'], missing.io), 1);
    assert.match(missing.err(), /error: pods "nope" not found/);
    const plain = capture();
    assert.equal(await kubectlMain(['status', 'plain', '--kubeconfig', kubeconfig, '-n', 'vms'], plain.io), 2);
    assert.match(plain.err(), /not a VM pod/);
  });

  it('plans a target pod: same spec and topology, migrate-from set, kept off the source node', () => {
    const src = api.getObject('pods', 'vms', 'vm-a')!;
    const t = planTargetPod(src, { suffix: 'abcde', targetNode: 'node-2' });
    assert.equal(t.metadata!.name, 'vm-a-mig-abcde');
    assert.equal(t.metadata!.annotations!['vm.podvirt.io/migrate-from'], 'vms/vm-a');
    assert.equal(t.metadata!.annotations!['vm.podvirt.io/topology'], '{"machine":"pc-q35-7.2"}');
    assert.equal(t.metadata!.annotations!['vm.podvirt.io/status'], undefined);
    assert.equal(t.spec!.nodeName, undefined);
    assert.deepEqual(t.spec!.affinity!.nodeAffinity!.requiredDuringSchedulingIgnoredDuringExecution!.nodeSelectorTerms[0]!.matchExpressions, [
      { key: 'kubernetes.io/hostname', operator: 'NotIn', values: ['node-1'] },
      { key: 'kubernetes.io/hostname', operator: 'In', values: ['node-2'] },
    ]);
    assert.equal(planTargetPod({ ...t, spec: { ...t.spec!, nodeName: 'node-2' } }, { suffix: '12345' }).metadata!.name, 'vm-a-mig-12345', 'no suffix pile-up on repeated migrations');
    assert.throws(() => planTargetPod(src, { targetNode: 'node-1' }), /already runs on/);
    assert.throws(() => planTargetPod(api.getObject('pods', 'vms', 'vm-b')!), /not scheduled/);
  });

  it('migrate creates the target pod and follows its progress to success', async () => {
    const c = capture(false);
    const run = kubectlMain(['migrate', 'vm-a', '--kubeconfig', kubeconfig, '-n', 'vms', '--target-name', 'vm-a-t1', '--timeout', '30', '--keep-source'], c.io);
    // Play the scheduler and the target node's agent.
    await waitForPod(api, 'vm-a-t1');
    const target = api.getObject('pods', 'vms', 'vm-a-t1')!;
    assert.equal((target.metadata as { annotations: Record<string, string> }).annotations['vm.podvirt.io/migrate-from'], 'vms/vm-a');
    const patch = (ann: Record<string, string>) => {
      const cur = api.getObject('pods', 'vms', 'vm-a-t1')!;
      const meta = cur.metadata as { annotations: Record<string, string> };
      meta.annotations = { ...meta.annotations, ...ann };
      (cur.spec as { nodeName: string }).nodeName = 'node-2';
      replace(api, cur);
    };
    await waitFor(() => api.watchCount('pods') > 0);
    patch({ 'vm.podvirt.io/migration': JSON.stringify({ phase: 'active', percent: 40, transferredBytes: 40 * 2 ** 20, remainingBytes: 60 * 2 ** 20 }) });
    patch({ 'vm.podvirt.io/migration': JSON.stringify({ phase: 'active', percent: 90, transferredBytes: 90 * 2 ** 20, remainingBytes: 10 * 2 ** 20 }) });
    api.setStatus('pods', 'vms', 'vm-a-t1', { phase: 'Running', conditions: [{ type: 'podvirt.io/VMReady', status: 'True', reason: 'Migrated', message: 'QEMU pid 777' }] });
    assert.equal(await run, 0, c.err());
    assert.match(c.err(), /migration target pod vms\/vm-a-t1 created/);
    assert.match(c.err(), /\[#{12}\.{18}\]\s+40%\s+active\s+40 MiB sent, 60 MiB left/);
    assert.match(c.err(), /\[#{27}\.{3}\]\s+90%/);
    assert.match(c.out(), /vms\/vm-a migrated to vm-a-t1: QEMU pid 777/);
  });

  it('migrate reports a failed migration with exit 1', async () => {
    const c = capture(false);
    const run = kubectlMain(['migrate', 'vm-a', '--kubeconfig', kubeconfig, '-n', 'vms', '--target-name', 'vm-a-t2', '--timeout', '30'], c.io);
    await waitForPod(api, 'vm-a-t2');
    await waitFor(() => api.watchCount('pods') > 0);
    const cur = api.getObject('pods', 'vms', 'vm-a-t2')!;
    (cur.metadata as { annotations: Record<string, string> }).annotations['vm.podvirt.io/migration'] = JSON.stringify({ phase: 'failed', message: 'source VM is not running' });
    replace(api, cur);
    assert.equal(await run, 1);
    assert.match(c.err(), /migration failed: source VM is not running/);
  });

  it('migrate deletes the source pod only after the source reports Migrated (its IPAM hand-over is done)', async () => {
    const c = capture(false);
    const run = kubectlMain(['migrate', 'vm-a', '--kubeconfig', kubeconfig, '-n', 'vms', '--target-name', 'vm-a-t3', '--timeout', '30'], c.io);
    await waitForPod(api, 'vm-a-t3');
    await waitFor(() => api.watchCount('pods') > 0);
    api.setStatus('pods', 'vms', 'vm-a-t3', { phase: 'Running', conditions: [{ type: 'podvirt.io/VMReady', status: 'True', reason: 'Migrated', message: 'QEMU pid 778' }] });
    await waitFor(() => /migrated to vm-a-t3/.test(c.out()));
    // The target is done but the source agent has not finished its side: the source pod must stay.
    await new Promise((r) => setTimeout(r, 400));
    assert.ok(api.getObject('pods', 'vms', 'vm-a'), 'source pod deleted before its agent reported Migrated');
    const src = api.getObject('pods', 'vms', 'vm-a')!;
    (src.metadata as { annotations: Record<string, string> }).annotations['vm.podvirt.io/status'] = JSON.stringify({ phase: 'Migrated', target: 'vms/vm-a-t3' });
    replace(api, src);
    assert.equal(await run, 0, c.err());
    assert.equal(api.getObject('pods', 'vms', 'vm-a'), undefined);
    assert.match(c.err(), /source pod vms\/vm-a deleted/);
  });

  it('pure pieces: progress bar, migration state, agent pod choice, console detach key', async () => {
    assert.equal(renderBar({ phase: 'active', percent: 50 }, 10), '[#####.....]  50%  active');
    assert.deepEqual(migrationState({ metadata: {}, spec: { containers: [] } }), { done: false, progress: { phase: 'scheduling' } });
    const agents = [
      { metadata: { name: 'a1' }, spec: { nodeName: 'n1', containers: [] }, status: { phase: 'Pending' } },
      { metadata: { name: 'a2' }, spec: { nodeName: 'n1', containers: [] }, status: { phase: 'Running' } },
    ];
    assert.equal(pickAgentPod(agents, 'n1')?.metadata?.name, 'a2');
    assert.equal(pickAgentPod(agents, 'n2'), undefined);
    const input = new PassThrough();
    const out = detachable(input);
    let got = '';
    out.on('data', (b: Buffer) => (got += b.toString()));
    const ended = new Promise((r) => out.on('end', r));
    input.write('ls\r');
    input.write(Buffer.from([0x61, 0x1d, 0x62]));
    await ended;
    assert.equal(got, 'ls\ra');
  });
});

function replace(api: FakeApiServer, obj: Record<string, unknown>): void {
  api.replaceObject('pods', obj);
}

async function waitFor(pred: () => boolean, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function waitForPod(api: FakeApiServer, name: string): Promise<void> {
  await waitFor(() => api.getObject('pods', 'vms', name) !== undefined);
}
