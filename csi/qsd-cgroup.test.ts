import { strict as assert } from 'node:assert';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { JOIN_AND_EXEC, QsdCgroup, parseCgroupMounts, planQsdCgroup } from './qsd-cgroup.js';

const HYBRID = `sysfs /sys sysfs rw 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
cgroup /elsewhere/cpuset cgroup rw,cpuset 0 0
`;
const V2 = 'cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0\nproc /proc proc rw 0 0\n';

describe('csi: qsd cgroup plan', () => {
  it('v1/hybrid: one dir per hierarchy under the root (v2 unified included), cpuset ones marked for initialisation', () => {
    const mounts = parseCgroupMounts(HYBRID, '/sys/fs/cgroup/');
    assert.deepEqual(
      planQsdCgroup(mounts, 'podvirt/qsd'),
      [
        { dir: '/sys/fs/cgroup/cpu,cpuacct/podvirt/qsd', cpuset: false },
        { dir: '/sys/fs/cgroup/cpuset/podvirt/qsd', cpuset: true },
        { dir: '/sys/fs/cgroup/memory/podvirt/qsd', cpuset: false },
        { dir: '/sys/fs/cgroup/systemd/podvirt/qsd', cpuset: false },
        { dir: '/sys/fs/cgroup/unified/podvirt/qsd', cpuset: false },
      ],
    );
  });

  it('pure v2: the one tree; an injected root selects other mounts', () => {
    assert.deepEqual(planQsdCgroup(parseCgroupMounts(V2, '/sys/fs/cgroup'), 'podvirt/qsd'), [{ dir: '/sys/fs/cgroup/podvirt/qsd', cpuset: false }]);
    assert.deepEqual(planQsdCgroup(parseCgroupMounts(HYBRID, '/elsewhere'), 'x'), [{ dir: '/elsewhere/cpuset/x', cpuset: true }]);
  });

  it('refuses names that leave the tree and roots without hierarchies', () => {
    for (const bad of ['', '/abs', '../up', 'a/../b', 'a//b', 'sp ace']) assert.throws(() => new QsdCgroup(bad), /relative path/, bad);
    assert.throws(() => planQsdCgroup([], 'podvirt/qsd'), /no cgroup hierarchy/);
  });
});

describe('csi: qsd cgroup on fake trees', () => {
  let tmp = '';
  beforeEach(() => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'pvt-csi-cg-'));
  });
  afterEach(() => rmSync(tmp, { recursive: true, force: true }));

  it('v1: creates the group in every hierarchy with cpus and mems copied down; enrol and holds', async () => {
    const cpuset = path.join(tmp, 'cpuset');
    const memory = path.join(tmp, 'memory');
    mkdirSync(cpuset);
    mkdirSync(memory);
    writeFileSync(path.join(cpuset, 'cpuset.cpus'), '0-3\n');
    writeFileSync(path.join(cpuset, 'cpuset.mems'), '0\n');
    const cg = new QsdCgroup('podvirt/qsd', {
      mounts: [
        { mountPoint: cpuset, type: 'cgroup', options: ['rw', 'cpuset'] },
        { mountPoint: memory, type: 'cgroup', options: ['rw', 'memory'] },
      ],
    });
    const dirs = await cg.dirs();
    assert.deepEqual(dirs.map((d) => d.dir), [path.join(cpuset, 'podvirt/qsd'), path.join(memory, 'podvirt/qsd')]);
    for (const d of [path.join(cpuset, 'podvirt'), path.join(cpuset, 'podvirt/qsd')]) {
      assert.equal(readFileSync(path.join(d, 'cpuset.cpus'), 'utf8'), '0-3');
      assert.equal(readFileSync(path.join(d, 'cpuset.mems'), 'utf8'), '0');
    }
    assert.equal(await cg.holds(4242), false);
    await cg.enrol(4242);
    assert.equal(readFileSync(path.join(memory, 'podvirt/qsd/cgroup.procs'), 'utf8'), '4242');
    assert.equal(await cg.holds(4242), true);
    // Idempotent: a second driver finds the group made.
    assert.deepEqual(await new QsdCgroup('podvirt/qsd', { mounts: [{ mountPoint: cpuset, type: 'cgroup', options: ['cpuset'] }] }).dirs(), [dirs[0]]);
  });

  it('v2: one group; the launcher joins it first, from the host cgroup namespace when ours is private', async () => {
    const root = path.join(tmp, 'unified');
    mkdirSync(root);
    const proc = path.join(tmp, 'proc');
    mkdirSync(path.join(proc, 'self', 'ns'), { recursive: true });
    mkdirSync(path.join(proc, '1', 'ns'), { recursive: true });
    symlinkSync('cgroup:[4026531835]', path.join(proc, '1', 'ns', 'cgroup'));
    symlinkSync('cgroup:[4026532999]', path.join(proc, 'self', 'ns', 'cgroup'));
    const cg = new QsdCgroup('podvirt/qsd', { mounts: [{ mountPoint: root, type: 'cgroup2', options: ['rw'] }], procRoot: proc });
    assert.deepEqual(await cg.launcher(), ['nsenter', `--cgroup=${proc}/1/ns/cgroup`, '--', 'sh', '-c', JOIN_AND_EXEC, 'podvirt-qsd', '1', path.join(root, 'podvirt/qsd')]);
    rmSync(path.join(proc, 'self', 'ns', 'cgroup'));
    symlinkSync('cgroup:[4026531835]', path.join(proc, 'self', 'ns', 'cgroup'));
    assert.equal((await cg.launcher())[0], 'sh', 'same namespace: no nsenter');
    assert.match(JOIN_AND_EXEC, /exec "\$@"$/, 'the shell execs the daemon: its pid is the daemon');
  });
});
