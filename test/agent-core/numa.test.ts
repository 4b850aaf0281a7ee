import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { qemuMachineAliases, readNumaFacts } from '../../agent/plan/host-facts.js';
import { VmController } from '../../agent/vm/controller.js';
import { skipBecause } from '../helpers/skip.js';
import { QEMU_GID, QEMU_UID, makeSandbox, type CoreSandbox } from './host-fixture.js';
import { planVm } from '../../agent/plan/plan.js';
import type { VmTopology } from '../../agent/plan/types.js';
import { QmpClient } from '../../agent/qmp/client.js';
import { queryCpusFast } from '../../agent/qmp/commands.js';
import { validateVmSpec } from '../../agent/spec/vm-spec.js';

/**
 * This host has one NUMA node, so a two-cell guest is built by replaying a stored topology with
 * two cells onto node 0: QEMU must accept the plan's memory backends (host-nodes, policy=bind)
 * and the -numa cpu mapping under -sandbox, and show the vCPUs in their cells.
 */
describe('agent-core: a two-cell NUMA plan runs in real QEMU', function () {
  this.timeout(30_000);
  let dir: string;
  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'pvt-core-numa-'));
  });
  after(async () => fs.rm(dir, { recursive: true, force: true }));

  it('places each vCPU in its cell and binds each cell to its host node', async () => {
    const spec = validateVmSpec({ cpus: 2, memory: '64Mi', accel: 'tcg', kernel: '/nonexistent', hotplugPorts: 0, serial: 'none' });
    const facts = { vmName: 'numa', cpuset: [0, 1], numa: { cpuNode: { 0: 0, 1: 0 } }, volumes: {}, kvmUsable: false, machineAliases: await qemuMachineAliases(), runDir: dir };
    const first = planVm(spec, facts);
    const stored: VmTopology = { ...first.topology, numaCells: [{ id: 0, vcpus: [0], memoryBytes: 32 * 2 ** 20 }, { id: 1, vcpus: [1], memoryBytes: 32 * 2 ** 20 }] };
    const plan = planVm(spec, { ...facts, topology: stored });
    assert.deepEqual(plan.cellHostNodes, { 0: [0], 1: [0] });
    // direct kernel boot of a missing file would fail: drop -kernel, QEMU then sits in SeaBIOS
    const argv = plan.argv.filter((a, i, all) => a !== '-kernel' && all[i - 1] !== '-kernel');
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
    const exited = new Promise((r) => child.once('exit', r));
    try {
      const q = await QmpClient.connect(plan.paths.qmpSocket, { connectTimeoutMs: 10_000 }).catch((e: Error) => {
        throw new Error(`${e.message}: ${stderr}`);
      });
      const cpus = await queryCpusFast(q);
      assert.deepEqual(cpus.map((c) => [c['cpu-index'], c.props?.['node-id']]), [[0, 0], [1, 1]]);
      const memdev = await q.execute<Array<{ id: string; size: number; policy: string; 'host-nodes': number[] }>>('query-memdev');
      assert.deepEqual(memdev.map((m) => [m.id, m.size, m.policy, m['host-nodes']]).sort(), [['mem0', 32 * 2 ** 20, 'bind', [0]], ['mem1', 32 * 2 ** 20, 'bind', [0]]]);
      q.close();
    } finally {
      child.kill('SIGKILL');
      await exited;
    }
  });
});

describe('agent-core: a guest SMT topology from whole host cores runs in real QEMU', function () {
  this.timeout(30_000);
  it('shows vCPUs as thread pairs of two sockets, one per NUMA cell', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'pvt-core-smt-'));
    // facts of a host with two 2-thread cores on two nodes (the plan is pure; QEMU only runs it, unpinned)
    const numa = { cpuNode: { 0: 0, 2: 0, 1: 1, 3: 1 }, siblings: { 0: [0, 2], 2: [0, 2], 1: [1, 3], 3: [1, 3] } };
    const spec = validateVmSpec({ cpus: 4, memory: '64Mi', accel: 'tcg', kernel: '/nonexistent', hotplugPorts: 0, serial: 'none' });
    const p = planVm(spec, { vmName: 'smt', cpuset: [0, 1, 2, 3], numa, volumes: {}, kvmUsable: false, machineAliases: await qemuMachineAliases(), runDir: dir });
    // this host has one node: bind both cells to node 0 for the run
    const argv = p.argv.filter((a, i, all) => a !== '-kernel' && all[i - 1] !== '-kernel').map((a) => a.replace(/host-nodes=1/, 'host-nodes=0'));
    const child = spawn(argv[0]!, argv.slice(1), { stdio: 'ignore' });
    const exited = new Promise((r) => child.once('exit', r));
    try {
      const q = await QmpClient.connect(p.paths.qmpSocket, { connectTimeoutMs: 10_000 });
      const cpus = await queryCpusFast(q);
      assert.deepEqual(
        cpus.map((c) => [c['cpu-index'], c.props?.['socket-id'], c.props?.['thread-id'], c.props?.['node-id']]),
        [[0, 0, 0, 0], [1, 0, 1, 0], [2, 1, 0, 1], [3, 1, 1, 1]],
      );
      q.close();
    } finally {
      child.kill('SIGKILL');
      await exited;
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});

describe('agent-core: hugepage-backed guest memory, as the pod runs it', function () {
  this.timeout(60_000);
  const knob = '/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages';
  const free = '/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages';
  let orig: number | undefined;
  let sb: CoreSandbox | undefined;
  let vm: VmController | undefined;

  before(async function () {
    orig = Number((await fs.readFile(knob, 'utf8')).trim());
    // 40 more 2 MiB pages for this test only (restored after)
    await fs.writeFile(knob, String(orig + 40));
    if (Number((await fs.readFile(free, 'utf8')).trim()) < 32) skipBecause(this, 'the kernel could not reserve 32 free 2 MiB hugepages');
    sb = await makeSandbox([0, 1]);
  });
  after(async () => {
    if (vm) await vm.kill().catch(() => {});
    await sb?.dispose();
    if (orig !== undefined) await fs.writeFile(knob, String(orig));
  });

  it('preallocates the cell from hugepages (memfd, policy=bind) under -sandbox as non-root, and fails early when short', async () => {
    const spec = validateVmSpec({ cpus: 1, memory: '64Mi', accel: 'tcg', kernel: '/nonexistent', hotplugPorts: 0, hugepages: { pageSize: '2Mi' } });
    const numa = await readNumaFacts();
    const facts = { vmName: 'huge', cpuset: [1], numa, volumes: {}, kvmUsable: false, machineAliases: await qemuMachineAliases(), runDir: path.join(sb!.dir, 'run') };
    const p = planVm(spec, facts);
    const plan = { ...p, argv: p.argv.filter((a, i, all) => a !== '-kernel' && all[i - 1] !== '-kernel') };
    const before = Number((await fs.readFile(free, 'utf8')).trim());
    vm = await VmController.start({ name: 'huge', stateDir: path.join(sb!.dir, 'state') }, plan, { cgroupDirs: sb!.cgroupDirs, netns: sb!.netnsPath, uid: QEMU_UID, gid: QEMU_GID });
    const memdev = await vm.qmp.execute<Array<{ id: string; size: number; policy: string; prealloc: boolean }>>('query-memdev');
    assert.deepEqual(memdev.map((m) => [m.id, m.size, m.policy, m.prealloc]), [['mem0', 64 * 2 ** 20, 'bind', true]]);
    assert.equal(before - Number((await fs.readFile(free, 'utf8')).trim()), 32, '32 hugepages taken at start');
    await vm.kill();
    vm = undefined;
    // the plan refuses a VM that would not fit, before anything starts
    const short = validateVmSpec({ cpus: 1, memory: '2Gi', accel: 'tcg', kernel: '/k', hugepages: { pageSize: '2Mi' } });
    const numaNow = await readNumaFacts();
    assert.throws(() => planVm(short, { ...facts, numa: numaNow }), /needs 1024 free 2Mi hugepages on host node\(s\) 0/);
  });
});
