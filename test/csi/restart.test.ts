import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { writeFileSync, existsSync, readdirSync, readFileSync } from 'node:fs';
import { waitFor } from '../../lib/backoff.js';
import * as path from 'node:path';
import { CsiHarness, cap, qsdPids, readData, writeData, type Access } from './harness.js';

/**
 * Durable state and start-up reconciliation: a restarted driver knows every volume, snapshot,
 * stage and publish, adopts what still runs, and rebuilds what died while it was away.
 */
describe('csi: restart and reconciliation', function () {
  const h = new CsiHarness();
  const vols: { access: Access; id: string; staging: string; target: string }[] = [];
  before(async () => {
    await h.start();
  });
  after(async () => {
    if (!h.client) await h.start().catch(() => undefined);
    const leaks = await h.cleanup();
    assert.deepEqual(leaks, [], `the suite leaked: ${leaks.join('; ')}`);
  });

  const daemonOf = (id: string) => {
    const hex = /^vol-([0-9a-f]{16})@/.exec(id)![1]!;
    const pids = qsdPids(path.join(h.stateDir, 'run', hex));
    assert.equal(pids.length, 1, `one daemon for ${id}`);
    return pids[0]!;
  };

  it('a restarted driver knows volumes, snapshots, stages and publishes and adopts the running ones', async () => {
    for (const access of ['block', 'mount'] as const) {
      const v = (await h.c.controller.CreateVolume({ name: `pvt-rs-${access}`, volume_capabilities: [cap(access)] })).volume!;
      const staging = h.dir('staging');
      const target = path.join(h.dir('pods'), 't');
      await h.c.node.NodeStageVolume({ volume_id: v.volume_id, staging_target_path: staging, volume_capability: cap(access) });
      await h.c.node.NodePublishVolume({ volume_id: v.volume_id, staging_target_path: staging, target_path: target, volume_capability: cap(access) });
      writeData(access, target, `kept-${access}`);
      vols.push({ access, id: v.volume_id, staging, target });
    }
    await h.c.controller.CreateSnapshot({ name: 'pvt-rs-snap', source_volume_id: vols[0]!.id });
    const pidsBefore = vols.map((v) => daemonOf(v.id));
    await h.stop();
    // While the driver is down the volumes stay in use: that is what a VM needs.
    for (const v of vols) assert.equal(readData(v.access, v.target), `kept-${v.access}`);
    await h.start();
    assert.equal((await h.c.identity.Probe()).ready?.value, true);
    assert.equal((await h.c.controller.ListVolumes()).entries.length, 2);
    assert.equal((await h.c.controller.ListSnapshots()).entries.length, 1);
    assert.deepEqual(vols.map((v) => daemonOf(v.id)), pidsBefore, 'the running daemons were adopted, not restarted');
    for (const v of vols) {
      const s = await h.c.node.NodeGetVolumeStats({ volume_id: v.id, volume_path: v.target });
      assert.equal(s.volume_condition?.abnormal, false, s.volume_condition?.message);
      // Idempotent calls still recognise the old stage and publish.
      await h.c.node.NodeStageVolume({ volume_id: v.id, staging_target_path: v.staging, volume_capability: cap(v.access) });
      await h.c.node.NodePublishVolume({ volume_id: v.id, staging_target_path: v.staging, target_path: v.target, volume_capability: cap(v.access) });
    }
  });

  it('a dead daemon shows as an abnormal condition, and the next start rebuilds the volume with its data', async () => {
    for (const v of vols) process.kill(daemonOf(v.id), 'SIGKILL');
    for (const v of vols) {
      const s = await h.c.node.NodeGetVolumeStats({ volume_id: v.id, volume_path: v.target });
      assert.equal(s.volume_condition?.abnormal, true);
      assert.match(s.volume_condition?.message ?? '', /not running|not mounted|QMP/);
    }
    await h.stop();
    // An interrupted create left a pool file no record knows: start-up removes it.
    const stray = path.join(h.stateDir, 'pool', 'deadbeefdeadbeef.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', stray, '1M']);
    await h.start();
    assert.equal(existsSync(stray), false);
    for (const v of vols) {
      const s = await h.c.node.NodeGetVolumeStats({ volume_id: v.id, volume_path: v.target });
      assert.equal(s.volume_condition?.abnormal, false, s.volume_condition?.message);
      assert.equal(readData(v.access, v.target), `kept-${v.access}`);
      writeData(v.access, v.target, `after-rebuild-${v.access}`);
      assert.equal(readData(v.access, v.target), `after-rebuild-${v.access}`);
    }
    assert.equal(readdirSync(path.join(h.stateDir, 'run')).length, 2, 'one run dir per staged volume, no leftovers');
    writeFileSync(path.join(h.root, 'done'), '');
  });

  it('a stage the state never recorded (crash mid-stage) is cleaned up at start and the retried stage works', async () => {
    const v = (await h.c.controller.CreateVolume({ name: 'pvt-rs-crash', volume_capabilities: [cap('mount')] })).volume!;
    const staging = h.dir('staging');
    await h.c.node.NodeStageVolume({ volume_id: v.volume_id, staging_target_path: staging, volume_capability: cap('mount') });
    const pid = daemonOf(v.volume_id);
    await h.stop();
    const file = path.join(h.stateDir, 'state.json');
    const st = JSON.parse(readFileSync(file, 'utf8')) as { stages: Record<string, unknown> };
    delete st.stages[v.volume_id];
    writeFileSync(file, JSON.stringify(st));
    await h.start();
    await waitFor(() => (qsdPids(path.join(h.stateDir, 'run')).includes(pid) ? undefined : true), { timeoutMs: 10_000, what: 'the stray daemon to stop' });
    // The CO retries the stage it never saw succeed.
    await h.c.node.NodeStageVolume({ volume_id: v.volume_id, staging_target_path: staging, volume_capability: cap('mount') });
    const t = path.join(h.dir('pods'), 't');
    await h.c.node.NodePublishVolume({ volume_id: v.volume_id, staging_target_path: staging, target_path: t, volume_capability: cap('mount') });
    writeData('mount', t, 'after-crash');
    assert.equal(readData('mount', t), 'after-crash');
    await h.c.node.NodeUnpublishVolume({ volume_id: v.volume_id, target_path: t });
    await h.c.node.NodeUnstageVolume({ volume_id: v.volume_id, staging_target_path: staging });
    const mounts = execFileSync('findmnt', ['-rn', '-o', 'TARGET'], { encoding: 'utf8' }).split('\n');
    assert.ok(!mounts.includes(staging), 'no stacked mount stays at the staging path');
  });
});
