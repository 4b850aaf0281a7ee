import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { DeadlineExceeded, FailedPrecondition, InvalidArgument } from '../../lib/errors.js';
import { parseCpuList } from '../../lib/sysfs.js';
import { waitFor } from '../../lib/backoff.js';
import { qemuMachineAliases, readNumaFacts } from '../../agent/plan/host-facts.js';
import { planVm } from '../../agent/plan/plan.js';
import { pciPath } from '../../agent/plan/topology.js';
import type { VmPlan } from '../../agent/plan/types.js';
import { setThreadAffinity } from '../../agent/pin/affinity.js';
import { checkPins } from '../../agent/pin/pinner.js';
import { deviceAddress, queryBlock, queryPci } from '../../agent/qmp/commands.js';
import { validateVmSpec } from '../../agent/spec/vm-spec.js';
import { VmController } from '../../agent/vm/controller.js';
import { launcherCommand } from '../../agent/launch/launcher.js';
import { QEMU_GID, QEMU_UID, addTap, alive, makeSandbox, procStatus, withTunDevice, type CoreSandbox } from './host-fixture.js';

const MiB = 2 ** 20;

describe('agent-core: VmController with real QEMU (TCG, no guest OS) as non-root in a cgroup and netns', function () {
  this.timeout(60_000);
  let sb: CoreSandbox;
  let vm: VmController | undefined;
  let plan: VmPlan;
  let stateDir: string;
  let volDir: string;
  const pids = new Set<number>();

  const sandbox = () => ({ cgroupDirs: sb.cgroupDirs, netns: sb.netnsPath, uid: QEMU_UID, gid: QEMU_GID });
  const launch = (p: VmPlan) => ({ launcherArgv: withTunDevice(launcherCommand(p.argv, sandbox()), path.join(sb.dir, 'dev')) });

  /**
   * Without a guest OS, unplug completes at once only in a slot the firmware never powered.
   * SeaBIOS numbers the buses behind the root ports during its PCI init (and may touch slot
   * power then), so hotplug only after that is over: wait until rp1 has a secondary bus.
   */
  const firmwarePciDone = () =>
    waitFor(
      async () => {
        const pci = await queryPci(vm!.qmp);
        const rp = pci[0]?.devices.find((d) => d.qdev_id === 'rp1');
        return (rp?.pci_bridge?.bus.secondary ?? 0) > 0 ? true : undefined;
      },
      { timeoutMs: 20_000, what: 'SeaBIOS PCI enumeration' },
    );

  before(async () => {
    sb = await makeSandbox([0, 1]);
    stateDir = path.join(sb.dir, 'state');
    volDir = path.join(sb.dir, 'vol');
    await fs.mkdir(volDir, { mode: 0o755 });
    await fs.mkdir(path.join(sb.dir, 'dev'));
    for (const [f, size] of [['boot.img', MiB], ['hot.img', 4 * MiB]] as const) {
      await fs.writeFile(path.join(volDir, f), Buffer.alloc(0));
      await fs.truncate(path.join(volDir, f), size);
      await fs.chown(path.join(volDir, f), QEMU_UID, QEMU_GID);
    }
    await addTap(sb.netns, 'pvtc0');
    await addTap(sb.netns, 'pvtc1');
    const spec = validateVmSpec({
      cpus: 2,
      memory: '64Mi',
      accel: 'tcg',
      bootDisk: 'boot',
      disks: [{ name: 'boot', volume: 'vol', type: 'file', path: 'boot.img' }],
      interfaces: [{ name: 'net0', network: 'br' }],
      hotplugPorts: 2,
    });
    plan = planVm(spec, {
      vmName: 'core-vm',
      cpuset: sb.cpus,
      numa: await readNumaFacts(),
      volumes: { vol: { kind: 'filesystem', mountPath: volDir } },
      taps: { net0: 'pvtc0' },
      kvmUsable: false,
      machineAliases: await qemuMachineAliases(),
      runDir: path.join(sb.dir, 'run'),
    });
  });

  after(async () => {
    if (vm) await vm.kill().catch(() => {});
    for (const p of pids) if (alive(p)) process.kill(p, 'SIGKILL');
    await sb?.dispose();
  });

  it('starts QEMU non-root, capability-less, sandboxed, in the cgroup and netns, pinned 1:1', async () => {
    vm = await VmController.start({ name: 'core-vm', stateDir }, plan, sandbox(), launch(plan));
    pids.add(vm.qemuPid);
    const pid = vm.qemuPid;
    const st = await procStatus(pid);
    assert.equal(st.Name, 'qemu-system-x86', 'the spawned pid is QEMU itself: the launcher exec’d');
    assert.equal(st.Uid!.split(/\s+/)[0], String(QEMU_UID));
    assert.equal(st.Gid!.split(/\s+/)[0], String(QEMU_GID));
    assert.equal(st.CapEff, '0000000000000000');
    assert.equal(st.CapBnd, '0000000000000000');
    assert.equal(st.NoNewPrivs, '1');
    assert.equal(st.Seccomp, '2', '-sandbox on installs a seccomp filter');
    const cg = await fs.readFile(`/proc/${pid}/cgroup`, 'utf8');
    assert.match(cg, new RegExp(`:cpuset:/${sb.id}\\n`));
    assert.match(cg, new RegExp(`:memory:/${sb.id}\\n`));
    assert.match(cg, new RegExp(`^0::/${sb.id}$`, 'm'), 'cgroup v2 membership');
    assert.ok((await fs.readFile(path.join(sb.cgroupDirs[0]!, 'cgroup.procs'), 'utf8')).split('\n').includes(String(pid)));
    assert.equal((await fs.stat(`/proc/${pid}/ns/net`)).ino, (await fs.stat(sb.netnsPath)).ino);
    const s = await vm.status();
    assert.equal(s.phase, 'Running');
    assert.equal(s.runState, 'running');
    assert.deepEqual(s.vcpuThreads.map((t) => [t.index, t.cpus]), [[0, [0]], [1, [1]]]);
    for (const t of s.vcpuThreads) {
      const list = (await procStatus(t.tid)).Cpus_allowed_list!;
      assert.deepEqual(parseCpuList(list), [plan.pins.vcpus[t.index]!.cpu], `vCPU ${t.index} Cpus_allowed_list`);
      assert.match(await fs.readFile(`/proc/${pid}/task/${t.tid}/comm`, 'utf8'), new RegExp(`^CPU ${t.index}/TCG`));
    }
    const state = JSON.parse(await fs.readFile(path.join(stateDir, 'vm.json'), 'utf8')) as { qemuPid: number; topology: unknown };
    assert.equal(state.qemuPid, pid);
    assert.deepEqual(state.topology, plan.topology);
    // the addresses QEMU really uses are the planned ones
    for (const d of plan.topology.devices) {
      assert.deepEqual(await deviceAddress(vm.qmp, d.id), { bus: d.bus, slot: d.addr, function: 0 });
    }
    for (const p of plan.topology.rootPorts) assert.deepEqual(await deviceAddress(vm.qmp, p.id), { bus: 'pcie.0', slot: p.slot, function: p.function });
    assert.ok(await fs.stat(plan.paths.serialLog!));
  });

  it('hotplugs a disk into a spare root port, grows it, unplugs it on DEVICE_DELETED', async () => {
    await firmwarePciDone();
    const before = vm!.topology;
    const dev = await vm!.hotplugDisk({ name: 'hot', file: path.join(volDir, 'hot.img'), block: false });
    const spare = before.rootPorts.filter((p) => !before.devices.some((d) => d.bus === p.id))[0]!;
    assert.equal(dev.bus, spare.id);
    assert.deepEqual(await deviceAddress(vm!.qmp, 'disk-hot'), { bus: spare.id, slot: 0, function: 0 });
    assert.ok((await queryBlock(vm!.qmp)).some((b) => b.qdev?.includes('disk-hot')));
    const saved = JSON.parse(await fs.readFile(path.join(stateDir, 'vm.json'), 'utf8')) as { topology: { devices: Array<{ key: string; hotplugged?: boolean }> } };
    assert.equal(saved.topology.devices.find((d) => d.key === 'disk:hot')?.hotplugged, true);
    // the volume grew: grow the disk online
    await fs.truncate(path.join(volDir, 'hot.img'), 8 * MiB);
    await vm!.resizeDisk('hot', 8 * MiB);
    const blk = (await queryBlock(vm!.qmp)).find((b) => b.qdev?.includes('disk-hot'));
    assert.equal(blk?.inserted?.image?.['virtual-size'], 8 * MiB);
    await assert.rejects(vm!.hotplugDisk({ name: 'hot', file: '/nonexistent', block: false }), InvalidArgument);
    await vm!.unplugDisk('hot', 10_000);
    assert.equal(vm!.topology.devices.some((d) => d.key === 'disk:hot'), false);
    assert.equal((await queryBlock(vm!.qmp)).some((b) => b.qdev?.includes('disk-hot')), false);
    // a failed hotplug leaves nothing behind
    await assert.rejects(vm!.hotplugDisk({ name: 'ghost', file: path.join(volDir, 'missing.img'), block: false }));
    assert.deepEqual(vm!.topology, before);
  });

  it('hotplugs a NIC on a tap in the netns and unplugs it', async () => {
    const dev = await vm!.hotplugNic({ name: 'net1', tap: 'pvtc1', mac: '52:54:00:aa:bb:cc' });
    assert.deepEqual(await deviceAddress(vm!.qmp, 'net-net1'), { bus: dev.bus, slot: 0, function: 0 });
    const mac = await vm!.qmp.execute<string>('qom-get', { path: '/machine/peripheral/net-net1', property: 'mac' });
    assert.equal(mac, '52:54:00:aa:bb:cc');
    await vm!.unplugNic('net1', 10_000);
    assert.equal(vm!.topology.devices.some((d) => d.key === 'nic:net1'), false);
    await assert.rejects(vm!.unplugNic('net1'), /has no nic net1/);
  });

  it('refuses hotplug once the spare ports are used up', async () => {
    await vm!.hotplugDisk({ name: 'h1', file: path.join(volDir, 'hot.img'), block: false, readonly: true });
    await vm!.hotplugDisk({ name: 'h2', file: path.join(volDir, 'hot.img'), block: false, readonly: true });
    await assert.rejects(vm!.hotplugDisk({ name: 'h3', file: path.join(volDir, 'hot.img'), block: false, readonly: true }), (e: unknown) => e instanceof FailedPrecondition && /no free PCIe root port/.test(e.message));
    await vm!.unplugDisk('h1', 10_000);
    await vm!.unplugDisk('h2', 10_000);
  });

  it('reflects pause, resume and reset in the phase', async () => {
    const phases: string[] = [];
    vm!.on('phase', (p: string) => phases.push(p));
    await vm!.pause();
    assert.equal((await vm!.status()).phase, 'Paused');
    await vm!.resume();
    const resetsBefore = (await vm!.status()).resets;
    const reset = vm!.qmp.waitEvent('RESET', { timeoutMs: 5000, match: (ev) => ev.data.guest === false });
    await vm!.reset();
    assert.equal((await reset.promise).data.reason, 'host-qmp-system-reset');
    const s = await vm!.status();
    assert.equal(s.phase, 'Running');
    // SeaBIOS with nothing to boot may reset the machine on its own too
    assert.ok(s.resets >= resetsBefore + 1);
    assert.deepEqual(phases, ['Paused', 'Running']);
    vm!.removeAllListeners('phase');
  });

  it('is adopted after the controller is dropped (agent restart): same QEMU, pins verified and repaired', async () => {
    const pid = vm!.qemuPid;
    const topo = vm!.topology;
    const tids = (await vm!.status()).vcpuThreads;
    vm!.release();
    vm = undefined;
    assert.ok(alive(pid));
    // something moved a vCPU while the agent was away
    setThreadAffinity(tids[1]!.tid, [0, 1]);
    const again = await VmController.adopt({ name: 'core-vm', stateDir });
    assert.ok(again);
    vm = again;
    assert.equal(vm.qemuPid, pid);
    assert.deepEqual(vm.topology, topo);
    const s = await vm.status();
    assert.equal(s.phase, 'Running');
    assert.deepEqual(s.vcpuThreads.map((t) => t.cpus), [[0], [1]]);
    assert.equal(pciPath(vm.topology, 'disk:boot'), pciPath(plan.topology, 'disk:boot'));
  });

  it('shuts down (a guest without ACPI ignores the button: killed after the timeout) and leaves nothing', async () => {
    const pid = vm!.qemuPid;
    const exit = new Promise<{ phase: string }>((r) => vm!.once('exit', r));
    const how = await vm!.shutdown(500);
    assert.equal(how, 'killed');
    assert.equal(alive(pid), false);
    assert.equal((await exit).phase, 'Stopped');
    await assert.rejects(fs.stat(path.join(stateDir, 'vm.json')));
    // adopted, so not reaped by the controller: the test process (its real parent) reaps it shortly
    await waitFor(async () => ((await fs.readFile(path.join(sb.cgroupDirs[0]!, 'cgroup.procs'), 'utf8')).trim() === '' ? true : undefined), { timeoutMs: 5000, what: 'empty cgroup' });
    assert.equal(await VmController.adopt({ name: 'core-vm', stateDir }), undefined);
    vm = undefined;
  });

  it('reports a QEMU that dies at start with its log, and leaves no process', async () => {
    const bad = { ...plan, argv: [...plan.argv, '-device', '{"driver":"no-such-device","id":"x"}'] };
    await assert.rejects(VmController.start({ name: 'bad', stateDir }, bad, sandbox(), launch(bad)), (e: unknown) => e instanceof FailedPrecondition && /no-such-device/.test(e.message));
    assert.equal((await fs.readFile(path.join(sb.cgroupDirs[0]!, 'cgroup.procs'), 'utf8')).trim(), '');
  });

  it('times out an unplug the guest never acknowledges (device stays)', async function () {
    vm = await VmController.start({ name: 'core-vm', stateDir }, plan, sandbox(), launch(plan));
    pids.add(vm.qemuPid);
    // SeaBIOS leaves cold-plugged root port slots powered with the indicator on: unplug needs the guest.
    await assert.rejects(vm.unplugDisk('boot', 300), (e: unknown) => e instanceof DeadlineExceeded && /did not release disk-boot/.test(e.message));
    assert.ok(vm.topology.devices.some((d) => d.key === 'disk:boot'));
    await vm.kill();
    vm = undefined;
  });
});

describe('agent-core: VmController phases from QEMU events (real QEMU, TCG)', function () {
  this.timeout(60_000);
  let sb: CoreSandbox;
  let plan: VmPlan;
  let vm: VmController | undefined;
  const stateDir = () => path.join(sb.dir, 'state');

  before(async () => {
    sb = await makeSandbox([0, 1]);
    const spec = validateVmSpec({ cpus: 1, memory: '64Mi', accel: 'tcg', kernel: '/nonexistent', hotplugPorts: 0 });
    plan = planVm(spec, {
      vmName: 'phase-vm',
      cpuset: [1],
      numa: await readNumaFacts(),
      volumes: {},
      kvmUsable: false,
      machineAliases: await qemuMachineAliases(),
      runDir: path.join(sb.dir, 'run'),
    });
    // no guest kernel: QEMU sits in SeaBIOS
    plan = { ...plan, argv: plan.argv.filter((a, i, all) => a !== '-kernel' && all[i - 1] !== '-kernel') };
  });
  afterEach(async () => {
    if (vm) await vm.kill().catch(() => {});
    vm = undefined;
  });
  after(async () => sb?.dispose());

  const start = () => VmController.start({ name: 'phase-vm', stateDir: stateDir() }, plan, { cgroupDirs: sb.cgroupDirs, netns: sb.netnsPath, uid: QEMU_UID, gid: QEMU_GID });

  it('a guest panic (pvpanic) turns the phase to Failed with the reason kept through exit', async () => {
    vm = await start();
    const exit = new Promise<{ phase: string; reason: string }>((r) => vm!.once('exit', r));
    const panicked = vm.qmp.waitEvent('GUEST_PANICKED', { timeoutMs: 5000 });
    // what a panicking Linux guest does: write 1 to the pvpanic I/O port
    await vm.qmp.execute('human-monitor-command', { 'command-line': 'o 0x505 1' });
    // QEMU 7.2's default panic action is poweroff: QEMU exits and the pod would fail
    assert.equal((await panicked.promise).data.action, 'poweroff');
    const e = await exit;
    assert.equal(e.phase, 'Failed');
    assert.equal(e.reason, 'GUEST_PANICKED (poweroff)');
    assert.equal((await vm.status()).phase, 'Failed');
    assert.equal(await vm.isOurQemu(), false);
    vm = undefined;
  });

  it('a host quit ends in Stopped; QEMU killed from outside ends in Failed', async () => {
    vm = await start();
    let exit = new Promise<{ phase: string; reason: string }>((r) => vm!.once('exit', r));
    await vm.qmp.execute('quit').catch(() => {});
    let e = await exit;
    assert.equal(e.phase, 'Stopped');
    assert.match(e.reason, /SHUTDOWN \(host-qmp-quit\)/);
    assert.equal((await vm.status()).phase, 'Stopped');
    await vm.kill(); // idempotent cleanup of a gone VM
    vm = await start();
    exit = new Promise<{ phase: string; reason: string }>((r) => vm!.once('exit', r));
    process.kill(vm.qemuPid, 'SIGKILL');
    e = await exit;
    assert.equal(e.phase, 'Failed');
    assert.match(e.reason, /QEMU exited unexpectedly/);
  });
});

describe('agent-core: in-cluster launch into an existing pod’s namespaces (real pid/net/mount namespaces)', function () {
  this.timeout(60_000);
  let sb: CoreSandbox;
  let plan: VmPlan;
  let vm: VmController | undefined;
  let pod: ReturnType<typeof spawn> | undefined;
  let podInit = 0;

  before(async () => {
    sb = await makeSandbox([0, 1]);
    // the "pod": its own pid, net and mount namespaces, held by a sleeping init
    pod = spawn('unshare', ['--pid', '--fork', '--mount-proc', '--net', '--kill-child', '--', 'sleep', '600'], { stdio: 'ignore' });
    podInit = await waitFor(
      async () => {
        const kids = (await fs.readFile(`/proc/${pod!.pid}/task/${pod!.pid}/children`, 'utf8').catch(() => '')).trim();
        return kids ? Number(kids.split(/\s+/)[0]) : undefined;
      },
      { timeoutMs: 5000, what: 'pod init' },
    );
    const spec = validateVmSpec({ cpus: 2, memory: '64Mi', accel: 'tcg', kernel: '/nonexistent', hotplugPorts: 1 });
    const p = planVm(spec, { vmName: 'pod-vm', cpuset: [0, 1], numa: await readNumaFacts(), volumes: {}, kvmUsable: false, machineAliases: await qemuMachineAliases(), runDir: path.join(sb.dir, 'run') });
    plan = { ...p, argv: p.argv.filter((a, i, all) => a !== '-kernel' && all[i - 1] !== '-kernel') };
  });
  after(async () => {
    if (vm) await vm.kill().catch(() => {});
    if (podInit) process.kill(podInit, 'SIGKILL');
    pod?.kill('SIGKILL');
    await sb?.dispose();
  });

  it('runs QEMU inside the pod (pid, net, mount namespaces and cgroup), finds its host pid, pins it, kills it', async () => {
    vm = await VmController.start({ name: 'pod-vm', stateDir: path.join(sb.dir, 'state') }, plan, { cgroupDirs: sb.cgroupDirs, uid: QEMU_UID, gid: QEMU_GID }, { inPod: { targetPid: podInit } });
    const pid = vm.qemuPid;
    const st = await procStatus(pid);
    assert.equal(st.Name, 'qemu-system-x86');
    assert.equal(st.NSpid!.split(/\s+/).length, 2, 'QEMU lives in a nested pid namespace');
    assert.equal(st.Uid!.split(/\s+/)[0], String(QEMU_UID));
    assert.equal(st.CapEff, '0000000000000000');
    for (const ns of ['pid', 'net', 'mnt', 'ipc', 'uts']) {
      assert.equal(await fs.readlink(`/proc/${pid}/ns/${ns}`), await fs.readlink(`/proc/${podInit}/ns/${ns}`), `${ns} namespace`);
    }
    assert.match(await fs.readFile(`/proc/${pid}/cgroup`, 'utf8'), new RegExp(`:cpuset:/${sb.id}\\n`));
    // re-parented to the pod's init: no launcher of ours is left
    assert.equal(Number(st.PPid), podInit);
    const s = await vm.status();
    assert.equal(s.phase, 'Running');
    assert.deepEqual(s.vcpuThreads.map((t) => t.cpus), [[0], [1]]);
    assert.ok(s.vcpuThreads.every((t) => t.tid !== pid && alive(t.tid)));
    await vm.kill();
    assert.equal(alive(pid), false);
    vm = undefined;
  });
});

describe('agent-core: isolateEmulatorThread on real QEMU threads', function () {
  this.timeout(60_000);
  let sb: CoreSandbox;
  let vm: VmController | undefined;
  before(async () => {
    sb = await makeSandbox([0, 1]);
  });
  after(async () => {
    if (vm) await vm.kill().catch(() => {});
    await sb?.dispose();
  });

  it('puts the vCPU on one CPU and every other QEMU thread on the other', async () => {
    const spec = validateVmSpec({ cpus: 1, memory: '64Mi', accel: 'tcg', kernel: '/nonexistent', hotplugPorts: 1, isolateEmulatorThread: true });
    const p = planVm(spec, { vmName: 'iso', cpuset: [0, 1], numa: await readNumaFacts(), volumes: {}, kvmUsable: false, machineAliases: await qemuMachineAliases(), runDir: path.join(sb.dir, 'run') });
    assert.deepEqual([p.pins.vcpus[0]!.cpu, p.pins.emulator], [0, [1]]);
    const plan = { ...p, argv: p.argv.filter((a, i, all) => a !== '-kernel' && all[i - 1] !== '-kernel') };
    vm = await VmController.start({ name: 'iso', stateDir: path.join(sb.dir, 'state') }, plan, { cgroupDirs: sb.cgroupDirs, netns: sb.netnsPath, uid: QEMU_UID, gid: QEMU_GID });
    const r = await vm.repin();
    assert.deepEqual(r.vcpuThreads.map((t) => t.cpus), [[0]]);
    assert.ok(r.otherThreads.length >= 2, 'main loop and helper threads');
    for (const t of r.otherThreads) assert.deepEqual(parseCpuList((await procStatus(t.tid)).Cpus_allowed_list!), [1], `${t.comm} (${t.tid})`);
    // a thread QEMU creates later inherits the emulator mask: hotplug a disk (spawns block worker threads)
    await fs.writeFile(path.join(sb.dir, 'x.img'), Buffer.alloc(1 << 20));
    await fs.chown(path.join(sb.dir, 'x.img'), QEMU_UID, QEMU_GID);
    await vm.hotplugDisk({ name: 'x', file: path.join(sb.dir, 'x.img'), block: false });
    const after = await vm.status();
    assert.deepEqual(after.vcpuThreads.map((t) => t.cpus), [[0]]);
    assert.deepEqual((await checkPins(vm.qmp, vm.qemuPid, vm.pins)).drift, []);
    await vm.kill();
    vm = undefined;
  });
});
