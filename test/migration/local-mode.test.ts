import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import type { Context } from 'mocha';
import { exec } from '../../lib/exec.js';
import { skipBecause } from '../helpers/skip.js';
import { LocalEnv, allowedCpus, type Status } from '../agent-local/harness.js';
import { guestAvailable } from './bare-qemu.js';
import { pingUntilReply } from '../helpers/ping.js';

/**
 * `podvirt migrate` through local mode on this machine: a second local pod with its own netns,
 * cgroup/cpuset, CSI volume and silent CNI tap, a migration network on both pods, the real CLI.
 */
describe('podvirt migrate (local mode, TCG)', function () {
  this.timeout(300_000);
  const env = new LocalEnv();
  const migBridge = `pvt-mig-l${randomBytes(2).toString('hex')}`;
  const migSubnet = `10.218.${randomBytes(1)[0]! % 250}.0/24`;

  before(async function () {
    if (!guestAvailable()) skipBecause(this as unknown as Context, 'test guest not built (hack/setup.d/20-test-guest.sh)');
    await env.init();
    process.env.PODVIRT_MIGRATION_BRIDGE = migBridge;
    process.env.PODVIRT_MIGRATION_SUBNET = migSubnet;
  });
  after(async () => {
    delete process.env.PODVIRT_MIGRATION_BRIDGE;
    delete process.env.PODVIRT_MIGRATION_SUBNET;
    try {
      await env.dispose();
    } finally {
      await exec('ip', ['link', 'del', migBridge], { allowFailure: true });
    }
  });

  const cli = (args: string[], allowFailure = false) => env.cli(args, { allowFailure, timeoutMs: 240_000 });
  const ticks = async (log: string) => [...(await import('node:fs/promises').then((f) => f.readFile(log, 'utf8'))).matchAll(/tick (\d+) (\d+\.\d+)/g)].map((m) => ({ n: Number(m[1]), up: Number(m[2]) }));

  let src: Status;
  let guestIp: string;
  /** Who host-local (local mode's store under the state dir) says holds `ip`. */
  const reservedFor = (ip: string): string | undefined => {
    const f = `${env.stateDir}/ipam/pvtlnet/${ip}`;
    return existsSync(f) ? readFileSync(f, 'utf8').split(/\r?\n/)[0] : undefined;
  };

  it('moves a running VM with its disk to a second local pod: uptime goes on, same IP answers, vCPUs pinned to the new cpuset', async () => {
    src = await env.run({ name: 'mvm', blockClaims: { data: '32Mi' }, cmdline: 'console=ttyS0 panic=-1' });
    const dhcp = await env.waitSerial(src.serialLog, /PODVIRT-DHCP eth0 ([0-9.]+)\//);
    guestIp = dhcp[1]!;
    await pingUntilReply(guestIp);
    await env.serialSend(src.serialSocket, 'diskpattern write /dev/vda before-local-migration');
    await env.waitSerial(src.serialLog, /PODVIRT-DISK-WRITTEN \/dev\/vda before-local-migration/);
    let mark0 = await env.logSize(src.serialLog);
    await env.serialSend(src.serialSocket, 'echo "GUEST-MAC $(cat /sys/class/net/eth0/address)"');
    const macBefore = (await env.waitSerial(src.serialLog, /GUEST-MAC ([0-9a-f:]{17})/, 20_000, mark0))[1]!;
    const lastSrc = (await ticks(src.serialLog)).at(-1)!;

    const r = await cli(['migrate', 'mvm', '--json']);
    const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { phase: string; downtimeMs?: number });
    assert.equal(lines.at(-1)!.phase, 'Completed', r.stderr);
    assert.ok(lines.some((l) => l.phase === 'MirroringDisks' || l.phase === 'PreCopy'));
    const target = /now runs in pod (\S+)/.exec(r.stderr)?.[1];
    assert.ok(target, r.stderr);

    const st = await env.status(target);
    assert.equal(st.phase, 'Running');
    assert.notEqual(st.netns, src.netns);
    assert.notEqual(st.cgroup, src.cgroup);
    // Pinned to the target's own CPUs, which the source did not have.
    assert.ok(st.vcpuThreads.length === 1);
    for (const t of st.vcpuThreads) {
      assert.ok(t.cpus.every((c) => st.cpus.includes(c)), `vCPU ${t.index} on ${t.cpus} within ${st.cpus}`);
      assert.equal(await allowedCpus(st.qemuPid, t.tid), t.cpus.join(','));
    }
    assert.ok(st.cpus.every((c) => !src.cpus.includes(c)), `target cpuset ${st.cpus} differs from the source's ${src.cpus}`);
    // The source pod is gone, but the VM's name still finds it in its new pod.
    const byName = JSON.parse((await cli(['status', 'mvm', '--json'])).stdout) as { name: string; qemuPid: number };
    assert.equal(byName.name, target);
    assert.equal(byName.qemuPid, st.qemuPid);
    // The guest did not reboot: its tick count and uptime go on.
    await env.waitSerial(st.serialLog, /tick \d+ /, 20_000);
    const first = (await ticks(st.serialLog))[0]!;
    assert.ok(first.n > lastSrc.n && first.up > lastSrc.up, `target tick ${first.n} ${first.up} after source tick ${lastSrc.n} ${lastSrc.up}`);
    assert.ok(!/PODVIRT-GUEST-READY/.test(await import('node:fs/promises').then((f) => f.readFile(st.serialLog, 'utf8'))));
    // Same MAC, same IP, answering through the target's tap.
    mark0 = await env.logSize(st.serialLog);
    await env.serialSend(st.serialSocket, 'echo "GUEST-MAC $(cat /sys/class/net/eth0/address)"');
    assert.equal((await env.waitSerial(st.serialLog, /GUEST-MAC ([0-9a-f:]{17})/, 20_000, mark0))[1], macBefore);
    assert.equal(st.interfaces[0]!.ip, src.interfaces[0]!.ip, 'the lease follows the guest');
    // The address stays reserved for the VM (IPAM owner key), not freed by the source pod's DEL.
    assert.equal(reservedFor(guestIp), 'podvirt-vm-mvm', 'host-local still holds the guest address, under the VM key');
    await pingUntilReply(guestIp);
    // The disk came along.
    const mark = await env.logSize(st.serialLog);
    await env.serialSend(st.serialSocket, 'echo 3 > /proc/sys/vm/drop_caches; diskpattern read /dev/vda');
    await env.waitSerial(st.serialLog, /PODVIRT-DISK-READ \/dev\/vda before-local-migration/, 30_000, mark);
    src = st;
    assert.ok(!existsSync(`/sys/class/net/${migBridge}/brif/`) || (await exec('ls', [`/sys/class/net/${migBridge}/brif/`])).stdout.trim() === '', 'migration attachments removed');
  });

  it('--cancel stops a migration: the VM stays in its pod, the target pod is removed', async () => {
    const child = cli(['migrate', src.name, '--json', '--max-bandwidth', '1Mi'], true);
    // wait until it runs
    for (let i = 0; i < 200; i++) {
      const ps = JSON.parse((await cli(['ps', '--json'])).stdout) as Array<{ name: string }>;
      if (ps.length > 1) break;
      await new Promise((r) => setTimeout(r, 250));
    }
    await new Promise((r) => setTimeout(r, 1500));
    await cli(['migrate', src.name, '--cancel']);
    const r = await child;
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /migration cancelled/);
    const ps = JSON.parse((await cli(['ps', '--json'])).stdout) as Array<{ name: string; phase: string }>;
    assert.deepEqual(ps.map((p) => p.name), [src.name]);
    assert.equal(ps[0]!.phase, 'Running');
    await pingUntilReply(guestIp);
    assert.equal(reservedFor(guestIp), 'podvirt-vm-mvm', 'the removed target did not release the VM address');
    await cli(['stop', src.name, '--timeout', '3']);
    assert.equal(reservedFor(guestIp), undefined, 'stopping the VM released it');
  });
});
