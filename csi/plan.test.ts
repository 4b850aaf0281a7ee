import { strict as assert } from 'node:assert';
import { decidePublish, paginate, parseParameters, qsdArgv, resolveCapacity, sizeSatisfies, type PublishArgs, GiB, MiB } from './plan.js';
import { newId, parseId, requireIdent, requirePath } from './ids.js';
import { emptyState, unreachableLayers } from './state.js';

describe('csi plan: sizes', () => {
  const cases: { name: string; range: { required_bytes: string; limit_bytes: string } | null; floor?: number; want: number | RegExp }[] = [
    { name: 'no range → 1 GiB default', range: null, want: GiB },
    { name: 'exact required', range: { required_bytes: String(10 * GiB), limit_bytes: '0' }, want: 10 * GiB },
    { name: 'required = limit', range: { required_bytes: String(10 * GiB), limit_bytes: String(10 * GiB) }, want: 10 * GiB },
    { name: 'rounded up to a sector', range: { required_bytes: String(MiB + 1), limit_bytes: '0' }, want: MiB + 512 },
    { name: 'only a limit below the default', range: { required_bytes: '0', limit_bytes: String(100 * MiB) }, want: 100 * MiB },
    { name: 'tiny required grows to the minimum', range: { required_bytes: '1', limit_bytes: '0' }, want: MiB },
    { name: 'limit below the minimum', range: { required_bytes: '0', limit_bytes: '4096' }, want: /no size/ },
    { name: 'required > limit', range: { required_bytes: '2048', limit_bytes: '1024' }, want: /exceeds limit/ },
    { name: 'negative', range: { required_bytes: '-5', limit_bytes: '0' }, want: /negative/ },
    { name: 'absurd', range: { required_bytes: String(2 ** 52), limit_bytes: '0' }, want: /maximum/ },
    { name: 'not a safe integer', range: { required_bytes: '99999999999999999999', limit_bytes: '0' }, want: /usable/ },
    { name: 'a source floor wins over a smaller request', range: { required_bytes: String(MiB), limit_bytes: '0' }, floor: 2 * GiB, want: 2 * GiB },
    { name: 'a limit below the source floor', range: { required_bytes: '0', limit_bytes: String(GiB) }, floor: 2 * GiB, want: /no size/ },
  ];
  for (const tc of cases) {
    it(tc.name, () => {
      if (typeof tc.want === 'number') assert.equal(resolveCapacity(tc.range, undefined, tc.floor), tc.want);
      else assert.throws(() => resolveCapacity(tc.range, undefined, tc.floor), (e: Error) => e.name === 'OutOfRange' && (tc.want as RegExp).test(e.message));
    });
  }
  it('sizeSatisfies honours both ends', () => {
    assert.equal(sizeSatisfies(GiB, { required_bytes: String(GiB), limit_bytes: '0' }), true);
    assert.equal(sizeSatisfies(GiB, { required_bytes: String(GiB + 1), limit_bytes: '0' }), false);
    assert.equal(sizeSatisfies(GiB, { required_bytes: '0', limit_bytes: String(GiB - 1) }), false);
  });
});

describe('csi plan: parameters, ids, paths', () => {
  it('accepts fsType and sidecar metadata, refuses the rest', () => {
    assert.deepEqual(parseParameters({}), {});
    assert.deepEqual(parseParameters({ fsType: 'xfs', 'csi.storage.k8s.io/pvc/name': 'x' }), { fsType: 'xfs' });
    assert.throws(() => parseParameters({ fsType: 'zfs' }), /not supported/);
    assert.throws(() => parseParameters({ replicas: '3' }), /unknown parameter "replicas"/);
  });
  it('ids carry their node and round-trip', () => {
    const id = newId('vol', 'node-1.example');
    assert.deepEqual(parseId(id)?.node, 'node-1.example');
    assert.equal(parseId('pvc-123'), undefined);
  });
  for (const bad of ['', 'a/b', '..', 'x..y', 'x'.repeat(129), 'tab\u0001']) {
    it(`refuses the ident ${JSON.stringify(bad).slice(0, 20)}`, () => assert.throws(() => requireIdent('name', bad), (e: Error) => e.name === 'InvalidArgument'));
  }
  it('paths must be absolute and free of ..', () => {
    assert.equal(requirePath('p', '/a/b/'), '/a/b');
    assert.throws(() => requirePath('p', 'a/b'), /absolute/);
    assert.throws(() => requirePath('p', '/a/../b'), /\.\./);
  });
});

describe('csi plan: publish table (spec NodePublishVolume)', () => {
  const base: PublishArgs = { targetPath: '/t1', stagingPath: '/s', type: 'block', mode: 'SINGLE_NODE_WRITER', readonly: false, mountFlags: [] };
  it('same target, same args → exists', () => assert.equal(decidePublish(base, [base]), 'exists'));
  it('same target, other args → ALREADY_EXISTS', () => assert.throws(() => decidePublish({ ...base, readonly: true }, [base]), (e: Error) => e.name === 'AlreadyExists'));
  it('other target, SINGLE_NODE_WRITER → FAILED_PRECONDITION', () =>
    assert.throws(() => decidePublish({ ...base, targetPath: '/t2' }, [base]), (e: Error) => e.name === 'FailedPrecondition'));
  it('other target, SINGLE_NODE_MULTI_WRITER on both → new', () => {
    const m = { ...base, mode: 'SINGLE_NODE_MULTI_WRITER' as const };
    assert.equal(decidePublish({ ...m, targetPath: '/t2', readonly: true }, [m]), 'new');
  });
  it('first publish → new', () => assert.equal(decidePublish(base, []), 'new'));
});

describe('csi plan: pagination and layers', () => {
  const items = ['a', 'b', 'c', 'd', 'e'];
  const valid = (t: string) => /^[a-z]$/.test(t);
  const page = (xs: string[], max: number, tok: string) => paginate(xs, (x) => x, max, tok, valid);
  it('max_entries 2 then the token alone returns the rest', () => {
    const p1 = page(items, 2, '');
    assert.deepEqual(p1, { page: ['a', 'b'], next: 'b' });
    assert.deepEqual(page(items, 0, p1.next), { page: ['c', 'd', 'e'], next: '' });
  });
  it('entries deleted or added between pages do not shift the next page', () => {
    const p1 = page(items, 2, '');
    assert.deepEqual(page(['a', 'c', 'd', 'e', 'f'], 0, p1.next).page, ['c', 'd', 'e', 'f']);
  });
  it('the last page has no token', () => assert.deepEqual(page(items, 5, ''), { page: items, next: '' }));
  for (const bad of ['X', '12', 'vol-x']) {
    it(`token ${bad} → ABORTED`, () => assert.throws(() => page(items, 0, bad), (e: Error) => e.name === 'Aborted'));
  }
  it('layers reachable from a volume head or a snapshot stay; the rest is garbage', () => {
    const s = emptyState();
    s.layers = { a: { id: 'a', parent: null }, b: { id: 'b', parent: 'a' }, c: { id: 'c', parent: 'a' }, d: { id: 'd', parent: null }, e: { id: 'e', parent: 'd' } };
    s.volumes.v = { id: 'v', name: 'v', capacityBytes: 1, head: 'b', accessTypes: ['block'], fsType: 'ext4', parameters: {}, source: null, createdAt: '' };
    s.snapshots.s = { id: 's', name: 's', sourceVolumeId: 'gone', layer: 'd', sizeBytes: 1, createdAt: '' };
    assert.deepEqual(unreachableLayers(s).sort(), ['c', 'e']);
  });
  it('qsd argv escapes commas in paths', () => {
    const a = qsdArgv({ headFile: '/p,x/h.qcow2', exportFile: '/r/disk', qmpSocket: '/r/q.sock', pidFile: '/r/pid', cacheDirect: true });
    assert.ok(a.some((x) => x.includes('filename=/p,,x/h.qcow2,')));
    assert.ok(a.includes('--daemonize'));
  });
});
