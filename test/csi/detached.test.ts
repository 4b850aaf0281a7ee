/**
 * The volume daemons outlive the driver's container: the driver runs as `podvirt csi` in a child
 * process inside a cgroup that plays the agent's container; stopping that "container" the way a
 * runtime does (SIGKILL to every process of its cgroup and its process group) must leave the
 * qemu-storage-daemon, its FUSE export and the loop device serving the published volume; a new
 * driver adopts the daemon instead of starting a second one, and unpublish/unstage still clean up.
 */
import { strict as assert } from 'node:assert';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { openSync, closeSync, promises as fs, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { waitFor } from '../../lib/backoff.js';
import { PROJECT_ROOT } from '../../lib/project-root.js';
import { CsiClient } from '../../csi/client.js';
import { QsdCgroup } from '../../csi/qsd-cgroup.js';
import { CsiHarness, cap, qsdPids, readData, writeData } from './harness.js';

const CLI = [path.join(PROJECT_ROOT, 'node_modules/tsx/dist/cli.mjs'), path.join(PROJECT_ROOT, 'bin/podvirt.ts')];

const statFields = (pid: number) => {
  const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  return { state: f[0]!, pgrp: Number(f[2]), session: Number(f[3]) };
};
const procsOf = async (cg: QsdCgroup) => {
  const out = new Set<number>();
  for (const d of await cg.dirs()) for (const p of (await fs.readFile(path.join(d.dir, 'cgroup.procs'), 'utf8')).split('\n').filter(Boolean)) out.add(Number(p));
  return [...out];
};

describe('csi: volume daemons outlive the driver container and are re-adopted', function () {
  this.timeout(120_000);
  const h = new CsiHarness('pvt-det-node');
  const group = `pvt-csi-${randomBytes(3).toString('hex')}`;
  const qsdCg = new QsdCgroup(`${group}/qsd`);
  const agentCg = new QsdCgroup(`${group}/agent`);
  const children: ChildProcess[] = [];
  let client: CsiClient | undefined;

  /** `podvirt csi` in the "agent container" cgroup, in a process group of its own. */
  async function startDriver(): Promise<{ child: ChildProcess; client: CsiClient }> {
    const sock = path.join(h.root, 'csi.sock');
    await fs.rm(sock, { force: true });
    const log = openSync(path.join(h.root, 'driver.log'), 'a');
    const argv = [...(await agentCg.launcher()), process.execPath, ...CLI, 'csi', '--endpoint', `unix://${sock}`, '--node-id', h.nodeId, '--state-dir', h.stateDir, '--qsd-cgroup', `${group}/qsd`];
    const child = spawn(argv[0]!, argv.slice(1), { detached: true, stdio: ['ignore', log, log] });
    closeSync(log);
    children.push(child);
    const c = new CsiClient(sock);
    await waitFor(async () => ((await c.identity.Probe().catch(() => undefined))?.ready?.value ? true : undefined), { timeoutMs: 30_000, intervalMs: 200, what: 'the CSI driver to be ready' });
    return { child, client: c };
  }

  /** What a container runtime does on stop: SIGKILL to everything in the container's cgroup. */
  async function killContainer(child: ChildProcess): Promise<void> {
    const exited = new Promise((r) => child.once('exit', r));
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      /* gone */
    }
    for (const p of await procsOf(agentCg)) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    await exited;
    await waitFor(async () => ((await procsOf(agentCg)).length === 0 ? true : undefined), { timeoutMs: 5000, what: 'the container cgroup to empty' });
  }

  after(async () => {
    client?.close();
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    const leaks = await h.cleanup();
    for (const cg of [qsdCg, agentCg]) {
      for (const p of await procsOf(cg).catch(() => [])) process.kill(p, 'SIGKILL');
      for (const d of await cg.dirs().catch(() => [])) {
        await waitFor(async () => fs.rmdir(d.dir).then(() => true, (e: NodeJS.ErrnoException) => (e.code === 'ENOENT' ? true : undefined)), { timeoutMs: 5000, what: `rmdir ${d.dir}` }).catch(() => undefined);
      }
    }
    for (const d of await qsdCg.dirs().catch(() => [])) await fs.rmdir(path.dirname(d.dir)).catch(() => undefined);
    assert.deepEqual(leaks, [], `the suite leaked: ${leaks.join('; ')}`);
  });

  it('a container stop leaves the export serving I/O; the next driver adopts the same daemon and still cleans up', async () => {
    let d = await startDriver();
    client = d.client;
    const v = (await client.controller.CreateVolume({ name: 'pvt-det', volume_capabilities: [cap('block')], capacity_range: { required_bytes: 64 * 2 ** 20 } })).volume!;
    const staging = h.dir('staging');
    const target = path.join(h.dir('pods'), 'dev');
    await client.node.NodeStageVolume({ volume_id: v.volume_id, staging_target_path: staging, volume_capability: cap('block') });
    await client.node.NodePublishVolume({ volume_id: v.volume_id, staging_target_path: staging, target_path: target, volume_capability: cap('block') });

    const runDir = path.join(h.stateDir, 'run');
    const [qsd, ...more] = qsdPids(runDir);
    assert.ok(qsd && more.length === 0, 'one daemon');
    const st = statFields(qsd);
    assert.notEqual(st.pgrp, d.child.pid, "not in the driver's process group");
    assert.notEqual(st.session, statFields(d.child.pid!).session, "not in the driver's session");
    assert.ok(await qsdCg.holds(qsd), 'in the podvirt qsd cgroup in every hierarchy');
    assert.ok(!(await procsOf(agentCg)).includes(qsd), "not in the driver's container cgroup");

    // The "VM": holds the published device open and writes through it across the driver's death.
    const vm = await fs.open(target, 'r+');
    try {
      const at = 1024 * 1024;
      await vm.write(Buffer.from('before-stop'), 0, 11, at);
      await vm.sync();
      writeData('block', target, 'kept-across-container-stop');

      await killContainer(d.child);
      assert.deepEqual(qsdPids(runDir), [qsd], 'the daemon survived the container stop');
      assert.notEqual(statFields(qsd).state, 'Z');
      // The export and loop device still serve reads and writes, old fd and new opens alike.
      await vm.write(Buffer.from('while-gone'), 0, 10, at + 4096);
      await vm.sync();
      assert.equal(readData('block', target), 'kept-across-container-stop');
      writeData('block', target, 'written-while-driver-gone');
      assert.equal(readData('block', target), 'written-while-driver-gone');

      client.close();
      d = await startDriver();
      client = d.client;
      assert.deepEqual(qsdPids(runDir), [qsd], 'adopted: the same daemon, no second export');
      assert.ok(await qsdCg.holds(qsd));
      const stats = await client.node.NodeGetVolumeStats({ volume_id: v.volume_id, volume_path: target });
      assert.equal(stats.volume_condition?.abnormal, false, stats.volume_condition?.message);
      await client.node.NodeStageVolume({ volume_id: v.volume_id, staging_target_path: staging, volume_capability: cap('block') });
      await client.node.NodePublishVolume({ volume_id: v.volume_id, staging_target_path: staging, target_path: target, volume_capability: cap('block') });
      assert.deepEqual(qsdPids(runDir), [qsd], 'idempotent stage and publish reuse it');
      const buf = Buffer.alloc(11);
      await vm.read(buf, 0, 11, at);
      assert.equal(buf.toString(), 'before-stop');
      await vm.read(buf, 0, 10, at + 4096);
      assert.equal(buf.subarray(0, 10).toString(), 'while-gone');
    } finally {
      await vm.close();
    }
    assert.equal(readData('block', target), 'written-while-driver-gone');

    await client.node.NodeUnpublishVolume({ volume_id: v.volume_id, target_path: target });
    await client.node.NodeUnstageVolume({ volume_id: v.volume_id, staging_target_path: staging });
    await client.controller.DeleteVolume({ volume_id: v.volume_id });
    await waitFor(() => (qsdPids(runDir).length === 0 ? true : undefined), { timeoutMs: 10_000, what: 'the daemon to quit' });
    assert.deepEqual(await procsOf(qsdCg), [], 'the qsd cgroup is empty again');
    const exited = new Promise((r) => d.child.once('exit', r));
    d.child.kill('SIGTERM');
    await exited;
  });
});
