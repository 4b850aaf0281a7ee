/**
 * `podvirt agent` as a process (the CLI, as the DaemonSet runs it) against the fake API server:
 * every in-process server comes up (device plugin, CSI, CNI server, DHCP, CNI install), readiness
 * says so, the node gets labelled, and SIGTERM ends it cleanly.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { PROJECT_ROOT } from '../../lib/project-root.js';
import { skipBecause } from '../helpers/skip.js';
import { FakeApiServer } from './fake-apiserver.js';

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('podvirt agent process with its in-process servers', function () {
  this.timeout(90_000);
  let api: FakeApiServer;
  let tmp: string;
  let child: ChildProcess | undefined;
  let stderr = '';
  const node = `pvt-kube-${randomBytes(3).toString('hex')}-proc`;

  before(async function () {
    if (!existsSync(path.join(PROJECT_ROOT, 'dist', 'cni', 'podvirt-cni'))) skipBecause(this, 'CNI build output missing (npm run build)');
    api = new FakeApiServer();
    await api.start();
    api.createObject('nodes', { metadata: { name: node } });
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'pvt-kube-proc-'));
  });

  after(async () => {
    if (child && child.exitCode === null) child.kill('SIGKILL');
    await api?.stop();
    if (tmp) await fs.rm(tmp, { recursive: true, force: true });
  });

  it('serves device plugin, CSI, CNI and DHCP, installs the CNI plugin, is ready, labels the node, stops on SIGTERM', async () => {
    const port = await freePort();
    const kubeconfig = await api.writeKubeconfig(tmp);
    child = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        path.join(PROJECT_ROOT, 'bin', 'podvirt.ts'),
        'agent',
        '--node-name',
        node,
        '--kubeconfig',
        kubeconfig,
        '--state-dir',
        path.join(tmp, 'state'),
        '--run-dir',
        path.join(tmp, 'run'),
        '--kubelet-dir',
        path.join(tmp, 'kubelet'),
        '--cni-bin-dir',
        path.join(tmp, 'cni-bin'),
        '--metrics-addr',
        `127.0.0.1:${port}`,
      ],
      { cwd: PROJECT_ROOT, stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, PODVIRT_LOG_LEVEL: 'info' } },
    );
    child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
    const ready = await until(
      '/readyz 200',
      async () => {
        const r = await fetch(`http://127.0.0.1:${port}/readyz`);
        const body = await r.text();
        return r.status === 200 ? body : undefined;
      },
      60_000,
    ).catch((e: unknown) => {
      throw new Error(`${String(e)}\nagent log:\n${stderr.slice(-3000)}`);
    });
    for (const s of ['pod-informer', 'cni-install', 'device-plugin', 'csi', 'cni', 'dhcp']) assert.match(ready, new RegExp(`\\[\\+\\]${s} ok`));
    assert.ok((await fs.stat(path.join(tmp, 'cni-bin', 'podvirt'))).mode & 0o100, 'CNI executable installed');
    assert.ok(existsSync(path.join(tmp, 'cni-bin', 'podvirt-cni.cjs')));
    assert.ok((await fs.lstat(path.join(tmp, 'kubelet', 'plugins', 'csi.podvirt.io', 'csi.sock'))).isSocket(), 'CSI socket');
    assert.ok((await fs.lstat(path.join(tmp, 'run', 'cni.sock'))).isSocket(), 'CNI server socket');
    await until('node labels', async () => ((api.getObject('nodes', undefined, node)?.metadata as { labels?: Record<string, string> }).labels?.['podvirt.io/kvm'] ? true : undefined));
    const m = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    assert.match(m, /podvirt_agent_server_up\{server="csi"\} 1/);
    // Node figures from the CSI driver's own API (ListVolumes, GetCapacity).
    assert.match(m, /podvirt_node_volumes 0/);
    assert.match(m, /podvirt_node_pool_capacity_bytes [1-9]/);
    assert.match(m, /podvirt_node_pool_available_bytes [1-9]/);
    const exited = new Promise<number | null>((r) => child!.once('exit', (code) => r(code)));
    child.kill('SIGTERM');
    assert.equal(await exited, 0, stderr.slice(-2000));
    assert.equal(existsSync(path.join(tmp, 'run', 'cni.sock')), false, 'CNI socket removed on stop');
  });
});
