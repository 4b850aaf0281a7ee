import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { waitFor } from '../../lib/backoff.js';
import { FailedPrecondition, NotFound } from '../../lib/errors.js';
import { probeKvm } from '../../agent/launch/accel.js';
import { findHostPid, readNsPids } from '../../agent/launch/host-pid.js';
import { listTasks, mapVcpuTids, readCgroupCpus } from '../../agent/pin/threads.js';
import { AffinityError, setThreadAffinity } from '../../agent/pin/affinity.js';

const status = (name: string, nspid: string, cpus: string) => `Name:\t${name}\nTgid:\t1\nNSpid:\t${nspid}\nCpus_allowed:\tff\nCpus_allowed_list:\t${cpus}\n`;

describe('agent-core: thread discovery and cgroup cpusets (fake trees)', () => {
  let root: string;
  before(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'pvt-core-proc-'));
    // QEMU is pid 5000 on the host and pid 1 in the pod's pid namespace
    const t = async (tid: number, name: string, nspid: string, cpus: string) => {
      await fs.mkdir(path.join(root, 'proc/5000/task', String(tid)), { recursive: true });
      await fs.writeFile(path.join(root, 'proc/5000/task', String(tid), 'status'), status(name, nspid, cpus));
    };
    await t(5000, 'qemu-system-x86', '5000\t1', '0-7');
    await t(5003, 'CPU 0/KVM', '5003\t4', '2');
    await t(5004, 'CPU 1/KVM', '5004\t5', '3');
    await t(5009, 'worker', '5009\t9', '0-7');
    // cgroup v2 pod group and a v1 cpuset group
    await fs.mkdir(path.join(root, 'cg2/kubepods/pod1'), { recursive: true });
    await fs.writeFile(path.join(root, 'cg2/kubepods/pod1/cpuset.cpus.effective'), '2-3,6\n');
    await fs.writeFile(path.join(root, 'cg2/kubepods/pod1/cpuset.cpus'), '\n');
    await fs.mkdir(path.join(root, 'cg1/cpuset/pod1'), { recursive: true });
    await fs.writeFile(path.join(root, 'cg1/cpuset/pod1/cpuset.cpus'), '4-5\n');
    await fs.mkdir(path.join(root, 'cg2/empty'), { recursive: true });
    await fs.writeFile(path.join(root, 'cg2/empty/cpuset.cpus.effective'), '\n');
  });
  after(async () => fs.rm(root, { recursive: true, force: true }));

  it('translates namespaced vCPU thread ids through NSpid to host tids', async () => {
    const tasks = await listTasks(5000, path.join(root, 'proc'));
    assert.deepEqual(tasks.map((t) => [t.tid, t.nsTids, t.comm]), [[5000, [5000, 1], 'qemu-system-x86'], [5003, [5003, 4], 'CPU 0/KVM'], [5004, [5004, 5], 'CPU 1/KVM'], [5009, [5009, 9], 'worker']]);
    assert.deepEqual(tasks[1]!.cpusAllowed, [2]);
    assert.deepEqual(mapVcpuTids([{ index: 0, nsTid: 4 }, { index: 1, nsTid: 5 }], tasks), [{ index: 0, tid: 5003 }, { index: 1, tid: 5004 }]);
    assert.throws(() => mapVcpuTids([{ index: 2, nsTid: 77 }], tasks), FailedPrecondition);
    await assert.rejects(listTasks(4242, path.join(root, 'proc')), NotFound);
  });

  it('reads the pod cpuset from cgroup v2 (effective) and v1', async () => {
    assert.deepEqual(await readCgroupCpus(path.join(root, 'cg2/kubepods/pod1'), 2), [2, 3, 6]);
    assert.deepEqual(await readCgroupCpus(path.join(root, 'cg1/cpuset/pod1'), 1), [4, 5]);
    await assert.rejects(readCgroupCpus(path.join(root, 'cg2/empty'), 2), /cpuset is empty/);
    await assert.rejects(readCgroupCpus(path.join(root, 'cg2/none'), 2), NotFound);
  });
});

describe('agent-core: host facts on the real host', () => {
  it('finds the host pid of a process inside another pid namespace', async () => {
    const child = spawn('unshare', ['--pid', '--fork', '--', 'sleep', '30'], { stdio: 'ignore' });
    let hostPidSeen: number | undefined;
    try {
      // the sleep is pid 1 of the new namespace; unshare itself stays in ours
      const hostPid = await waitFor(
        async () => {
          const kids = (await fs.readFile(`/proc/${child.pid}/task/${child.pid}/children`, 'utf8').catch(() => '')).trim();
          return kids ? Number(kids.split(/\s+/)[0]) : undefined;
        },
        { timeoutMs: 5000, what: 'sleep in the new pid namespace' },
      );
      hostPidSeen = hostPid;
      assert.deepEqual(await readNsPids(`/proc/${hostPid}/status`), [hostPid, 1]);
      assert.equal(await findHostPid(1, hostPid), hostPid);
      assert.equal(await findHostPid(99999, hostPid), undefined);
    } finally {
      // killing unshare orphans its child (the namespace's init): kill that one first
      if (hostPidSeen !== undefined) process.kill(hostPidSeen, 'SIGKILL');
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
    }
  });

  it('probes /dev/kvm honestly (PVM here counts as not usable; a missing node says why)', async () => {
    const missing = await probeKvm({ dev: '/nonexistent-dev' });
    assert.equal(missing.usable, false);
    assert.match(missing.reason, /ENOENT/);
    const real = await probeKvm();
    let pvm = false;
    try {
      await fs.access('/sys/module/kvm_pvm');
      pvm = true;
    } catch {
      /* not PVM */
    }
    if (pvm) {
      assert.equal(real.usable, false);
      assert.match(real.reason, /PVM/);
    } else {
      assert.equal(typeof real.usable, 'boolean');
    }
  });

  it('sched_setaffinity by tid, and a clear error for a thread that does not exist', async () => {
    const child = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      setThreadAffinity(child.pid!, [0]);
      const st = await fs.readFile(`/proc/${child.pid}/status`, 'utf8');
      assert.match(st, /Cpus_allowed_list:\s*0\n/);
      assert.throws(() => setThreadAffinity(2 ** 22 + 7, [0]), (e: unknown) => e instanceof AffinityError && /ESRCH/.test(e.message));
    } finally {
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
    }
  });
});
