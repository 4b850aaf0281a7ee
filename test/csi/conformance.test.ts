import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, statSync, statfsSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { status } from '@grpc/grpc-js';
import { CsiHarness, GiB, MiB, cap, readData, rejectsWith, writeData } from './harness.js';

/**
 * CSI conformance in the manner of csi-sanity (which cannot be built here): the spec's required
 * fields, codes and idempotency rules, run for block and for mount access against the real
 * driver over its unix socket, with real qemu-storage-daemons, loop devices and mounts.
 */

const TOPO = 'topology.csi.podvirt.io/node';

describe('csi: identity and controller rules', function () {
  const h = new CsiHarness();
  before(async () => {
    await h.start();
  });
  after(async () => {
    const leaks = await h.cleanup();
    assert.deepEqual(leaks, [], `the suite leaked: ${leaks.join('; ')}`);
  });

  it('GetPluginInfo: name csi.podvirt.io (letters at both ends) and a vendor_version', async () => {
    const r = await h.c.identity.GetPluginInfo();
    assert.equal(r.name, 'csi.podvirt.io');
    assert.match(r.name, /^[a-zA-Z][A-Za-z0-9-._]{0,61}[a-zA-Z]$/);
    assert.ok(r.vendor_version.length > 0);
  });

  it('GetPluginCapabilities: CONTROLLER_SERVICE and VOLUME_ACCESSIBILITY_CONSTRAINTS; Probe ready', async () => {
    const r = await h.c.identity.GetPluginCapabilities();
    const svc = r.capabilities.map((c) => c.service?.type).filter(Boolean);
    assert.deepEqual(svc.sort(), ['CONTROLLER_SERVICE', 'VOLUME_ACCESSIBILITY_CONSTRAINTS']);
    assert.equal((await h.c.identity.Probe()).ready?.value, true);
  });

  it('ControllerGetCapabilities and NodeGetCapabilities are exactly the contract lists', async () => {
    const c = (await h.c.controller.ControllerGetCapabilities()).capabilities.map((x) => x.rpc?.type).sort();
    assert.deepEqual(c, ['CLONE_VOLUME', 'CREATE_DELETE_SNAPSHOT', 'CREATE_DELETE_VOLUME', 'EXPAND_VOLUME', 'GET_CAPACITY', 'LIST_SNAPSHOTS', 'LIST_VOLUMES']);
    const n = (await h.c.node.NodeGetCapabilities()).capabilities.map((x) => x.rpc?.type).sort();
    assert.deepEqual(n, ['EXPAND_VOLUME', 'GET_VOLUME_STATS', 'SINGLE_NODE_MULTI_WRITER', 'STAGE_UNSTAGE_VOLUME', 'VOLUME_CONDITION']);
  });

  it('NodeGetInfo: node id and topology segment', async () => {
    const r = await h.c.node.NodeGetInfo();
    assert.equal(r.node_id, h.nodeId);
    assert.deepEqual(r.accessible_topology?.segments, { [TOPO]: h.nodeId });
  });

  it('CreateVolume validates before anything else', async () => {
    const caps = [cap('block')];
    await rejectsWith(h.c.controller.CreateVolume({ volume_capabilities: caps }), status.INVALID_ARGUMENT, /name/);
    await rejectsWith(h.c.controller.CreateVolume({ name: 'pvt-x' }), status.INVALID_ARGUMENT, /volume_capabilities/);
    await rejectsWith(h.c.controller.CreateVolume({ name: 'a/b', volume_capabilities: caps }), status.INVALID_ARGUMENT, /"\/"/);
    await rejectsWith(h.c.controller.CreateVolume({ name: 'a..b', volume_capabilities: caps }), status.INVALID_ARGUMENT);
    await rejectsWith(h.c.controller.CreateVolume({ name: 'x'.repeat(129), volume_capabilities: caps }), status.INVALID_ARGUMENT, /128/);
    await rejectsWith(h.c.controller.CreateVolume({ name: 'pvt-x', volume_capabilities: [{ access_mode: { mode: 'SINGLE_NODE_WRITER' } }] }), status.INVALID_ARGUMENT, /access_type/);
    await rejectsWith(h.c.controller.CreateVolume({ name: 'pvt-x', volume_capabilities: [{ block: {} }] }), status.INVALID_ARGUMENT, /access_mode/);
    await rejectsWith(h.c.controller.CreateVolume({ name: 'pvt-x', volume_capabilities: [cap('block', 'MULTI_NODE_MULTI_WRITER')] }), status.INVALID_ARGUMENT, /node-local/);
    await rejectsWith(h.c.controller.CreateVolume({ name: 'pvt-x', volume_capabilities: caps, parameters: { bogus: '1' } }), status.INVALID_ARGUMENT, /unknown parameter "bogus"/);
    await rejectsWith(h.c.controller.CreateVolume({ name: 'pvt-x', volume_capabilities: [cap('mount', 'SINGLE_NODE_WRITER', 'btrfs')] }), status.INVALID_ARGUMENT, /btrfs/);
    await rejectsWith(h.c.controller.CreateVolume({ name: 'pvt-x', volume_capabilities: caps, parameters: { fsType: 'ext4' }, mutable_parameters: { a: 'b' } }), status.INVALID_ARGUMENT);
    await rejectsWith(h.c.controller.CreateVolume({ name: 'pvt-x', volume_capabilities: caps, capacity_range: { required_bytes: String(2 ** 62) } }), status.OUT_OF_RANGE);
    await rejectsWith(h.c.controller.CreateVolume({ name: 'pvt-x', volume_capabilities: caps, capacity_range: { required_bytes: 2 * GiB, limit_bytes: GiB } }), status.OUT_OF_RANGE);
    await rejectsWith(h.c.controller.CreateVolume({ name: 'pvt-x', volume_capabilities: caps, capacity_range: { required_bytes: -1 } }), status.OUT_OF_RANGE);
    await rejectsWith(h.c.controller.CreateVolume({ name: 'pvt-x', volume_capabilities: caps, capacity_range: { required_bytes: 1024 ** 4 } }), status.RESOURCE_EXHAUSTED, /free/);
    await rejectsWith(
      h.c.controller.CreateVolume({ name: 'pvt-x', volume_capabilities: caps, accessibility_requirements: { requisite: [{ segments: { [TOPO]: 'other-node' } }] } }),
      status.RESOURCE_EXHAUSTED,
      /node-local/,
    );
    assert.equal((await h.c.controller.ListVolumes()).entries.length, 0, 'no refused request left a volume behind');
  });

  it('CreateVolume: exact size, thin, idempotent on name, ALREADY_EXISTS on a different size', async () => {
    const req = { name: 'pvt-exact', volume_capabilities: [cap('block')], capacity_range: { required_bytes: 10 * GiB, limit_bytes: 10 * GiB }, parameters: {} };
    const a = await h.c.controller.CreateVolume(req);
    assert.equal(a.volume?.capacity_bytes, String(10 * GiB));
    assert.deepEqual(a.volume?.accessible_topology.map((t) => t.segments), [{ [TOPO]: h.nodeId }]);
    const b = await h.c.controller.CreateVolume(req);
    assert.equal(b.volume?.volume_id, a.volume?.volume_id);
    await rejectsWith(h.c.controller.CreateVolume({ ...req, capacity_range: { required_bytes: 11 * GiB } }), status.ALREADY_EXISTS);
    await rejectsWith(h.c.controller.CreateVolume({ ...req, parameters: { fsType: 'xfs' } }), status.ALREADY_EXISTS);
    const pool = path.join(h.stateDir, 'pool');
    const used = execFileSync('du', ['-sb', '--apparent-size', pool], { encoding: 'utf8' });
    const onDisk = Number(execFileSync('du', ['-sB1', pool], { encoding: 'utf8' }).split('\t')[0]);
    assert.ok(onDisk < 4 * MiB, `a 10 GiB volume must be thin; pool uses ${onDisk} bytes (${used.trim()})`);
    await h.c.controller.DeleteVolume({ volume_id: a.volume!.volume_id });
  });

  it('CreateVolume: a 128-byte name works; no capacity range gives the 1 GiB default', async () => {
    const r = await h.c.controller.CreateVolume({ name: 'n'.repeat(128), volume_capabilities: [cap('mount')] });
    assert.equal(r.volume?.capacity_bytes, String(GiB));
    assert.equal(r.volume?.volume_context.fsType, 'ext4');
    await h.c.controller.DeleteVolume({ volume_id: r.volume!.volume_id });
  });

  it('CreateVolume from sources: unknown → NOT_FOUND, another node → clear INVALID_ARGUMENT', async () => {
    const caps = [cap('block')];
    await rejectsWith(h.c.controller.CreateVolume({ name: 'pvt-c1', volume_capabilities: caps, volume_content_source: { snapshot: { snapshot_id: 'snap-0123456789abcdef@' + h.nodeId } } }), status.NOT_FOUND);
    await rejectsWith(h.c.controller.CreateVolume({ name: 'pvt-c1', volume_capabilities: caps, volume_content_source: { volume: { volume_id: 'no-such-volume' } } }), status.NOT_FOUND);
    await rejectsWith(
      h.c.controller.CreateVolume({ name: 'pvt-c1', volume_capabilities: caps, volume_content_source: { volume: { volume_id: 'vol-0123456789abcdef@node-b' } } }),
      status.INVALID_ARGUMENT,
      /lives on node node-b.*node-local/,
    );
  });

  it('DeleteVolume: missing id → INVALID_ARGUMENT, unknown id → OK', async () => {
    await rejectsWith(h.c.controller.DeleteVolume({}), status.INVALID_ARGUMENT);
    await h.c.controller.DeleteVolume({ volume_id: 'vol-0000000000000000@' + h.nodeId });
    await h.c.controller.DeleteVolume({ volume_id: 'whatever' });
  });

  it('ValidateVolumeCapabilities: required fields, NOT_FOUND, confirmed only for matching capabilities', async () => {
    const v = (await h.c.controller.CreateVolume({ name: 'pvt-val', volume_capabilities: [cap('mount')] })).volume!;
    await rejectsWith(h.c.controller.ValidateVolumeCapabilities({ volume_capabilities: [cap('mount')] }), status.INVALID_ARGUMENT);
    await rejectsWith(h.c.controller.ValidateVolumeCapabilities({ volume_id: v.volume_id }), status.INVALID_ARGUMENT);
    await rejectsWith(h.c.controller.ValidateVolumeCapabilities({ volume_id: 'nope', volume_capabilities: [cap('mount')] }), status.NOT_FOUND);
    const ok = await h.c.controller.ValidateVolumeCapabilities({ volume_id: v.volume_id, volume_capabilities: [cap('mount')] });
    assert.ok(ok.confirmed);
    const no = await h.c.controller.ValidateVolumeCapabilities({ volume_id: v.volume_id, volume_capabilities: [cap('block')] });
    assert.equal(no.confirmed, null);
    assert.match(no.message, /mount/);
    const multi = await h.c.controller.ValidateVolumeCapabilities({ volume_id: v.volume_id, volume_capabilities: [cap('mount', 'MULTI_NODE_MULTI_WRITER')] });
    assert.equal(multi.confirmed, null);
    await h.c.controller.DeleteVolume({ volume_id: v.volume_id });
  });

  it('ListVolumes paginates; an invalid starting_token → ABORTED', async () => {
    const ids: string[] = [];
    for (const n of ['pvt-l1', 'pvt-l2', 'pvt-l3']) ids.push((await h.c.controller.CreateVolume({ name: n, volume_capabilities: [cap('block')] })).volume!.volume_id);
    const first = await h.c.controller.ListVolumes({ max_entries: 2 });
    assert.equal(first.entries.length, 2);
    assert.notEqual(first.next_token, '');
    const rest = await h.c.controller.ListVolumes({ starting_token: first.next_token });
    assert.equal(rest.entries.length, 1);
    assert.equal(rest.next_token, '');
    assert.deepEqual([...first.entries, ...rest.entries].map((e) => e.volume?.volume_id).sort(), ids.sort());
    // The last volume of the first page goes away and a new one arrives: the token still works.
    await h.c.controller.DeleteVolume({ volume_id: first.entries[1]!.volume!.volume_id });
    ids.splice(ids.indexOf(first.entries[1]!.volume!.volume_id), 1);
    ids.push((await h.c.controller.CreateVolume({ name: 'pvt-l4', volume_capabilities: [cap('block')] })).volume!.volume_id);
    const after = await h.c.controller.ListVolumes({ starting_token: first.next_token });
    const seen = new Set([first.entries[0]!.volume!.volume_id, ...after.entries.map((e) => e.volume!.volume_id)]);
    for (const id of ids) {
      const onFirstPage = id === first.entries[0]!.volume!.volume_id;
      assert.ok(seen.has(id) || (!onFirstPage && id < first.next_token), `volume ${id} is listed`);
    }
    await rejectsWith(h.c.controller.ListVolumes({ starting_token: 'garbage' }), status.ABORTED);
    await rejectsWith(h.c.controller.ListVolumes({ starting_token: '99' }), status.ABORTED);
    for (const id of ids) await h.c.controller.DeleteVolume({ volume_id: id });
  });

  it('GetCapacity: the pool filesystem free space; 0 for another node or unsupported modes', async () => {
    const r = await h.c.controller.GetCapacity({});
    const s = statfsSync(h.stateDir);
    const free = s.bavail * s.bsize;
    assert.ok(Math.abs(Number(r.available_capacity) - free) < 256 * MiB, `${r.available_capacity} vs statfs ${free}`);
    assert.ok(Number(r.maximum_volume_size?.value) > 0);
    const other = await h.c.controller.GetCapacity({ accessible_topology: { segments: { [TOPO]: 'node-zzz' } } });
    assert.equal(other.available_capacity, '0');
    const multi = await h.c.controller.GetCapacity({ volume_capabilities: [cap('block', 'MULTI_NODE_MULTI_WRITER')] });
    assert.equal(multi.available_capacity, '0');
    await rejectsWith(h.c.controller.GetCapacity({ parameters: { nope: 'x' } }), status.INVALID_ARGUMENT);
  });

  it('snapshots: validation, idempotency, ALREADY_EXISTS, list filters and pagination, delete unknown → OK', async () => {
    const v = (await h.c.controller.CreateVolume({ name: 'pvt-snapsrc', volume_capabilities: [cap('block')] })).volume!;
    const w = (await h.c.controller.CreateVolume({ name: 'pvt-snapsrc2', volume_capabilities: [cap('block')] })).volume!;
    await rejectsWith(h.c.controller.CreateSnapshot({ source_volume_id: v.volume_id }), status.INVALID_ARGUMENT);
    await rejectsWith(h.c.controller.CreateSnapshot({ name: 'pvt-s' }), status.INVALID_ARGUMENT);
    await rejectsWith(h.c.controller.CreateSnapshot({ name: 'pvt-s', source_volume_id: 'vol-0123456789abcdef@' + h.nodeId }), status.NOT_FOUND);
    await rejectsWith(h.c.controller.CreateSnapshot({ name: 'pvt-s', source_volume_id: v.volume_id, parameters: { x: 'y' } }), status.INVALID_ARGUMENT);
    const s1 = (await h.c.controller.CreateSnapshot({ name: 'pvt-s', source_volume_id: v.volume_id })).snapshot!;
    assert.equal(s1.ready_to_use, true);
    assert.equal(s1.size_bytes, String(GiB));
    assert.equal((await h.c.controller.CreateSnapshot({ name: 'pvt-s', source_volume_id: v.volume_id })).snapshot?.snapshot_id, s1.snapshot_id);
    await rejectsWith(h.c.controller.CreateSnapshot({ name: 'pvt-s', source_volume_id: w.volume_id }), status.ALREADY_EXISTS);
    const s2 = (await h.c.controller.CreateSnapshot({ name: 'pvt-s2', source_volume_id: w.volume_id })).snapshot!;
    assert.equal((await h.c.controller.ListSnapshots({})).entries.length, 2);
    assert.deepEqual((await h.c.controller.ListSnapshots({ snapshot_id: s2.snapshot_id })).entries.map((e) => e.snapshot?.snapshot_id), [s2.snapshot_id]);
    assert.deepEqual((await h.c.controller.ListSnapshots({ source_volume_id: v.volume_id })).entries.map((e) => e.snapshot?.snapshot_id), [s1.snapshot_id]);
    assert.equal((await h.c.controller.ListSnapshots({ snapshot_id: 'snap-ffffffffffffffff@x' })).entries.length, 0);
    const p1 = await h.c.controller.ListSnapshots({ max_entries: 1 });
    assert.equal(p1.entries.length, 1);
    assert.equal((await h.c.controller.ListSnapshots({ starting_token: p1.next_token })).entries.length, 1);
    await rejectsWith(h.c.controller.ListSnapshots({ starting_token: 'x' }), status.ABORTED);
    await h.c.controller.DeleteSnapshot({ snapshot_id: 'snap-ffffffffffffffff@x' });
    await rejectsWith(h.c.controller.DeleteSnapshot({}), status.INVALID_ARGUMENT);
    for (const s of [s1, s2]) await h.c.controller.DeleteSnapshot({ snapshot_id: s.snapshot_id });
    for (const x of [v, w]) await h.c.controller.DeleteVolume({ volume_id: x.volume_id });
    assert.deepEqual(execFileSync('ls', [path.join(h.stateDir, 'pool')], { encoding: 'utf8' }).trim(), '', 'every layer file is gone');
  });

  it('ControllerExpandVolume: validation, NOT_FOUND, exact size, idempotent', async () => {
    await rejectsWith(h.c.controller.ControllerExpandVolume({ capacity_range: { required_bytes: GiB } }), status.INVALID_ARGUMENT);
    await rejectsWith(h.c.controller.ControllerExpandVolume({ volume_id: 'vol-0123456789abcdef@' + h.nodeId }), status.INVALID_ARGUMENT, /capacity_range/);
    await rejectsWith(h.c.controller.ControllerExpandVolume({ volume_id: 'vol-0123456789abcdef@' + h.nodeId, capacity_range: { required_bytes: GiB } }), status.NOT_FOUND);
    const v = (await h.c.controller.CreateVolume({ name: 'pvt-exp', volume_capabilities: [cap('block')] })).volume!;
    const r = await h.c.controller.ControllerExpandVolume({ volume_id: v.volume_id, capacity_range: { required_bytes: 2 * GiB + 4096 } });
    assert.equal(r.capacity_bytes, String(2 * GiB + 4096));
    assert.equal(r.node_expansion_required, false);
    const again = await h.c.controller.ControllerExpandVolume({ volume_id: v.volume_id, capacity_range: { required_bytes: GiB } });
    assert.equal(again.capacity_bytes, String(2 * GiB + 4096));
    await rejectsWith(h.c.controller.ControllerExpandVolume({ volume_id: v.volume_id, capacity_range: { required_bytes: 2 ** 62 } }), status.OUT_OF_RANGE);
    await h.c.controller.DeleteVolume({ volume_id: v.volume_id });
  });

  it('unimplemented optional RPCs answer UNIMPLEMENTED', async () => {
    await rejectsWith(h.c.controller.ControllerPublishVolume({ volume_id: 'x', node_id: 'y' }), status.UNIMPLEMENTED);
    await rejectsWith(h.c.controller.ControllerGetVolume({ volume_id: 'x' }), status.UNIMPLEMENTED);
  });
});

for (const access of ['block', 'mount'] as const) {
  describe(`csi: node lifecycle with ${access} access`, function () {
    const h = new CsiHarness();
    const c = (mode?: Parameters<typeof cap>[1]) => cap(access, mode);
    const target = (dir: string, name = 'target') => path.join(dir, name);
    before(async () => {
      await h.start();
    });
    after(async () => {
      const leaks = await h.cleanup();
      assert.deepEqual(leaks, [], `the suite leaked: ${leaks.join('; ')}`);
    });

    async function createStaged(name: string, extra: Record<string, unknown> = {}) {
      const v = (await h.c.controller.CreateVolume({ name, volume_capabilities: [c()], ...extra })).volume!;
      const staging = h.dir('staging');
      await h.c.node.NodeStageVolume({ volume_id: v.volume_id, staging_target_path: staging, volume_capability: c() });
      return { id: v.volume_id, staging };
    }
    async function publish(id: string, staging: string, t: string, readonly = false, mode?: Parameters<typeof cap>[1]) {
      await h.c.node.NodePublishVolume({ volume_id: id, staging_target_path: staging, target_path: t, volume_capability: c(mode), readonly });
    }
    async function release(id: string, staging: string, ...targets: string[]) {
      for (const t of targets) await h.c.node.NodeUnpublishVolume({ volume_id: id, target_path: t });
      await h.c.node.NodeUnstageVolume({ volume_id: id, staging_target_path: staging });
      await h.c.controller.DeleteVolume({ volume_id: id });
    }

    it('stage/publish validate required fields before looking anything up', async () => {
      const st = h.dir('s');
      await rejectsWith(h.c.node.NodeStageVolume({ staging_target_path: st, volume_capability: c() }), status.INVALID_ARGUMENT);
      await rejectsWith(h.c.node.NodeStageVolume({ volume_id: 'nope', volume_capability: c() }), status.INVALID_ARGUMENT);
      await rejectsWith(h.c.node.NodeStageVolume({ volume_id: 'nope', staging_target_path: st }), status.INVALID_ARGUMENT);
      await rejectsWith(h.c.node.NodeStageVolume({ volume_id: 'nope', staging_target_path: 'relative/x', volume_capability: c() }), status.INVALID_ARGUMENT);
      await rejectsWith(h.c.node.NodeStageVolume({ volume_id: '../etc', staging_target_path: st, volume_capability: c() }), status.INVALID_ARGUMENT);
      await rejectsWith(h.c.node.NodeStageVolume({ volume_id: 'nope', staging_target_path: st, volume_capability: c() }), status.NOT_FOUND);
      await rejectsWith(h.c.node.NodePublishVolume({ volume_id: 'nope', staging_target_path: st, volume_capability: c() }), status.INVALID_ARGUMENT, /target_path/);
      await rejectsWith(h.c.node.NodePublishVolume({ volume_id: 'nope', target_path: path.join(st, 't'), volume_capability: c() }), status.INVALID_ARGUMENT, /staging/);
      await rejectsWith(h.c.node.NodePublishVolume({ volume_id: 'nope', staging_target_path: st, target_path: path.join(st, 't') }), status.INVALID_ARGUMENT);
      await rejectsWith(h.c.node.NodePublishVolume({ volume_id: 'nope', staging_target_path: st, target_path: path.join(st, 't'), volume_capability: c() }), status.NOT_FOUND);
      await rejectsWith(h.c.node.NodeUnpublishVolume({ volume_id: 'nope' }), status.INVALID_ARGUMENT);
      await rejectsWith(h.c.node.NodeUnpublishVolume({ volume_id: 'nope', target_path: path.join(st, 't') }), status.NOT_FOUND);
      await rejectsWith(h.c.node.NodeUnstageVolume({ volume_id: 'nope' }), status.INVALID_ARGUMENT);
      await rejectsWith(h.c.node.NodeUnstageVolume({ volume_id: 'nope', staging_target_path: st }), status.NOT_FOUND);
      await rejectsWith(h.c.node.NodeGetVolumeStats({ volume_id: 'nope' }), status.INVALID_ARGUMENT);
      await rejectsWith(h.c.node.NodeGetVolumeStats({ volume_id: 'nope', volume_path: st }), status.NOT_FOUND);
      await rejectsWith(h.c.node.NodeExpandVolume({ volume_id: 'nope', volume_path: st }), status.NOT_FOUND);
    });

    it('data survives unpublish and republish; every step is idempotent; nothing stays behind', async () => {
      const { id, staging } = await createStaged(`pvt-life-${access}`);
      await h.c.node.NodeStageVolume({ volume_id: id, staging_target_path: staging, volume_capability: c() });
      const other = h.dir('other');
      await rejectsWith(h.c.node.NodeStageVolume({ volume_id: id, staging_target_path: other, volume_capability: c() }), status.FAILED_PRECONDITION);
      await rejectsWith(h.c.node.NodeStageVolume({ volume_id: id, staging_target_path: staging, volume_capability: c('SINGLE_NODE_MULTI_WRITER') }), status.ALREADY_EXISTS);
      const pdir = h.dir('pods');
      const t = target(pdir);
      await rejectsWith(h.c.node.NodePublishVolume({ volume_id: id, staging_target_path: other, target_path: t, volume_capability: c() }), status.FAILED_PRECONDITION, /not staged/);
      for (let i = 0; i < 3; i++) await publish(id, staging, t);
      const st = statSync(t);
      assert.ok(access === 'block' ? st.isBlockDevice() : st.isDirectory(), `${t} must be a ${access === 'block' ? 'block device file' : 'directory'}`);
      writeData(access, t, `hello from ${access}`);
      await rejectsWith(h.c.node.NodeUnstageVolume({ volume_id: id, staging_target_path: staging }), status.FAILED_PRECONDITION, /published/);
      await rejectsWith(h.c.controller.DeleteVolume({ volume_id: id }), status.FAILED_PRECONDITION, /staged/);
      for (let i = 0; i < 2; i++) await h.c.node.NodeUnpublishVolume({ volume_id: id, target_path: t });
      assert.equal(existsSync(t), false, 'NodeUnpublishVolume removes the target');
      await h.c.node.NodeUnstageVolume({ volume_id: id, staging_target_path: staging });
      await h.c.node.NodeUnstageVolume({ volume_id: id, staging_target_path: staging });
      assert.deepEqual(execFileSync('losetup', ['-a'], { encoding: 'utf8' }).split('\n').filter((l) => l.includes(h.root)), []);
      await h.c.node.NodeStageVolume({ volume_id: id, staging_target_path: staging, volume_capability: c() });
      await publish(id, staging, t);
      assert.equal(readData(access, t), `hello from ${access}`);
      await release(id, staging, t);
    });

    it('second publish: same args OK, other args ALREADY_EXISTS, other target per access mode; readonly is enforced', async () => {
      const { id, staging } = await createStaged(`pvt-pub-${access}`);
      const pdir = h.dir('pods');
      const t1 = target(pdir, 't1');
      const t2 = target(pdir, 't2');
      const t3 = target(pdir, 't3');
      await publish(id, staging, t1);
      await rejectsWith(h.c.node.NodePublishVolume({ volume_id: id, staging_target_path: staging, target_path: t1, volume_capability: c(), readonly: true }), status.ALREADY_EXISTS);
      await rejectsWith(h.c.node.NodePublishVolume({ volume_id: id, staging_target_path: staging, target_path: t2, volume_capability: c() }), status.FAILED_PRECONDITION);
      await h.c.node.NodeUnpublishVolume({ volume_id: id, target_path: t1 });
      await publish(id, staging, t1, false, 'SINGLE_NODE_MULTI_WRITER');
      await publish(id, staging, t2, false, 'SINGLE_NODE_MULTI_WRITER');
      await publish(id, staging, t3, true, 'SINGLE_NODE_MULTI_WRITER');
      writeData(access, t1, 'shared');
      assert.equal(readData(access, t2), 'shared');
      assert.throws(() => writeData(access, t3, 'must fail'), /Read-only|EROFS|Permission denied|not permitted/i);
      await release(id, staging, t1, t2, t3);
    });

    it('snapshot-restore shows the data at snapshot time; a clone shows the source now, not its later writes', async () => {
      const { id, staging } = await createStaged(`pvt-src-${access}`);
      const pdir = h.dir('pods');
      const t = target(pdir, 'src');
      await publish(id, staging, t);
      writeData(access, t, 'version-1');
      const snap = (await h.c.controller.CreateSnapshot({ name: `pvt-snap-${access}`, source_volume_id: id })).snapshot!;
      writeData(access, t, 'version-2');
      const clone = await h.c.controller.CreateVolume({ name: `pvt-clone-${access}`, volume_capabilities: [c()], volume_content_source: { volume: { volume_id: id } } });
      assert.deepEqual(clone.volume?.content_source?.volume?.volume_id, id);
      writeData(access, t, 'version-3');
      const restored = await h.c.controller.CreateVolume({
        name: `pvt-restore-${access}`,
        volume_capabilities: [c()],
        capacity_range: { required_bytes: 2 * GiB },
        volume_content_source: { snapshot: { snapshot_id: snap.snapshot_id } },
      });
      assert.equal(restored.volume?.content_source?.snapshot?.snapshot_id, snap.snapshot_id);
      assert.equal(restored.volume?.capacity_bytes, String(2 * GiB));
      await rejectsWith(
        h.c.controller.CreateVolume({ name: 'pvt-small', volume_capabilities: [c()], capacity_range: { required_bytes: MiB, limit_bytes: 64 * MiB }, volume_content_source: { snapshot: { snapshot_id: snap.snapshot_id } } }),
        status.OUT_OF_RANGE,
      );
      // The source and the snapshot go away first: the layers the copies sit on must stay (refcounting).
      await h.c.node.NodeUnpublishVolume({ volume_id: id, target_path: t });
      await h.c.node.NodeUnstageVolume({ volume_id: id, staging_target_path: staging });
      await h.c.controller.DeleteVolume({ volume_id: id });
      await h.c.controller.DeleteSnapshot({ snapshot_id: snap.snapshot_id });
      for (const [v, want] of [
        [restored.volume!.volume_id, 'version-1'],
        [clone.volume!.volume_id, 'version-2'],
      ] as const) {
        const s = h.dir('staging');
        await h.c.node.NodeStageVolume({ volume_id: v, staging_target_path: s, volume_capability: c() });
        const ct = target(h.dir('pods'));
        await publish(v, s, ct);
        assert.equal(readData(access, ct), want);
        await release(v, s, ct);
      }
    });

    if (access === 'block') {
      it('large O_DIRECT writes come back bit-exact through the device (guards the loop/FUSE data path)', async () => {
        const { id, staging } = await createStaged('pvt-integrity');
        const t = target(h.dir('pods'));
        await publish(id, staging, t);
        const data = randomBytes(32 * MiB);
        const src = path.join(h.root, 'random.bin');
        writeFileSync(src, data);
        execFileSync('dd', [`if=${src}`, `of=${t}`, 'bs=1M', 'oflag=direct', 'conv=fsync', 'status=none']);
        const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
        const back = () => execFileSync('dd', [`if=${t}`, 'bs=1M', 'count=32', 'iflag=direct', 'status=none'], { maxBuffer: 64 * MiB });
        assert.equal(sha(back()), sha(data));
        await h.c.node.NodeUnpublishVolume({ volume_id: id, target_path: t });
        await h.c.node.NodeUnstageVolume({ volume_id: id, staging_target_path: staging });
        await h.c.node.NodeStageVolume({ volume_id: id, staging_target_path: staging, volume_capability: c() });
        await publish(id, staging, t);
        assert.equal(sha(back()), sha(data), 'after unstage and restage');
        await release(id, staging, t);
      });
    }

    if (access === 'mount') {
      it('an xfs clone mounts while its source is mounted (same filesystem UUID)', async () => {
        const xfs = cap('mount', 'SINGLE_NODE_WRITER', 'xfs');
        const src = (await h.c.controller.CreateVolume({ name: 'pvt-xfs-src', volume_capabilities: [xfs], capacity_range: { required_bytes: 512 * MiB } })).volume!;
        const s1 = h.dir('staging');
        await h.c.node.NodeStageVolume({ volume_id: src.volume_id, staging_target_path: s1, volume_capability: xfs });
        const t1 = target(h.dir('pods'));
        await h.c.node.NodePublishVolume({ volume_id: src.volume_id, staging_target_path: s1, target_path: t1, volume_capability: xfs });
        writeData('mount', t1, 'xfs-data');
        const cl = (await h.c.controller.CreateVolume({ name: 'pvt-xfs-clone', volume_capabilities: [xfs], volume_content_source: { volume: { volume_id: src.volume_id } } })).volume!;
        const s2 = h.dir('staging');
        await h.c.node.NodeStageVolume({ volume_id: cl.volume_id, staging_target_path: s2, volume_capability: xfs });
        const t2 = target(h.dir('pods'));
        await h.c.node.NodePublishVolume({ volume_id: cl.volume_id, staging_target_path: s2, target_path: t2, volume_capability: xfs });
        assert.equal(readData('mount', t2), 'xfs-data');
        await release(cl.volume_id, s2, t2);
        await release(src.volume_id, s1, t1);
      });
    }

    it('expansion is seen by the published device and by the filesystem', async function () {
      const fs = access === 'mount' ? ['ext4', 'xfs'] : [''];
      for (const fsType of fs) {
        const v = (await h.c.controller.CreateVolume({ name: `pvt-grow-${access}${fsType}`, volume_capabilities: [cap(access, 'SINGLE_NODE_WRITER', fsType)], capacity_range: { required_bytes: 512 * MiB } })).volume!;
        const staging = h.dir('staging');
        const cp = cap(access, 'SINGLE_NODE_WRITER', fsType);
        await h.c.node.NodeStageVolume({ volume_id: v.volume_id, staging_target_path: staging, volume_capability: cp });
        const t = target(h.dir('pods'));
        await h.c.node.NodePublishVolume({ volume_id: v.volume_id, staging_target_path: staging, target_path: t, volume_capability: cp });
        writeData(access, t, 'before-growth');
        const r = await h.c.controller.ControllerExpandVolume({ volume_id: v.volume_id, capacity_range: { required_bytes: GiB }, volume_capability: cp });
        assert.equal(r.capacity_bytes, String(GiB));
        assert.equal(r.node_expansion_required, access === 'mount');
        if (access === 'block') {
          assert.equal(Number(execFileSync('blockdev', ['--getsize64', t], { encoding: 'utf8' })), GiB, 'the published device shows the new size at once');
          const n = await h.c.node.NodeExpandVolume({ volume_id: v.volume_id, volume_path: t, capacity_range: { required_bytes: GiB } });
          assert.equal(n.capacity_bytes, String(GiB));
        } else {
          const before = statfsSync(t).blocks * statfsSync(t).bsize;
          let grownOnline = true;
          try {
            await h.c.node.NodeExpandVolume({ volume_id: v.volume_id, volume_path: t, volume_capability: cp, capacity_range: { required_bytes: GiB } });
          } catch (e) {
            // ext4 cannot grow while mounted without CAP_SYS_RESOURCE: the driver says so and grows it at the next stage.
            assert.equal(fsType, 'ext4', `only ext4 may refuse online growth: ${String(e)}`);
            assert.equal((e as { code: number }).code, status.FAILED_PRECONDITION);
            grownOnline = false;
            await h.c.node.NodeUnpublishVolume({ volume_id: v.volume_id, target_path: t });
            await h.c.node.NodeUnstageVolume({ volume_id: v.volume_id, staging_target_path: staging });
            await h.c.node.NodeStageVolume({ volume_id: v.volume_id, staging_target_path: staging, volume_capability: cp });
            await h.c.node.NodePublishVolume({ volume_id: v.volume_id, staging_target_path: staging, target_path: t, volume_capability: cp });
          }
          const after = statfsSync(t).blocks * statfsSync(t).bsize;
          assert.ok(after > before + 400 * MiB, `${fsType} grew ${grownOnline ? 'online' : 'at restage'}: ${before} → ${after}`);
          assert.equal(readData(access, t), 'before-growth');
          if (fsType === 'xfs') assert.ok(grownOnline, 'xfs grows while mounted');
        }
        await release(v.volume_id, staging, t);
      }
    });

    it('expansion of a volume that is not in use: offline before staging, and staged-only growth', async () => {
      const v = (await h.c.controller.CreateVolume({ name: `pvt-offgrow-${access}`, volume_capabilities: [c()], capacity_range: { required_bytes: 512 * MiB } })).volume!;
      await h.c.controller.ControllerExpandVolume({ volume_id: v.volume_id, capacity_range: { required_bytes: 768 * MiB } });
      const staging = h.dir('staging');
      await h.c.node.NodeStageVolume({ volume_id: v.volume_id, staging_target_path: staging, volume_capability: c() });
      const size = async () => {
        const u = (await h.c.node.NodeGetVolumeStats({ volume_id: v.volume_id, volume_path: staging })).usage.find((x) => x.unit === 'BYTES')!;
        return Number(u.total);
      };
      const first = await size();
      assert.ok(first > 700 * MiB && first <= 768 * MiB, `staged after an offline grow: ${first}`);
      // Staged but not published: the filesystem grows right away (offline for ext4 if need be).
      await h.c.controller.ControllerExpandVolume({ volume_id: v.volume_id, capacity_range: { required_bytes: GiB } });
      const r = await h.c.node.NodeExpandVolume({ volume_id: v.volume_id, volume_path: staging, volume_capability: c() });
      assert.equal(r.capacity_bytes, String(GiB));
      const second = await size();
      assert.ok(second > first + 200 * MiB, `grown while staged: ${first} → ${second}`);
      await h.c.node.NodeUnstageVolume({ volume_id: v.volume_id, staging_target_path: staging });
      await h.c.controller.DeleteVolume({ volume_id: v.volume_id });
    });

    it('NodeGetVolumeStats: usage and a healthy condition, NOT_FOUND for a path the volume is not at', async () => {
      const { id, staging } = await createStaged(`pvt-stats-${access}`);
      const t = target(h.dir('pods'));
      await publish(id, staging, t);
      const s = await h.c.node.NodeGetVolumeStats({ volume_id: id, volume_path: t });
      assert.equal(s.volume_condition?.abnormal, false);
      const bytes = s.usage.find((u) => u.unit === 'BYTES')!;
      if (access === 'block') {
        assert.equal(bytes.total, String(GiB));
      } else {
        assert.ok(Number(bytes.total) > 900 * MiB && Number(bytes.total) <= GiB, bytes.total);
        assert.ok(Number(bytes.available) > 0);
        const inodes = s.usage.find((u) => u.unit === 'INODES')!;
        assert.ok(Number(inodes.total) > 0 && Number(inodes.used) > 0);
      }
      await rejectsWith(h.c.node.NodeGetVolumeStats({ volume_id: id, volume_path: h.dir('elsewhere') }), status.NOT_FOUND);
      await release(id, staging, t);
    });

    it('a second operation on a busy volume gets ABORTED; different volumes proceed in parallel', async () => {
      const a = (await h.c.controller.CreateVolume({ name: `pvt-busy-a-${access}`, volume_capabilities: [c()] })).volume!;
      const b = (await h.c.controller.CreateVolume({ name: `pvt-busy-b-${access}`, volume_capabilities: [c()] })).volume!;
      const sa = h.dir('staging');
      const sb = h.dir('staging');
      const same = await Promise.allSettled([
        h.c.node.NodeStageVolume({ volume_id: a.volume_id, staging_target_path: sa, volume_capability: c() }),
        h.c.controller.CreateSnapshot({ name: `pvt-busy-snap-${access}`, source_volume_id: a.volume_id }),
      ]);
      assert.equal(same[0].status, 'fulfilled');
      assert.equal(same[1].status, 'rejected');
      assert.equal(((same[1] as PromiseRejectedResult).reason as { code: number }).code, status.ABORTED);
      const parallel = await Promise.allSettled([
        h.c.node.NodeStageVolume({ volume_id: b.volume_id, staging_target_path: sb, volume_capability: c() }),
        h.c.controller.CreateSnapshot({ name: `pvt-par-snap-${access}`, source_volume_id: a.volume_id }),
      ]);
      assert.deepEqual(parallel.map((p) => p.status), ['fulfilled', 'fulfilled']);
      const snapId = (parallel[1] as PromiseFulfilledResult<{ snapshot: { snapshot_id: string } | null }>).value.snapshot!.snapshot_id;
      await h.c.controller.DeleteSnapshot({ snapshot_id: snapId });
      await release(a.volume_id, sa);
      await release(b.volume_id, sb);
    });

    it('a capability of the other access type is refused', async () => {
      const v = (await h.c.controller.CreateVolume({ name: `pvt-wrongtype-${access}`, volume_capabilities: [c()] })).volume!;
      const wrong = cap(access === 'block' ? 'mount' : 'block');
      await rejectsWith(h.c.node.NodeStageVolume({ volume_id: v.volume_id, staging_target_path: h.dir('s'), volume_capability: wrong }), status.INVALID_ARGUMENT, /access/);
      writeFileSync(path.join(h.root, 'marker'), '');
      await h.c.controller.DeleteVolume({ volume_id: v.volume_id });
    });
  });
}
