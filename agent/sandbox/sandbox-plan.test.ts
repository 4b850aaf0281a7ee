import { strict as assert } from 'node:assert';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { carveCpus } from './cpu-carve.js';
import { chooseLayout, parseMountinfo } from './cgroup-layout.js';
import { BASE_DEVICE_RULES, deviceRule, planPodCgroup, planPodCgroupRemoval, planPodDevices, podCgroupPaths } from './cgroup-plan.js';
import { applyCgroupOps } from './cgroup-apply.js';
import { SandboxManager } from './sandbox.js';
import { Netns } from './netns.js';
import type { Exec } from '../../lib/exec.js';

describe('sandbox plan: CPU carving', () => {
  const smt = new Map([
    [0, '0/0'], [4, '0/0'], [1, '0/1'], [5, '0/1'], [2, '0/2'], [6, '0/2'], [3, '0/3'], [7, '0/3'],
  ]);
  const cases: { name: string; req: Parameters<typeof carveCpus>[0]; want: number[] | RegExp }[] = [
    { name: 'lowest free CPUs without topology', req: { online: [0, 1, 2, 3], reserved: [0], taken: [1], count: 2 }, want: [2, 3] },
    { name: 'whole SMT cores first', req: { online: [0, 1, 2, 3, 4, 5, 6, 7], reserved: [0], taken: [], count: 2, coreOf: smt }, want: [1, 5] },
    { name: 'odd count: a whole core then a single thread', req: { online: [0, 1, 2, 3, 4, 5, 6, 7], reserved: [0, 4], taken: [], count: 3, coreOf: smt }, want: [1, 2, 5] },
    { name: 'broken cores only when needed', req: { online: [0, 1, 4, 5], reserved: [0], taken: [5], count: 2, coreOf: smt }, want: [1, 4] },
    { name: 'all CPUs when nothing reserved', req: { online: [0, 1], reserved: [], taken: [], count: 2 }, want: [0, 1] },
    { name: 'too few free CPUs', req: { online: [0, 1], reserved: [0], taken: [1], count: 1 }, want: /need 1 exclusive CPU\(s\) but only 0 free/ },
    { name: 'zero CPUs refused', req: { online: [0, 1], reserved: [], taken: [], count: 0 }, want: /positive integer/ },
  ];
  for (const tc of cases) {
    it(tc.name, () => {
      if (tc.want instanceof RegExp) assert.throws(() => carveCpus(tc.req), tc.want);
      else assert.deepEqual(carveCpus(tc.req), tc.want);
    });
  }
});

const HYBRID = `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`;
const UNIFIED = `30 23 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
`;

describe('sandbox plan: cgroup layout', () => {
  it('hybrid host: v1 cpuset and memory win', () => {
    assert.deepEqual(chooseLayout(parseMountinfo(HYBRID), () => 'hugetlb'), {
      version: 1,
      cpuset: '/sys/fs/cgroup/cpuset',
      memory: '/sys/fs/cgroup/memory',
    });
  });
  it('unified host with cpuset+memory: v2', () => {
    assert.deepEqual(chooseLayout(parseMountinfo(UNIFIED), () => 'cpuset cpu io memory pids'), { version: 2, root: '/sys/fs/cgroup' });
  });
  it('unified host without cpuset: clear error', () => {
    assert.throws(() => chooseLayout(parseMountinfo(UNIFIED), () => 'cpu memory'), /cpuset and memory/);
  });
});

describe('sandbox plan: pod cgroup ops', () => {
  it('v1: parent inherits root cpus/mems, pod gets its CPUs, nodes and limit', () => {
    const ops = planPodCgroup({ version: 1, cpuset: '/cg/cpuset', memory: '/cg/memory' }, { parent: 'podvirt', pod: 'vm1', cpus: [2, 3], mems: [0], memoryBytes: 1 << 30 });
    assert.deepEqual(ops, [
      { op: 'mkdir', path: '/cg/cpuset/podvirt' },
      { op: 'write', path: '/cg/cpuset/podvirt/cpuset.cpus', value: '', inheritFrom: '/cg/cpuset/cpuset.cpus' },
      { op: 'write', path: '/cg/cpuset/podvirt/cpuset.mems', value: '', inheritFrom: '/cg/cpuset/cpuset.mems' },
      { op: 'mkdir', path: '/cg/cpuset/podvirt/vm1' },
      { op: 'write', path: '/cg/cpuset/podvirt/vm1/cpuset.cpus', value: '2-3' },
      { op: 'write', path: '/cg/cpuset/podvirt/vm1/cpuset.mems', value: '0' },
      { op: 'write', path: '/cg/cpuset/podvirt/vm1/cpuset.mem_hardwall', value: '1' },
      { op: 'mkdir', path: '/cg/memory/podvirt' },
      { op: 'mkdir', path: '/cg/memory/podvirt/vm1' },
      { op: 'write', path: '/cg/memory/podvirt/vm1/memory.limit_in_bytes', value: String(1 << 30) },
    ]);
    assert.deepEqual(planPodCgroupRemoval({ version: 1, cpuset: '/cg/cpuset', memory: '/cg/memory' }, 'podvirt', 'vm1'), [
      { op: 'rmdir', path: '/cg/cpuset/podvirt/vm1' },
      { op: 'rmdir', path: '/cg/memory/podvirt/vm1' },
    ]);
  });
  it('v1 devices: deny all, then the base nodes; later rules are additive; nothing on v2', () => {
    const layout = { version: 1 as const, cpuset: '/cg/cpuset', memory: '/cg/memory', devices: '/cg/devices' };
    const first = planPodDevices(layout, 'podvirt', 'vm1', ['c 1:3 rwm'], true);
    assert.deepEqual(first, [
      { op: 'mkdir', path: '/cg/devices/podvirt' },
      { op: 'mkdir', path: '/cg/devices/podvirt/vm1' },
      { op: 'write', path: '/cg/devices/podvirt/vm1/devices.deny', value: 'a' },
      { op: 'write', path: '/cg/devices/podvirt/vm1/devices.allow', value: 'c 1:3 rwm' },
    ]);
    assert.deepEqual(planPodDevices(layout, 'podvirt', 'vm1', [deviceRule('b', 7, 3)], false), [
      { op: 'write', path: '/cg/devices/podvirt/vm1/devices.allow', value: 'b 7:3 rwm' },
    ]);
    assert.deepEqual(podCgroupPaths(layout, 'podvirt', 'vm1').procs, ['/cg/cpuset/podvirt/vm1', '/cg/memory/podvirt/vm1', '/cg/devices/podvirt/vm1']);
    assert.deepEqual(planPodDevices({ version: 2, root: '/cg' }, 'podvirt', 'vm1', BASE_DEVICE_RULES, true), []);
    assert.throws(() => deviceRule('c', 1, 3, 'rwx'), /bad device access/);
  });
  it('refuses names that would escape the hierarchy', () => {
    assert.throws(() => podCgroupPaths({ version: 2, root: '/cg' }, 'podvirt', '../x'), /not a safe cgroup name/);
    assert.throws(() => planPodCgroup({ version: 2, root: '/cg' }, { parent: 'p', pod: 'a', cpus: [], mems: [0], memoryBytes: 1 }), /at least one CPU/);
  });

  describe('v2 on a fake tree', () => {
    let root: string;
    beforeEach(async () => {
      root = await fs.mkdtemp(path.join(os.tmpdir(), 'pvtl-cg2-'));
      await fs.writeFile(path.join(root, 'cgroup.controllers'), 'cpuset cpu io memory pids\n');
      await fs.writeFile(path.join(root, 'cgroup.subtree_control'), '');
    });
    afterEach(async () => {
      await fs.rm(root, { recursive: true, force: true });
    });

    it('enables controllers down the tree and writes the pod knobs; removal leaves the parent', async () => {
      const layout = { version: 2 as const, root };
      await applyCgroupOps(planPodCgroup(layout, { parent: 'podvirt', pod: 'vm2', cpus: [1, 3, 4], mems: [0, 1], memoryBytes: 805306368 }));
      const rd = (p: string) => fs.readFile(path.join(root, p), 'utf8');
      assert.equal(await rd('cgroup.subtree_control'), '+cpuset +memory');
      assert.equal(await rd('podvirt/cgroup.subtree_control'), '+cpuset +memory');
      assert.equal(await rd('podvirt/vm2/cpuset.cpus'), '1,3-4');
      assert.equal(await rd('podvirt/vm2/cpuset.mems'), '0-1');
      assert.equal(await rd('podvirt/vm2/memory.max'), '805306368');
      const paths = podCgroupPaths(layout, 'podvirt', 'vm2');
      assert.deepEqual(paths.procs, [path.join(root, 'podvirt/vm2')]);
      assert.equal(paths.cpusFile, path.join(root, 'podvirt/vm2/cpuset.cpus.effective'));
      // A fake tree's directories hold files, so only the empty-group removal path is exercised by rmdir here.
      await fs.rm(path.join(root, 'podvirt/vm2'), { recursive: true });
      await fs.mkdir(path.join(root, 'podvirt/vm2'));
      await applyCgroupOps(planPodCgroupRemoval(layout, 'podvirt', 'vm2'));
      await assert.rejects(fs.stat(path.join(root, 'podvirt/vm2')), /ENOENT/);
      await fs.stat(path.join(root, 'podvirt'));
    });
  });
});

describe('sandbox manager on fake sysfs + cgroup v2 tree', () => {
  let dir: string;
  const calls: string[][] = [];
  const fakeIp: Exec = async (cmd, args) => {
    calls.push([cmd, ...args]);
    const listed = calls.filter((c) => c[2] === 'add').map((c) => c[3]).filter((n) => !calls.some((d) => d[2] === 'delete' && d[3] === n));
    return { code: 0, signal: null, stdout: args[1] === 'list' ? listed.join('\n') : '', stderr: '' };
  };
  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'pvtl-sbm-'));
    const sys = path.join(dir, 'sys/devices/system');
    await fs.mkdir(path.join(sys, 'cpu'), { recursive: true });
    await fs.writeFile(path.join(sys, 'cpu/online'), '0-3\n');
    for (const [n, cpus] of [[0, '0-1'], [1, '2-3']] as const) {
      await fs.mkdir(path.join(sys, `node/node${n}`), { recursive: true });
      await fs.writeFile(path.join(sys, `node/node${n}/cpulist`), `${cpus}\n`);
    }
    await fs.mkdir(path.join(dir, 'cg'));
    await fs.writeFile(path.join(dir, 'cg/cgroup.subtree_control'), '');
  });
  after(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('carves disjoint CPUs per pod, binds memory to their nodes, frees them on destroy', async () => {
    const m = new SandboxManager({
      stateDir: path.join(dir, 'state'),
      reservedCpus: [0],
      sysRoot: path.join(dir, 'sys'),
      layout: { version: 2, root: path.join(dir, 'cg') },
      netnsTool: new Netns(fakeIp),
    });
    const a = await m.create('a', 2, 1 << 28);
    assert.deepEqual(a.cpus, [1, 2]);
    assert.deepEqual(a.mems, [0, 1]);
    assert.equal(a.netns, '/run/netns/podvirt-a');
    await assert.rejects(m.create('a', 1, 1 << 28), /already has a sandbox/);
    const b = await m.create('b', 1, 1 << 28);
    assert.deepEqual(b.cpus, [3]);
    assert.deepEqual(b.mems, [1]);
    await assert.rejects(m.create('c', 1, 1 << 28), /only 0 free/);
    assert.deepEqual((await m.list()).map((s) => s.pod).sort(), ['a', 'b']);
    // Fake groups hold plain files; empty them as the kernel would once the tasks are gone.
    for (const p of ['a', 'b']) await fs.rm(path.join(dir, 'cg/podvirt', p), { recursive: true });
    for (const p of ['a', 'b']) await fs.mkdir(path.join(dir, 'cg/podvirt', p));
    await m.destroy('a');
    await m.destroy('a');
    const c = await m.create('c', 2, 1 << 28);
    assert.deepEqual(c.cpus, [1, 2]);
    assert.ok(calls.some((x) => x.join(' ') === 'ip netns delete podvirt-a'));
  });
});
