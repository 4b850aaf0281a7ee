import { strict as assert } from 'node:assert';
import { promises as fs, existsSync } from 'node:fs';
import * as path from 'node:path';
import { waitFor } from '../../lib/backoff.js';
import { skipBecause } from '../helpers/skip.js';
import { LocalEnv, GUEST_INITRD, GUEST_KERNEL } from './harness.js';

/**
 * Lifecycle edges of local mode on a real VM: QEMU dying under the agent, leftovers refused until
 * `stop`, and what `stop` keeps (PVCs, topology) or deletes (ephemeral volumes; PVCs with
 * --delete-volumes).
 */
describe('agent-local: VM lifecycle edges (crash, stop semantics, volumes)', function () {
  this.timeout(240_000);
  const env = new LocalEnv();
  const name = `pvtc${env.tag}`;
  let file = '';

  before(async function () {
    if (process.getuid?.() !== 0) skipBecause(this, 'needs root (netns, cgroups, loop devices)');
    if (!existsSync(GUEST_KERNEL)) skipBecause(this, 'test guest not built (hack/setup.d/20-test-guest.sh)');
    await env.init();
    file = path.join(env.dir, 'pod.yaml');
    const spec = {
      cpus: 1,
      memory: '128Mi',
      accel: 'tcg',
      kernel: GUEST_KERNEL,
      initrd: GUEST_INITRD,
      cmdline: 'console=ttyS0 quiet panic=-1',
      disks: [
        { name: 'keep', volume: 'keep' },
        { name: 'scratch', volume: 'scratch' },
      ],
    };
    await fs.writeFile(
      file,
      [
        { kind: 'PersistentVolumeClaim', metadata: { name: `${name}-keep` }, spec: { volumeMode: 'Block', resources: { requests: { storage: '16Mi' } } } },
        {
          kind: 'Pod',
          metadata: { name, annotations: { 'vm.podvirt.io/spec': JSON.stringify(spec) } },
          spec: {
            containers: [{ name: 'compute', volumeDevices: [{ name: 'keep', devicePath: '/dev/keep' }, { name: 'scratch', devicePath: '/dev/scratch' }] }],
            volumes: [
              { name: 'keep', persistentVolumeClaim: { claimName: `${name}-keep` } },
              { name: 'scratch', ephemeral: { volumeClaimTemplate: { spec: { volumeMode: 'Block', resources: { requests: { storage: '16Mi' } } } } } },
            ],
          },
        },
      ]
        .map((d) => JSON.stringify(d))
        .join('\n---\n'),
    );
  });
  after(async () => {
    await env.dispose();
  });

  const podRecord = async () => JSON.parse(await fs.readFile(path.join(env.stateDir, 'pods', name, 'pod.json'), 'utf8')) as { claims: Record<string, unknown>; topology: unknown };

  it('reports Failed when QEMU dies, refuses a new run over the leftovers, and stop cleans them', async () => {
    await env.cli(['run', file]);
    const st = await env.status(name);
    assert.equal(st.phase, 'Running');
    assert.deepEqual(st.disks.map((d) => d.volume).sort(), ['keep', 'scratch']);
    // The published block file is a bind mount of the host's loop node: QEMU's uid owns it only
    // while the pod runs, and the host node gets its owner back at stop.
    const loops = await hostLoopNodes(st.disks.map((d) => (d as unknown as { path: string }).path));
    assert.equal(loops.length, 2);
    const given = await Promise.all(loops.map(async (l) => fs.stat(l)));
    for (const [i, g] of given.entries()) assert.notEqual(g.uid, 0, `${loops[i]} given to QEMU's uid while running`);
    process.kill(st.qemuPid, 'SIGKILL');
    const failed = await waitFor(async () => {
      const s = await env.status(name);
      return s.phase === 'Failed' ? s : undefined;
    }, { timeoutMs: 20_000, intervalMs: 500, what: 'phase Failed' });
    assert.equal(failed.qemuPid, st.qemuPid);
    const again = await env.cli(['run', file], { allowFailure: true });
    assert.notEqual(again.code, 0);
    assert.match(again.stderr, /leftovers of an earlier run.*podvirt stop/);
    const stop = await env.cli(['stop', name]);
    assert.match(stop.stdout, /stopped; deleted volumes .*-scratch/);
    assert.equal(existsSync(st.netns), false);
    for (const [i, l] of loops.entries()) {
      const now = await fs.stat(l);
      assert.equal(now.uid, 0, `${l} owner restored`);
      assert.notEqual(now.gid, given[i]!.gid, `${l} group restored`);
    }
    const rec = await podRecord();
    assert.deepEqual(Object.keys(rec.claims), [`${name}-keep`], 'the PVC is kept, the ephemeral claim is gone');
    assert.ok(rec.topology, 'topology kept for the next run');
    const ps = JSON.parse((await env.cli(['ps', '--json'])).stdout) as unknown[];
    assert.equal(ps.length, 0);
  });

  it('stop of a stopped pod with --delete-volumes deletes its PVCs; an unknown pod is NotFound', async () => {
    const r = await env.cli(['stop', name, '--delete-volumes']);
    assert.match(r.stdout, new RegExp(`was not running; cleaned up; deleted volumes ${name}-keep`));
    assert.deepEqual(Object.keys((await podRecord()).claims), []);
    const nope = await env.cli(['stop', 'nope'], { allowFailure: true });
    assert.notEqual(nope.code, 0);
    assert.match(nope.stderr, /no pod nope/);
  });
});

/** The host /dev/loopN behind each published block file. */
async function hostLoopNodes(files: string[]): Promise<string[]> {
  const out: string[] = [];
  const names = (await fs.readdir('/dev')).filter((n) => /^loop\d+$/.test(n));
  for (const f of files) {
    const rdev = (await fs.stat(f)).rdev;
    for (const n of names) if ((await fs.stat(`/dev/${n}`)).rdev === rdev) out.push(`/dev/${n}`);
  }
  return out;
}
