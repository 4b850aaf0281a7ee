import { strict as assert } from 'node:assert';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { promises as fs, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { PROJECT_ROOT } from '../../lib/project-root.js';
import { KubeletDeviceManager } from '../../plugins/kubelet-side.js';
import { FakeHost } from './fake-host.js';

const KVM = 'devices.kubevirt.io/kvm';

/** The real CLI entry point (bin/podvirt.ts) in its own process. */
function podvirt(args: string[]): ChildProcess {
  return spawn(process.execPath, ['--import', 'tsx', path.join(PROJECT_ROOT, 'bin/podvirt.ts'), ...args], {
    cwd: PROJECT_ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, PODVIRT_LOG_LEVEL: 'info' },
  });
}

describe('device-plugin: the podvirt device-plugin process', function () {
  this.timeout(60_000);
  let host: FakeHost;
  let kubelet: KubeletDeviceManager;
  let child: ChildProcess | undefined;
  let stderr = '';

  beforeEach(async () => {
    host = new FakeHost();
    kubelet = new KubeletDeviceManager({ dir: host.kubeletDir });
    await kubelet.start();
    stderr = '';
  });
  afterEach(async () => {
    if (child && child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await once(child, 'exit');
    }
    child = undefined;
    await kubelet.stop();
    host.cleanup();
  });

  const run = (args: string[]) => {
    child = podvirt(['device-plugin', '--kubelet-dir', host.kubeletDir, '--dev-root', host.dev, '--sys-root', host.sys, '--cdi-dir', host.cdiDir, ...args]);
    child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
    return child;
  };

  it('registers, allocates, and on SIGTERM withdraws its devices, removes its sockets and exits 0', async () => {
    host.addNode('kvm');
    host.addNode('vhost-net');
    const cfg = path.join(host.root, 'dp.yaml');
    writeFileSync(cfg, 'maxDevices: 8\n');
    const p = run(['--config', cfg]);
    await kubelet.waitForResource(KVM, (r) => r.healthy.length === 8, 30_000);
    await kubelet.waitForResource('devices.kubevirt.io/vhost-net', (r) => r.healthy.length === 8, 30_000);
    const a = await kubelet.allocate(KVM, 1);
    assert.equal(a.response.devices[0]!.host_path, '/dev/kvm');
    assert.ok((await fs.readdir(host.kubeletDir)).length >= 3);

    const exited = once(p, 'exit');
    p.kill('SIGTERM');
    const [code, signal] = (await exited) as [number | null, string | null];
    assert.equal(signal, null, stderr);
    assert.equal(code, 0, stderr);
    assert.deepEqual(await fs.readdir(host.kubeletDir), ['kubelet.sock']);
    assert.equal(kubelet.resource(KVM)!.healthy.length, 0);
    assert.match(stderr, /shutting down/);
  });

  it('exits 2 on a malformed config, naming the key', async () => {
    const cfg = path.join(host.root, 'dp.json');
    writeFileSync(cfg, JSON.stringify({ pciHostDevices: [{ pciVendorSelector: '10DE:1EB8', resourceName: 'nvidia' }] }));
    const p = run(['--config', cfg]);
    const [code] = (await once(p, 'exit')) as [number | null];
    assert.equal(code, 2);
    assert.match(stderr, /pciHostDevices\[0\]\.resourceName: invalid resource name "nvidia"/);
    assert.deepEqual(await fs.readdir(host.kubeletDir), ['kubelet.sock']);
  });

  it('rejects an unknown flag with exit 2', async () => {
    const p = run(['--kubelet-socket', 'x']);
    const [code] = (await once(p, 'exit')) as [number | null];
    assert.equal(code, 2);
    assert.match(stderr, /kubelet-socket/);
  });
});
