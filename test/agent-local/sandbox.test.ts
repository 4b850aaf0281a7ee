import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { SandboxManager } from '../../agent/sandbox/sandbox.js';
import { detectCgroupLayout } from '../../agent/sandbox/cgroup-layout.js';
import { enterCgroups } from '../../agent/sandbox/cgroup-apply.js';
import { waitFor } from '../../lib/backoff.js';
import { exec, execText } from '../../lib/exec.js';
import { skipBecause } from '../helpers/skip.js';

describe('agent-local: pod sandbox on the real host', function () {
  const tag = randomBytes(3).toString('hex');
  const parent = `pvtl-${tag}`;
  let dir: string;
  let m: SandboxManager;

  before(async function () {
    if (process.getuid?.() !== 0) skipBecause(this, 'needs root for netns and cgroups');
    try {
      await detectCgroupLayout();
    } catch (e) {
      skipBecause(this, `no usable cgroup hierarchy: ${(e as Error).message}`);
    }
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'pvtl-sb-'));
    m = new SandboxManager({ stateDir: dir, cgroupParent: parent, netnsPrefix: 'pvtl-', reservedCpus: [] });
  });
  after(async () => {
    if (!m) return;
    for (const s of await m.list()) await m.destroy(s.pod);
    const layout = await m.cgroupLayout();
    const roots = layout.version === 1 ? [layout.cpuset, layout.memory, ...(layout.devices ? [layout.devices] : [])] : [layout.root];
    for (const r of roots) await fs.rmdir(path.join(r, parent)).catch(() => undefined);
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('gives a process its own netns and a cgroup with the carved CPUs; destroy removes all of it', async () => {
    const pod = `sb${tag}`;
    const sb = await m.create(pod, 1, 64 << 20);
    assert.equal(sb.cpus.length, 1);
    assert.ok(existsSync(sb.netns), 'netns bind mount exists');
    assert.deepEqual(await m.effectiveCpus(pod), sb.cpus);

    const child = spawn('ip', ['netns', 'exec', sb.netnsName, 'sleep', '300'], { stdio: 'ignore' });
    const exited = new Promise((r) => child.once('exit', r));
    try {
      // ip exec's the command, so the pid is sleep's once the netns is entered.
      const pid = child.pid!;
      await waitFor(async () => ((await fs.readlink(`/proc/${pid}/exe`)).endsWith('/sleep') ? true : undefined), { timeoutMs: 5000 });
      await enterCgroups(pid, sb.cgroup.procs);
      const allowed = (await fs.readFile(`/proc/${pid}/status`, 'utf8')).match(/^Cpus_allowed_list:\s*(\S+)/m)?.[1];
      assert.equal(allowed, sb.cpus.join(','));
      const cg = await fs.readFile(`/proc/${pid}/cgroup`, 'utf8');
      assert.match(cg, new RegExp(`:cpuset:/${parent}/${pod}$|^0::/${parent}/${pod}$`, 'm'));
      const layout = await m.cgroupLayout();
      if (layout.version === 1 && layout.devices) {
        // Confined to its device nodes: /dev/null yes, /dev/net/tun only once allowed.
        const list = await fs.readFile(path.join(layout.devices, parent, pod, 'devices.list'), 'utf8');
        assert.match(list, /^c 1:3 rwm$/m);
        assert.doesNotMatch(list, /^a /m);
        assert.doesNotMatch(list, /^c 10:200 /m);
        await m.allowDevices(pod, ['/dev/net/tun']);
        assert.match(await fs.readFile(path.join(layout.devices, parent, pod, 'devices.list'), 'utf8'), /^c 10:200 rwm$/m);
        const probe = await exec('sh', ['-c', `echo $$ > ${path.join(layout.devices, parent, pod, 'cgroup.procs')}; exec cat /dev/kvm`], { allowFailure: true });
        assert.match(probe.stderr, /Operation not permitted/, 'a device outside the list cannot be opened');
      }
      assert.equal(await fs.readlink(`/proc/${pid}/ns/net`), await execText('ip', ['netns', 'exec', sb.netnsName, 'readlink', '/proc/self/ns/net']));
    } finally {
      await m.destroy(pod);
      await exited;
    }
    assert.ok(!existsSync(sb.netns), 'netns removed');
    for (const p of sb.cgroup.procs) assert.ok(!existsSync(p), `${p} removed`);
    assert.equal((await m.list()).length, 0);
  });
});
