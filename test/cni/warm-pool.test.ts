import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { WarmPool, type PendingBatch } from '../../cni/warm-pool.js';
import { waitFor } from '../../lib/backoff.js';
import { PROJECT_ROOT } from '../../lib/project-root.js';

describe('cni warm process pool (parked ip/tc and IPAM exec)', function () {
  this.timeout(60_000);
  let dir = '';
  const ns = `pvt-cni-pool-${randomBytes(3).toString('hex')}`;
  const pools: WarmPool[] = [];
  const coldCalls: string[] = [];
  const cold = (what: string) => (): PendingBatch => {
    coldCalls.push(what);
    return { feed: async () => ({ done: 0 }) };
  };
  before(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'pvt-cni-pool-'));
    execFileSync(process.execPath, [path.join(PROJECT_ROOT, 'hack/build-cni.mjs'), dir], { stdio: ['ignore', 'ignore', 'inherit'] });
    execFileSync('ip', ['netns', 'add', ns]);
  });
  after(() => {
    for (const p of pools) p.stop();
    try {
      execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
    } catch {
      /* never made */
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('a parked ip runs its batch inside the netns it is given', async () => {
    const pool = new WarmPool({ parkLib: path.join(dir, 'podvirt-netns-park.so'), execPark: path.join(dir, 'podvirt-exec-park'), size: 1 });
    pools.push(pool);
    pool.start();
    await waitFor(() => (pool.parked === 4 ? true : undefined), { timeoutMs: 20_000, what: 'four parked processes' });
    const out = await pool.take('ip', `/run/netns/${ns}`, false, cold('ip')).feed(['tuntap add dev pvtpool0 mode tap']);
    assert.equal(out.error, undefined);
    assert.equal(coldCalls.length, 0);
    assert.match(execFileSync('ip', ['-n', ns, 'link', 'show', 'pvtpool0']).toString(), /pvtpool0/);
    assert.throws(() => execFileSync('ip', ['link', 'show', 'pvtpool0'], { stdio: 'ignore' }));
    const tc = await pool.take('tc', `/run/netns/${ns}`, false, cold('tc')).feed(['qdisc add dev pvtpool0 ingress', 'qdisc add dev nope ingress']);
    assert.equal(tc.done, 1);
    assert.match(tc.error?.message ?? '', /line 2/);
    const r = await pool.exec('/usr/lib/cni/host-local', { CNI_COMMAND: 'VERSION' }, '{"cniVersion":"0.4.0"}');
    assert.match(r?.stdout ?? '', /supportedVersions/);
    assert.equal(pool.exec('/usr/lib/cni/host-local', {}, ''), undefined, 'only one exec process was parked');
    const gone = await pool.take('ip', '/run/netns/pvt-cni-missing', true, cold('ip-force')).feed(['link show']);
    assert.match(gone.error?.message ?? '', /exit 125/);
  });

  it('a preload that does not load never parks: batches fall back to cold processes', async () => {
    const bogus = path.join(dir, 'bogus.so');
    writeFileSync(bogus, 'not an ELF object');
    const pool = new WarmPool({ parkLib: bogus, size: 1 });
    pools.push(pool);
    pool.start();
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(pool.parked, 0);
    pool.take('ip', `/run/netns/${ns}`, false, cold('bogus'));
    assert.deepEqual(coldCalls, ['bogus']);
  });
});
