import { strict as assert } from 'node:assert';
import { promises as fs } from 'node:fs';
import { execText, exec } from '../../lib/exec.js';
import { formatCpuList } from '../../lib/sysfs.js';
import { skipBecause } from '../helpers/skip.js';
import { LocalEnv, GUEST_KERNEL, allowedCpus, type Status } from './harness.js';
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { callControl } from '../../agent/local/control.js';
import { pingUntilReply } from '../helpers/ping.js';

/** The guest's `pcilist` lines (ticks and other console output interleave with them). */
const pciLines = (text: string): string =>
  text
    .split(/\r?\n/)
    .filter((l) => /^PCI [0-9a-f]{4}:/.test(l))
    .join('\n');

/**
 * One VM through local mode with the real components (device plugin, CSI, CNI, sandbox, DHCP,
 * QEMU under TCG). The tests share the VM and run in order, to keep the boots few on a 2-core host.
 */
describe('agent-local: a VM pod through local mode (TCG)', function () {
  this.timeout(240_000);
  const env = new LocalEnv();
  const name = `pvtl${env.tag}`;
  let st: Status;

  before(async function () {
    if (process.getuid?.() !== 0) skipBecause(this, 'needs root (netns, cgroups, loop devices)');
    if (!existsSync(GUEST_KERNEL)) skipBecause(this, 'test guest not built (hack/setup.d/20-test-guest.sh)');
    await env.init();
    st = await env.run({ name, cpus: 2, blockClaims: { data: '32Mi' } });
  });
  after(async () => {
    await env.dispose();
  });

  it('boots the guest: marker on the serial log, phase Running', async () => {
    assert.equal(st.phase, 'Running');
    await env.waitSerial(st.serialLog, /PODVIRT-GUEST-READY kernel=\S+ cpus=2/);
  });

  it('runs QEMU as non-root, in the pod cgroup and the pod netns', async () => {
    const status = await fs.readFile(`/proc/${st.qemuPid}/status`, 'utf8');
    const uids = /^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)/m.exec(status)!.slice(1).map(Number);
    assert.ok(uids.every((u) => u !== 0), `all uids non-root: ${uids.join(' ')}`);
    assert.match(status, /^CapEff:\s+0+$/m, 'no effective capabilities');
    const cg = await fs.readFile(`/proc/${st.qemuPid}/cgroup`, 'utf8');
    assert.ok(cg.split('\n').some((l) => st.cgroup.endsWith(l.split(':')[2] ?? '\0')), `QEMU in ${st.cgroup}: ${cg}`);
    const podNs = await execText('ip', ['netns', 'exec', st.netns.split('/').pop()!, 'readlink', '/proc/self/ns/net']);
    assert.equal(await fs.readlink(`/proc/${st.qemuPid}/ns/net`), podNs);
    assert.notEqual(await fs.readlink(`/proc/${st.qemuPid}/ns/net`), await fs.readlink('/proc/self/ns/net'));
  });

  it("pins each vCPU thread to its planned CPU (Cpus_allowed_list) within the pod's exclusive cpuset", async () => {
    assert.equal(st.vcpuThreads.length, 2);
    const seen = new Set<number>();
    for (const t of st.vcpuThreads) {
      assert.equal(t.cpus.length, 1, `vcpu ${t.index} pinned 1:1`);
      assert.ok(st.cpus.includes(t.cpus[0]!), `vcpu ${t.index} on a pod CPU`);
      seen.add(t.cpus[0]!);
      assert.equal(await allowedCpus(st.qemuPid, t.tid), String(t.cpus[0]));
    }
    assert.equal(seen.size, 2, 'distinct CPUs');
  });

  it('gives the guest its address by DHCP from the agent; guest and host ping each other over the CNI tap', async () => {
    const itf = st.interfaces[0]!;
    const ip = itf.ip.split('/')[0]!;
    await env.waitSerial(st.serialLog, new RegExp(`PODVIRT-DHCP eth0 ${ip.replace(/\./g, '\\.')}/24 router=${itf.gateway.replace(/\./g, '\\.')}`));
    await pingUntilReply(ip);
    const from = await env.logSize(st.serialLog);
    await env.serialSend(st.serialSocket, `ping -c 3 -W 5 ${itf.gateway} && echo PING-OK`);
    await env.waitSerial(st.serialLog, /^PING-OK/m, 30_000, from);
  });

  it('hotplugs and unplugs a disk (CSI volume) and a NIC (CNI tap, DHCP lease) in the running VM, seen by the guest', async () => {
    const sock = path.join(env.runDir, 'agent.sock');
    let from = await env.logSize(st.serialLog);
    await callControl(sock, 'POST', `/pods/${name}/disks`, { disk: 'hp1', size: '16Mi' });
    await env.waitSerial(st.serialLog, /PODVIRT-DISKS \[vda vdb\]/, 60_000, from);
    await env.serialSend(st.serialSocket, `diskpattern write /dev/vdb hot-${env.tag}; diskpattern read /dev/vdb`);
    await env.waitSerial(st.serialLog, new RegExp(`PODVIRT-DISK-READ /dev/vdb hot-${env.tag}`), 30_000, from);

    await callControl(sock, 'POST', `/pods/${name}/interfaces`, { iface: 'hp0', network: 'pvtlnet' });
    const lease = await env.waitSerial(st.serialLog, /PODVIRT-DHCP eth1 (\d+\.\d+\.\d+\.\d+)\/24/, 60_000, from);
    const withNic = await env.status(name);
    assert.ok(withNic.interfaces.some((i) => i.ip?.startsWith(`${lease[1]}/`)), 'status lists the hotplugged attachment');
    await pingUntilReply(lease[1]!);

    from = await env.logSize(st.serialLog);
    await callControl(sock, 'POST', `/pods/${name}/disks/hp1/unplug`, { timeoutMs: 60_000 });
    await env.waitSerial(st.serialLog, /PODVIRT-DISKS \[vda\]/, 30_000, from);
    await callControl(sock, 'POST', `/pods/${name}/interfaces/hp0/unplug`, { timeoutMs: 60_000 });
    await env.serialSend(st.serialSocket, 'echo NETS $(ls /sys/class/net | tr "\\n" " ") END');
    const nets = await env.waitSerial(st.serialLog, /^NETS (.*) END/m, 30_000, from);
    assert.doesNotMatch(nets[1]!, /eth1/);
    const after = await env.status(name);
    assert.equal(after.interfaces.length, 1);
    assert.equal(after.disks.length, 1);
    assert.equal(await env.leftoverHotplugMounts(), 0, 'the unplugged volume is unpublished');
  });

  it('attaches the serial console (podvirt console) and detaches when input ends', async () => {
    const r = await env.cli(['console', name], { input: 'echo CONSOLE-$((6*7))\n', timeoutMs: 30_000 });
    assert.match(r.stdout, /^CONSOLE-42\r?$/m);
  });

  it('keeps a disk written in the guest across stop and run, with identical PCI addresses', async () => {
    let from = await env.logSize(st.serialLog);
    await env.serialSend(st.serialSocket, `diskpattern write /dev/vda keep-${env.tag}; pcilist`);
    await env.waitSerial(st.serialLog, new RegExp(`PODVIRT-DISK-WRITTEN /dev/vda keep-${env.tag}`), 30_000, from);
    const pci1 = pciLines((await env.waitSerial(st.serialLog, /PODVIRT-PCI-BEGIN\r?\n([\s\S]*?)PODVIRT-PCI-END/, 30_000, from))[1]!);
    const topo1 = JSON.stringify(st.topology);

    await env.cli(['stop', name, '--timeout', '3']); // the busybox guest has no ACPI power-button handler
    assert.equal(existsSync(st.netns), false, 'netns gone after stop');
    st = await env.run({ name, cpus: 2, blockClaims: { data: '32Mi' } });
    await env.waitSerial(st.serialLog, /PODVIRT-GUEST-READY/);
    from = await env.logSize(st.serialLog);
    await env.serialSend(st.serialSocket, 'diskpattern read /dev/vda; pcilist');
    await env.waitSerial(st.serialLog, new RegExp(`PODVIRT-DISK-READ /dev/vda keep-${env.tag}`), 30_000, from);
    const pci2 = pciLines((await env.waitSerial(st.serialLog, /PODVIRT-PCI-BEGIN\r?\n([\s\S]*?)PODVIRT-PCI-END/, 30_000, from))[1]!);
    assert.ok(pci1.split('\n').length >= 3, `guest listed PCI devices: ${pci1}`);
    assert.equal(pci2, pci1, "the guest's PCI view is identical after the restart");
    assert.equal(JSON.stringify(st.topology), topo1, 'recorded topology replayed');
  });

  it('survives an agent restart: the VM is untouched and re-adopted, a drifted vCPU re-pinned', async () => {
    const before = st;
    await env.shutdownAgent();
    assert.doesNotThrow(() => process.kill(before.qemuPid, 0), 'QEMU still alive without an agent');
    // Something moves a vCPU while no agent watches: the next agent must notice and re-pin.
    const moved = before.vcpuThreads[0]!;
    await exec('taskset', ['-pc', before.cpus.join(','), String(moved.tid)]);
    assert.equal(await allowedCpus(before.qemuPid, moved.tid), formatCpuList(before.cpus));
    const from = await env.logSize(before.serialLog);
    await env.waitSerial(before.serialLog, /tick \d+/, 10_000, from);
    const after = await env.status(name); // starts the agent again, which re-adopts
    assert.equal(after.phase, 'Running');
    assert.equal(after.qemuPid, before.qemuPid);
    assert.deepEqual(after.vcpuThreads, before.vcpuThreads);
    for (const t of after.vcpuThreads) assert.equal(await allowedCpus(after.qemuPid, t.tid), String(t.cpus[0]));
    st = after;
  });

  it('refuses bad input clearly and leaves the running pod alone', async () => {
    const bad = await env.cli(['run', '/nonexistent.yaml'], { allowFailure: true });
    assert.notEqual(bad.code, 0);
    const dup = await env.cli(['run', '-'], { allowFailure: true, input: env.manifest({ name, cpus: 2, blockClaims: { data: '32Mi' } }) });
    assert.notEqual(dup.code, 0);
    assert.match(dup.stderr, /already running/);
    const noSpec = await env.cli(['run', '-'], { allowFailure: true, input: 'kind: Pod\nmetadata: {name: x}\n' });
    assert.equal(noSpec.code, 2);
    assert.match(noSpec.stderr, /vm\.podvirt\.io\/spec.*required/);
    const missing = await env.cli(['status', 'nope', '--json'], { allowFailure: true });
    assert.match(missing.stderr, /no pod nope/);
    assert.equal((await env.status(name)).phase, 'Running');
  });
});
