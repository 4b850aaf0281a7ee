/**
 * The built package as installed (dist/, what the image runs), under whichever Node runs mocha:
 * hack/test.sh runs this file under every supported Node major. The rest of the suite runs the
 * TypeScript sources through tsx, so this is where the emitted ESM, the proto files found from
 * dist/ and the esbuild CNI bundle meet a given Node's loader.
 */
import { strict as assert } from 'node:assert';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CsiClient } from '../../csi/client.js';
import { waitFor } from '../../lib/backoff.js';
import { PROJECT_ROOT } from '../../lib/project-root.js';
import { FakeApiServer } from '../kube/fake-apiserver.js';
import { skipBecause } from '../helpers/skip.js';

const dist = (p: string): string => path.join(PROJECT_ROOT, 'dist', p);

/**
 * Process warnings (children run with --trace-warnings) raised by podvirt's own code. Those whose
 * first non-internal frame is in node_modules are left out: e.g. Node 22.12 warns about the
 * `punycode` that node-fetch (under @kubernetes/client-node) loads; later 22.x and 24 do not.
 */
function ownWarnings(stderr: string): string[] {
  return stderr
    .split(/^(?=\(node:\d+\) )/m)
    .filter((block) => /^\(node:\d+\) .*Warning/.test(block))
    .filter((block) => {
      const frame = block.split('\n').find((l) => /^\s+at /.test(l) && !/\(node:|at node:/.test(l));
      return !frame?.includes('/node_modules/');
    });
}

describe(`compat: the built CLI from dist/ under Node ${process.version}`, function () {
  let tmp = '';
  before(function () {
    if (!existsSync(dist('bin/podvirt.js')) || !existsSync(dist('cni/podvirt-cni.cjs'))) skipBecause(this, 'dist/ not built (npm run build)');
    tmp = mkdtempSync(path.join(os.tmpdir(), 'pvt-compat-'));
  });
  after(() => {
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  it('podvirt version prints the package version', () => {
    const r = spawnSync(process.execPath, ['--trace-warnings', dist('bin/podvirt.js'), 'version'], { encoding: 'utf8' });
    const { version } = JSON.parse(readFileSync(path.join(PROJECT_ROOT, 'package.json'), 'utf8')) as { version: string };
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), `podvirt ${version}`);
    assert.deepEqual(ownWarnings(r.stderr), [], 'no deprecation or experimental warning from our code on this Node');
  });

  it('podvirt csi serves gRPC on a unix socket with the proto files found from dist/, and stops on SIGTERM', async () => {
    const sock = path.join(tmp, 'csi.sock');
    const child = spawn(process.execPath, ['--trace-warnings', dist('bin/podvirt.js'), 'csi', '--endpoint', `unix://${sock}`, '--node-id', 'pvt-compat-node', '--state-dir', path.join(tmp, 'state')], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const c = new CsiClient(sock);
    try {
      await waitFor(async () => ((await c.identity.Probe({}, { deadlineMs: 1000 }).catch(() => undefined))?.ready?.value ? true : undefined), {
        timeoutMs: 30_000,
        what: 'the driver from dist/ to become ready',
      });
      assert.equal((await c.identity.GetPluginInfo()).name, 'csi.podvirt.io');
      assert.equal((await c.node.NodeGetInfo()).node_id, 'pvt-compat-node');
    } finally {
      c.close();
      if (child.exitCode === null) child.kill('SIGTERM');
    }
    const [code] = (await once(child, 'exit')) as [number | null];
    assert.equal(code, 0, stderr);
    assert.deepEqual(ownWarnings(stderr), []);
  });

  it('kubectl-podvirt ps talks to the (fake) API server through @kubernetes/client-node', async () => {
    const api = new FakeApiServer();
    await api.start();
    try {
      api.createObject('pods', {
        metadata: { name: 'vm-compat', namespace: 'vms', annotations: { 'vm.podvirt.io/spec': 'cpus: 1\nmemory: 128Mi\n' } },
        spec: { nodeName: 'node-1', containers: [{ name: 'compute', image: 'example.org/launcher:dev' }] },
      });
      const kubeconfig = await api.writeKubeconfig(tmp);
      const child = spawn(process.execPath, ['--trace-warnings', dist('bin/kubectl-podvirt.js'), 'ps', '-n', 'vms', '-o', 'json', '--kubeconfig', kubeconfig], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      let err = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr.on('data', (d: Buffer) => (err += d.toString()));
      const [code] = (await once(child, 'exit')) as [number | null];
      assert.equal(code, 0, err);
      assert.deepEqual((JSON.parse(out) as { name: string }[]).map((p) => p.name), ['vm-compat']);
      assert.deepEqual(ownWarnings(err), []);
    } finally {
      await api.stop();
    }
  });

  it('the CNI bundle (podvirt-cni.cjs) answers VERSION, and refuses a bad command with a CNI error', () => {
    const run = (command: string) =>
      spawnSync(process.execPath, ['--trace-warnings', dist('cni/podvirt-cni.cjs')], { input: '', encoding: 'utf8', env: { ...process.env, CNI_COMMAND: command } });
    const v = run('VERSION');
    assert.equal(v.status, 0, v.stderr);
    assert.ok((JSON.parse(v.stdout) as { supportedVersions: string[] }).supportedVersions.includes('1.1.0'));
    const bad = run('BOGUS');
    assert.notEqual(bad.status, 0);
    assert.equal((JSON.parse(bad.stdout) as { code: number }).code, 4, bad.stdout); // CNI: invalid environment variables
  });
});
