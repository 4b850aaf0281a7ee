/**
 * `kubectl podvirt console` end to end: the plugin finds the VM's node and the podvirt agent pod
 * there, opens pods/exec on the fake API server (WebSocket, v4.channel.k8s.io), whose "container
 * runtime" runs the real `podvirt console-attach` against a real QEMU serial console socket; the
 * test guest's shell answers through the whole chain, and Ctrl-] detaches cleanly.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { kubectlMain } from '../../agent/kube/kubectl/main.js';
import { PROJECT_ROOT } from '../../lib/project-root.js';
import { skipBecause } from '../helpers/skip.js';
import { FakeApiServer, type ExecRequest } from './fake-apiserver.js';

const GUEST = path.join(PROJECT_ROOT, '.cache', 'guest');

async function until(what: string, pred: () => boolean | Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await pred())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('kubectl podvirt console (exec into the node agent, real QEMU serial console)', function () {
  this.timeout(120_000);
  let api: FakeApiServer;
  let dir: string;
  let qemu: ChildProcess | undefined;
  const execs: ExecRequest[] = [];

  before(async function () {
    if (!existsSync(path.join(GUEST, 'vmlinuz'))) skipBecause(this, 'test guest not built (hack/setup.d/20-test-guest.sh)');
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'pvt-kube-con-'));
    const sock = path.join(dir, 'serial.sock');
    const log = path.join(dir, 'serial.log');
    // The VM whose console we reach: a plain QEMU with the test guest, its serial on a unix socket.
    qemu = spawn(
      'qemu-system-x86_64',
      ['-machine', 'q35', '-accel', 'tcg', '-cpu', 'max', '-m', '128', '-nodefaults', '-display', 'none', '-no-reboot',
        '-kernel', path.join(GUEST, 'vmlinuz'), '-initrd', path.join(GUEST, 'initramfs.cpio.gz'), '-append', 'console=ttyS0 podvirt.nodhcp=1',
        '-chardev', `socket,id=ser0,path=${sock},server=on,wait=off,logfile=${log}`, '-serial', 'chardev:ser0'],
      { stdio: 'ignore' },
    );
    await until('guest ready on the serial log', async () => (await fs.readFile(log, 'utf8').catch(() => '')).includes('PODVIRT-GUEST-READY'));
    api = new FakeApiServer();
    await api.start();
    api.createObject('pods', {
      metadata: { name: 'vm1', namespace: 'default', annotations: { 'vm.podvirt.io/spec': 'cpus: 1', 'vm.podvirt.io/status': JSON.stringify({ phase: 'Running', qemuPid: qemu.pid, consoleSocket: sock }) } },
      spec: { nodeName: 'node-a', containers: [{ name: 'compute', image: 'x' }] },
    });
    for (const [name, node] of [['podvirt-agent-x1', 'node-b'], ['podvirt-agent-x2', 'node-a']] as const) {
      api.createObject('pods', {
        metadata: { name, namespace: 'podvirt', labels: { 'app.kubernetes.io/name': 'podvirt', 'app.kubernetes.io/component': 'agent' } },
        spec: { nodeName: node, containers: [{ name: 'agent', image: 'x' }] },
      });
      api.setStatus('pods', 'podvirt', name, { phase: 'Running' });
    }
    // The container runtime: runs the command "in the agent container", i.e. this build's CLI here.
    api.execHandler = (r) => {
      execs.push(r);
      assert.equal(r.command[0], 'podvirt');
      return spawn(process.execPath, ['--import', 'tsx', path.join(PROJECT_ROOT, 'bin', 'podvirt.ts'), ...r.command.slice(1)], { stdio: ['pipe', 'pipe', 'pipe'], cwd: PROJECT_ROOT });
    };
  });

  after(async () => {
    qemu?.kill('SIGKILL');
    await api?.stop();
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  it('reaches the guest shell through pods/exec on the right agent pod and detaches on Ctrl-]', async () => {
    const stdin = new PassThrough();
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    let out = '';
    let err = '';
    stdout.on('data', (b: Buffer) => (out += b.toString()));
    stderr.on('data', (b: Buffer) => (err += b.toString()));
    const kubeconfig = await api.writeKubeconfig(dir);
    const run = kubectlMain(['console', 'vm1', '--kubeconfig', kubeconfig], { stdin, stdout, stderr });
    stdin.write('echo pvt-$((6*7))-ok\r');
    await until('the guest shell answer', () => out.includes('pvt-42-ok'), 30_000);
    stdin.write(Buffer.from([0x1d]));
    assert.equal(await run, 0, err);
    assert.equal(execs.length, 1);
    assert.equal(execs[0]!.pod, 'podvirt-agent-x2', 'exec goes to the agent on the VM node');
    assert.equal(execs[0]!.namespace, 'podvirt');
    assert.equal(execs[0]!.container, 'agent');
    assert.deepEqual(execs[0]!.command, ['podvirt', 'console-attach', '--socket', path.join(dir, 'serial.sock')]);
    // The console is free again: a second session works.
    const again = new PassThrough();
    let out2 = '';
    const so2 = new PassThrough();
    so2.on('data', (b: Buffer) => (out2 += b.toString()));
    const run2 = kubectlMain(['console', 'vm1', '--kubeconfig', kubeconfig], { stdin: again, stdout: so2, stderr: new PassThrough() });
    again.write('echo second-$((1+1))\r');
    await until('second session answer', () => out2.includes('second-2'), 30_000);
    again.end();
    assert.equal(await run2, 0);
  });

  it('says clearly when the VM is not running or no agent runs on its node', async () => {
    api.createObject('pods', { metadata: { name: 'vm2', namespace: 'default', annotations: { 'vm.podvirt.io/spec': 'cpus: 1' } }, spec: { nodeName: 'node-a', containers: [{ name: 'c', image: 'x' }] } });
    const kubeconfig = await api.writeKubeconfig(dir);
    const e1 = new PassThrough();
    let s1 = '';
    e1.on('data', (b: Buffer) => (s1 += b.toString()));
    assert.equal(await kubectlMain(['console', 'vm2', '--kubeconfig', kubeconfig], { stdin: new PassThrough(), stdout: new PassThrough(), stderr: e1 }), 1);
    assert.match(s1, /not running \(no console socket reported yet\)/);
    api.createObject('pods', {
      metadata: { name: 'vm3', namespace: 'default', annotations: { 'vm.podvirt.io/spec': 'cpus: 1', 'vm.podvirt.io/status': JSON.stringify({ phase: 'Running', consoleSocket: '/x' }) } },
      spec: { nodeName: 'node-z', containers: [{ name: 'c', image: 'x' }] },
    });
    const e2 = new PassThrough();
    let s2 = '';
    e2.on('data', (b: Buffer) => (s2 += b.toString()));
    assert.equal(await kubectlMain(['console', 'vm3', '--kubeconfig', kubeconfig], { stdin: new PassThrough(), stdout: new PassThrough(), stderr: e2 }), 1);
    assert.match(s2, /no running podvirt agent pod on node node-z/);
  });
});
