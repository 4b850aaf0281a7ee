import { strict as assert } from 'node:assert';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { once } from 'node:events';
import { CsiClient } from '../../csi/client.js';
import { waitFor } from '../../lib/backoff.js';
import { PROJECT_ROOT } from '../../lib/project-root.js';
import { hostLeaks } from './harness.js';

const CLI = [path.join(PROJECT_ROOT, 'node_modules/tsx/dist/cli.mjs'), path.join(PROJECT_ROOT, 'bin/podvirt.ts')];

describe('csi: podvirt csi command', function () {
  let root = '';
  before(() => {
    root = mkdtempSync('/tmp/pvt-csi-cli-');
  });
  after(() => {
    assert.deepEqual(hostLeaks(root), []);
    rmSync(root, { recursive: true, force: true });
  });

  it('serves the driver on CSI_ENDPOINT and stops on SIGTERM with status 0', async () => {
    const sock = path.join(root, 'csi.sock');
    const child = spawn(process.execPath, [...CLI, 'csi', '--node-id', 'pvt-cli-node', '--state-dir', path.join(root, 'state')], {
      env: { ...process.env, CSI_ENDPOINT: `unix://${sock}` },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const c = new CsiClient(sock);
    try {
      await waitFor(async () => ((await c.identity.Probe({}, { deadlineMs: 1000 }).catch(() => undefined))?.ready?.value ? true : undefined), {
        timeoutMs: 30_000,
        what: 'the driver to become ready',
      });
      assert.equal((await c.identity.GetPluginInfo()).name, 'csi.podvirt.io');
      assert.equal((await c.node.NodeGetInfo()).node_id, 'pvt-cli-node');
    } finally {
      c.close();
      child.kill('SIGTERM');
    }
    const [code] = (await once(child, 'exit')) as [number | null];
    assert.equal(code, 0, stderr);
    assert.match(stderr, /CSI driver ready/);
  });

  it('refuses bad flags with a clear message and status 2', () => {
    for (const [args, re] of [
      [['csi', '--node-id', 'n', '--state-dir', root], /--endpoint/],
      [['csi', '--endpoint', 'tcp://1.2.3.4:5', '--node-id', 'n', '--state-dir', root], /unix:\/\/\//],
      [['csi', '--endpoint', `unix://${root}/x.sock`, '--node-id', 'bad/id', '--state-dir', root], /node id/],
      [['csi', '--bogus'], /bogus/],
    ] as const) {
      const r = spawnSync(process.execPath, [...CLI, ...args], { encoding: 'utf8', env: { ...process.env, CSI_ENDPOINT: '' } });
      assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, re);
    }
  });
});
