import { strict as assert } from 'node:assert';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FailedPrecondition, InvalidArgument } from '../../lib/errors.js';
import { validateVmSpec, type VmSpecInput } from '../spec/vm-spec.js';
import { parseMachineHelp, readNumaFacts } from './host-facts.js';
import { planVm } from './plan.js';
import { pciPath } from './topology.js';
import type { PodFacts } from './types.js';

const spec = (over: Partial<VmSpecInput> = {}) => validateVmSpec({ cpus: 2, memory: '512Mi', accel: 'tcg', kernel: '/k/vmlinuz', initrd: '/k/initrd', cmdline: 'console=ttyS0', ...over });
const facts = (over: Partial<PodFacts> = {}): PodFacts => ({
  vmName: 'vm1',
  cpuset: [2, 3],
  numa: { cpuNode: { 0: 0, 1: 0, 2: 0, 3: 0 } },
  volumes: { rootvol: { kind: 'block', devicePath: '/dev/vm-root' }, data: { kind: 'filesystem', mountPath: '/data' } },
  taps: { net0: 'tap-a', net1: 'tap-b' },
  kvmUsable: false,
  machineAliases: { q35: 'pc-q35-7.2', 'pc-q35-7.2': 'pc-q35-7.2', 'pc-q35-7.1': 'pc-q35-7.1' },
  runDir: '/run/podvirt/vm1',
  ...over,
});
/** Values following each occurrence of `flag`. */
const opt = (argv: string[], flag: string) => argv.flatMap((a, i) => (a === flag ? [argv[i + 1]!] : []));
const devices = (argv: string[]) => opt(argv, '-device').map((d) => JSON.parse(d) as Record<string, unknown>);

const full = spec({
  disks: [
    { name: 'root', volume: 'rootvol', bootIndex: 1 },
    { name: 'scratch', volume: 'data', type: 'file', path: 'scratch.qcow2', format: 'qcow2', serial: 'SCR-1' },
  ],
  interfaces: [{ name: 'net0', network: 'br-a' }],
  kernel: undefined,
  initrd: undefined,
  cmdline: undefined,
});

describe('agent-core: VM plan', () => {
  it('builds a hardened argv with explicit addresses on every device', () => {
    const p = planVm(full, facts());
    const a = p.argv;
    assert.equal(a[0], 'qemu-system-x86_64');
    assert.deepEqual(opt(a, '-sandbox'), ['on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny']);
    for (const f of ['-nodefaults', '-no-user-config', '-S']) assert.ok(a.includes(f), f);
    assert.deepEqual(opt(a, '-display'), ['none']);
    assert.deepEqual(opt(a, '-qmp'), ['unix:/run/podvirt/vm1/qmp.sock,server=on,wait=off']);
    assert.match(opt(a, '-chardev')[0]!, /path=\/run\/podvirt\/vm1\/serial.sock,server=on,wait=off,logfile=\/run\/podvirt\/vm1\/serial.log/);
    assert.deepEqual(opt(a, '-machine'), ['pc-q35-7.2,usb=off,vmport=off,dump-guest-core=off']);
    assert.deepEqual(opt(a, '-accel'), ['tcg']);
    assert.deepEqual(opt(a, '-cpu'), ['max']);
    assert.ok(devices(a).some((d) => d.driver === 'pvpanic'));
    for (const d of devices(a).filter((x) => x.driver !== 'pvpanic')) assert.ok(d.bus !== undefined && (d.addr !== undefined || d['scsi-id'] !== undefined), `no address: ${JSON.stringify(d)}`);
    const byId = new Map(devices(a).map((d) => [d.id, d]));
    assert.equal(byId.get('disk-root')?.bootindex, 1);
    assert.equal(byId.get('disk-root')?.serial, 'root');
    assert.equal(byId.get('disk-scratch')?.serial, 'SCR-1');
    assert.match(String(byId.get('net-net0')?.mac), /^52:54:00(:[0-9a-f]{2}){3}$/);
    const blk = opt(a, '-blockdev').map((b) => JSON.parse(b) as Record<string, unknown>);
    assert.deepEqual(blk.map((b) => b.driver), ['host_device', 'raw', 'file', 'qcow2']);
    assert.equal(blk[0]!.filename, '/dev/vm-root');
    assert.deepEqual(blk[0]!.cache, { direct: true, 'no-flush': false });
    assert.equal(blk[2]!.filename, '/data/scratch.qcow2');
    assert.deepEqual(opt(a, '-netdev'), ['tap,id=netdev-net0,ifname=tap-a,script=no,downscript=no']);
    // 3 devices + 4 spare root ports, pcie.0 slots 2..8
    assert.equal(p.topology.rootPorts.length, 7);
    assert.equal(pciPath(p.topology, 'disk:root'), '00:02.0/00.0');
    assert.equal(pciPath(p.topology, 'nic:net0'), '00:04.0/00.0');
    assert.equal(p.topology.machine, 'pc-q35-7.2');
    assert.ok(!a.includes('-kernel'));
    assert.deepEqual(opt(a, '-boot'), ['strict=on']);
  });

  it('is deterministic: the same inputs give the same argv and MACs', () => {
    assert.deepEqual(planVm(full, facts()).argv, planVm(full, facts()).argv);
    const other = planVm(full, facts({ vmName: 'vm2' }));
    assert.notEqual(other.topology.devices.find((d) => d.key === 'nic:net0')!.mac, planVm(full, facts()).topology.devices.find((d) => d.key === 'nic:net0')!.mac);
  });

  it('pins vCPUs 1:1 and shares the cpuset with emulator threads by default', () => {
    const p = planVm(spec(), facts({ cpuset: [3, 2] }));
    assert.deepEqual(p.pins.vcpus.map((v) => [v.index, v.cpu]), [[0, 2], [1, 3]]);
    assert.deepEqual(p.pins.emulator, [2, 3]);
  });

  it('isolateEmulatorThread puts emulator threads on a CPU of their own, and needs one', () => {
    const p = planVm(spec({ isolateEmulatorThread: true }), facts({ cpuset: [2, 3, 4] }));
    assert.deepEqual(p.pins.vcpus.map((v) => v.cpu), [2, 3]);
    assert.deepEqual(p.pins.emulator, [4]);
    assert.throws(() => planVm(spec({ isolateEmulatorThread: true }), facts({ cpuset: [2, 3] })), (e: unknown) => e instanceof FailedPrecondition && /needs 3 \(2 vCPUs \+ 1 for the emulator thread\)/.test(e.message));
    assert.throws(() => planVm(spec({ cpus: 3 }), facts({ cpuset: [2, 3] })), /has 2 exclusive CPU\(s\) \(2,3\) but the VM needs 3/);
  });

  describe('NUMA from a fake sysfs tree', () => {
    let sys: string;
    before(async () => {
      sys = await fs.mkdtemp(path.join(os.tmpdir(), 'pvt-core-sys-'));
      const node = async (n: number, cpus: string, free2m: number, free1g: number) => {
        const d = path.join(sys, 'devices/system/node', `node${n}`);
        await fs.mkdir(path.join(d, 'hugepages/hugepages-2048kB'), { recursive: true });
        await fs.mkdir(path.join(d, 'hugepages/hugepages-1048576kB'), { recursive: true });
        await fs.writeFile(path.join(d, 'cpulist'), `${cpus}\n`);
        await fs.writeFile(path.join(d, 'hugepages/hugepages-2048kB/free_hugepages'), `${free2m}\n`);
        await fs.writeFile(path.join(d, 'hugepages/hugepages-1048576kB/free_hugepages'), `${free1g}\n`);
      };
      await node(0, '0-3', 512, 0);
      await node(1, '4-7', 100, 2);
      await fs.mkdir(path.join(sys, 'devices/system/node/possible'), { recursive: true }); // not a node dir: ignored
    });
    after(async () => fs.rm(sys, { recursive: true, force: true }));

    it('reads cpu→node and free hugepages', async () => {
      const n = await readNumaFacts(sys);
      assert.equal(n.cpuNode[3], 0);
      assert.equal(n.cpuNode[4], 1);
      assert.deepEqual(n.hugepagesFree, { 0: { '2Mi': 512, '1Gi': 0 }, 1: { '2Mi': 100, '1Gi': 2 } });
    });

    it('mirrors the host nodes of the cpuset in guest cells, memory bound to them', async () => {
      const numa = await readNumaFacts(sys);
      const p = planVm(spec({ cpus: 4, memory: '1Gi' }), facts({ cpuset: [6, 2, 3, 5], numa }));
      assert.deepEqual(p.pins.vcpus.map((v) => [v.index, v.cpu, v.node, v.cell]), [[0, 2, 0, 0], [1, 3, 0, 0], [2, 5, 1, 1], [3, 6, 1, 1]]);
      assert.deepEqual(p.topology.numaCells, [{ id: 0, vcpus: [0, 1], memoryBytes: 512 * 2 ** 20 }, { id: 1, vcpus: [2, 3], memoryBytes: 512 * 2 ** 20 }]);
      assert.deepEqual(opt(p.argv, '-object'), [
        'memory-backend-ram,id=mem0,size=536870912,host-nodes=0,policy=bind',
        'memory-backend-ram,id=mem1,size=536870912,host-nodes=1,policy=bind',
      ]);
      assert.deepEqual(opt(p.argv, '-numa'), ['node,nodeid=0,memdev=mem0', 'node,nodeid=1,memdev=mem1', 'cpu,node-id=0,socket-id=0', 'cpu,node-id=0,socket-id=1', 'cpu,node-id=1,socket-id=2', 'cpu,node-id=1,socket-id=3']);
      assert.deepEqual(opt(p.argv, '-smp'), ['4,sockets=4,cores=1,threads=1']);
    });

    it('splits memory by vCPU share on an asymmetric cpuset, aligned to the page size', async () => {
      const numa = await readNumaFacts(sys);
      const p = planVm(spec({ cpus: 3, memory: '600Mi' }), facts({ cpuset: [1, 2, 7], numa }));
      assert.deepEqual(p.topology.numaCells.map((c) => [c.vcpus, c.memoryBytes / 2 ** 20]), [[[0, 1], 400], [[2], 200]]);
    });

    it('backs cells with hugepages when asked, and fails clearly when a node lacks them', async () => {
      const numa = await readNumaFacts(sys);
      const p = planVm(spec({ cpus: 2, memory: '400Mi', hugepages: { pageSize: '2Mi' } }), facts({ cpuset: [0, 1], numa }));
      assert.deepEqual(opt(p.argv, '-object'), ['memory-backend-memfd,id=mem0,size=419430400,host-nodes=0,policy=bind,hugetlb=on,hugetlbsize=2M,prealloc=on']);
      assert.throws(() => planVm(spec({ cpus: 2, memory: '400Mi', hugepages: { pageSize: '2Mi' } }), facts({ cpuset: [4, 5], numa })), /needs 200 free 2Mi hugepages on host node\(s\) 1 but 100 are free/);
      assert.throws(
        () => planVm(spec({ cpus: 2, memory: '400Mi', hugepages: { pageSize: '2Mi' } }), facts({ cpuset: [4, 5], numa: { ...numa, hugepagesFree: { 1: { '2Mi': 10 } } } })),
        /cell 0 needs 200 free 2Mi hugepages on host node\(s\) 1 but 10 are free/,
      );
      const g = planVm(spec({ cpus: 1, memory: '2Gi', hugepages: { pageSize: '1Gi' } }), facts({ cpuset: [7], numa }));
      assert.match(opt(g.argv, '-object')[0]!, /hugetlbsize=1G/);
      assert.throws(() => planVm(spec({ cpus: 1, memory: '3Gi', hugepages: { pageSize: '1Gi' } }), facts({ cpuset: [7], numa })), /needs 3 free 1Gi hugepages/);
    });

    it('binds a cell spanning nodes to all of them', async () => {
      const numa = await readNumaFacts(sys);
      const p = planVm(spec({ cpus: 2 }), facts({ cpuset: [3, 4], numa, topology: undefined }));
      assert.equal(p.topology.numaCells.length, 2);
      // replay with one stored cell of both vCPUs: memory bound to both nodes
      const stored = { ...planVm(spec({ cpus: 2 }), facts()).topology };
      const r = planVm(spec({ cpus: 2 }), facts({ cpuset: [3, 4], numa, topology: stored }));
      assert.deepEqual(r.topology.numaCells, stored.numaCells);
      assert.deepEqual(opt(r.argv, '-object'), ['memory-backend-ram,id=mem0,size=536870912,host-nodes=0-1,policy=bind']);
    });
  });

  describe('SMT from a fake sysfs tree (whole cores become guest threads)', () => {
    let sys: string;
    before(async () => {
      sys = await fs.mkdtemp(path.join(os.tmpdir(), 'pvt-core-smt-'));
      await fs.mkdir(path.join(sys, 'devices/system/node/node0'), { recursive: true });
      await fs.writeFile(path.join(sys, 'devices/system/node/node0/cpulist'), '0-3\n');
      // two cores with two threads each: {0,2} and {1,3}
      for (const [cpu, sib] of [[0, '0,2'], [1, '1,3'], [2, '0,2'], [3, '1,3']] as const) {
        await fs.mkdir(path.join(sys, `devices/system/cpu/cpu${cpu}/topology`), { recursive: true });
        await fs.writeFile(path.join(sys, `devices/system/cpu/cpu${cpu}/topology/thread_siblings_list`), `${sib}\n`);
      }
    });
    after(async () => fs.rm(sys, { recursive: true, force: true }));

    it('reads siblings and maps guest sibling threads onto host sibling threads', async () => {
      const numa = await readNumaFacts(sys);
      assert.deepEqual(numa.siblings, { 0: [0, 2], 1: [1, 3], 2: [0, 2], 3: [1, 3] });
      const p = planVm(spec({ cpus: 4 }), facts({ cpuset: [0, 1, 2, 3], numa }));
      assert.deepEqual(p.pins.vcpus.map((v) => v.cpu), [0, 2, 1, 3]);
      assert.equal(p.topology.threadsPerCore, 2);
      assert.deepEqual(opt(p.argv, '-smp'), ['4,sockets=2,cores=1,threads=2']);
      assert.deepEqual(opt(p.argv, '-numa').filter((n) => n.startsWith('cpu')), ['cpu,node-id=0,socket-id=0', 'cpu,node-id=0,socket-id=1']);
      // replayed as stored even where the new cpuset has no SMT
      const r = planVm(spec({ cpus: 4 }), facts({ cpuset: [4, 5, 6, 7], numa: { cpuNode: {} }, topology: p.topology }));
      assert.deepEqual(opt(r.argv, '-smp'), ['4,sockets=2,cores=1,threads=2']);
    });

    it('a whole core for the vCPUs, the odd CPU for the emulator; a split core stays threads=1', async () => {
      const numa = await readNumaFacts(sys);
      const p = planVm(spec({ cpus: 2, isolateEmulatorThread: true }), facts({ cpuset: [0, 1, 2], numa }));
      assert.deepEqual([p.pins.vcpus.map((v) => v.cpu), p.pins.emulator, p.topology.threadsPerCore], [[0, 2], [1], 2]);
      const q = planVm(spec({ cpus: 3 }), facts({ cpuset: [0, 1, 2], numa }));
      assert.equal(q.topology.threadsPerCore, undefined);
      assert.deepEqual(opt(q.argv, '-smp'), ['3,sockets=3,cores=1,threads=1']);
    });
  });

  describe('topology replay (backpropagation)', () => {
    it('replays the stored topology exactly, even when QEMU offers a newer machine', () => {
      const first = planVm(full, facts());
      const stored = JSON.parse(JSON.stringify(first.topology)) as unknown;
      const again = planVm(full, facts({ topology: stored, machineAliases: { q35: 'pc-q35-8.2', 'pc-q35-8.2': 'pc-q35-8.2', 'pc-q35-7.2': 'pc-q35-7.2' } }));
      assert.deepEqual(again.topology, first.topology);
      assert.deepEqual(again.argv, first.argv);
    });

    it('keeps every address when devices are added or removed, new ones take free ports', () => {
      const first = planVm(full, facts());
      const grown = spec({
        ...full,
        memory: '512Mi',
        disks: [{ name: 'extra', volume: 'data', type: 'file', path: 'x.img' }, ...full.disks.map((d) => ({ ...d }))],
        interfaces: [{ name: 'net1', network: 'br-b' }, { name: 'net0', network: 'br-a' }],
      });
      const p = planVm(grown, facts({ topology: first.topology }));
      for (const key of ['disk:root', 'disk:scratch', 'nic:net0']) assert.equal(pciPath(p.topology, key), pciPath(first.topology, key), key);
      const used = new Set(first.topology.devices.map((d) => d.bus));
      assert.ok(!used.has(p.topology.devices.find((d) => d.key === 'disk:extra')!.bus));
      assert.equal(p.topology.devices.find((d) => d.key === 'nic:net0')!.mac, first.topology.devices.find((d) => d.key === 'nic:net0')!.mac);
      assert.ok(p.topology.rootPorts.length - p.topology.devices.length >= 4, 'spare ports kept');
      assert.ok(p.notes.some((n) => n.includes('disk:extra is new')));
      const shrunk = planVm(spec({ ...full, memory: '512Mi', disks: [{ name: 'root', volume: 'rootvol', bootIndex: 1 }], interfaces: [] }), facts({ topology: first.topology }));
      assert.equal(pciPath(shrunk.topology, 'disk:root'), pciPath(first.topology, 'disk:root'));
      assert.ok(shrunk.notes.some((n) => n.includes('nic:net0 is no longer in the spec')));
    });

    it('refuses a spec that contradicts the stored hardware, naming the field', () => {
      const first = planVm(full, facts());
      const t = first.topology;
      const change = (o: Partial<VmSpecInput>) => () => planVm(spec({ ...full, memory: '512Mi', ...o } as VmSpecInput), facts({ topology: t }));
      assert.throws(change({ interfaces: [{ name: 'net0', network: 'br-a', mac: '52:54:00:00:00:01' }] }), (e: unknown) => e instanceof FailedPrecondition && /spec.interfaces\[0\].mac: 52:54:00:00:00:01, but the VM has 52:54:00/.test(e.message));
      assert.throws(change({ machine: 'pc-q35-7.1' }), /spec.machine: pc-q35-7.1, but the VM was created as pc-q35-7.2/);
      assert.throws(change({ disks: [{ name: 'root', volume: 'rootvol', bootIndex: 1, bus: 'scsi' }] }), /spec.disks\[0\]: is scsi-hd now, but the VM has it as virtio-blk-pci/);
      assert.throws(change({ disks: [{ name: 'root', volume: 'rootvol', bootIndex: 1, serial: 'OTHER' }] }), /spec.disks\[0\].serial: OTHER, but the VM has root/);
      assert.throws(() => planVm(full, facts({ topology: { ...t, rootPorts: [...t.rootPorts, t.rootPorts[0]] } })), (e: unknown) => e instanceof InvalidArgument && /duplicate root port rp1/.test(e.message));
      assert.throws(() => planVm(full, facts({ topology: { version: 2 } })), /stored topology: topology.version/);
    });

    it('refuses cpu model host under TCG', () => {
      const kvm = planVm(spec({ accel: 'auto' }), facts({ kvmUsable: true }));
      assert.equal(kvm.accel, 'kvm');
      assert.equal(kvm.topology.cpuModel, 'host');
      assert.throws(() => planVm(spec({ accel: 'auto' }), facts({ kvmUsable: false, topology: kvm.topology })), /cpu model "host" needs KVM/);
    });
  });

  it('resolves accel: auto falls back to tcg, kvm without /dev/kvm fails', () => {
    assert.equal(planVm(spec({ accel: 'auto' }), facts()).accel, 'tcg');
    assert.throws(() => planVm(spec({ accel: 'kvm' }), facts()), /spec.accel: kvm, but \/dev\/kvm is not usable/);
  });

  it('adds VFIO host devices from the device plugin env, each on its own port', () => {
    const p = planVm(spec(), facts({ deviceEnv: { PCI_RESOURCE_NVIDIA_COM_GPU: '0000:65:00.0,0000:66:00.0', MDEV_PCI_RESOURCE_X: '3b8ad2a2-6a1e-4f7b-9b8a-0a2b3c4d5e6f', HOME: '/' } }));
    const vfio = devices(p.argv).filter((d) => d.driver === 'vfio-pci');
    assert.deepEqual(vfio.map((d) => d.host ?? d.sysfsdev), ['/sys/bus/mdev/devices/3b8ad2a2-6a1e-4f7b-9b8a-0a2b3c4d5e6f', '0000:65:00.0', '0000:66:00.0']);
    assert.equal(new Set(vfio.map((d) => d.bus)).size, 3);
    assert.throws(() => planVm(spec(), facts({ deviceEnv: { PCI_RESOURCE_X: 'nope' } })), /PCI_RESOURCE_X: "nope" is not a PCI address/);
  });

  it('names missing taps, passt sockets and too-long socket paths', () => {
    assert.throws(() => planVm(spec({ interfaces: [{ name: 'net9', network: 'x' }] }), facts()), /spec.interfaces\[0\]: no tap device for "net9"/);
    const passt = planVm(spec({ interfaces: [{ name: 'pod', network: 'pod', binding: 'passt' }] }), facts({ passtSockets: { pod: '/run/passt.sock' } }));
    assert.deepEqual(opt(passt.argv, '-netdev'), ['stream,id=netdev-pod,server=off,addr.type=unix,addr.path=/run/passt.sock']);
    assert.throws(() => planVm(spec(), facts({ runDir: '/' + 'x'.repeat(120) })), /run dir too long for a unix socket/);
    assert.throws(() => planVm(spec({ machine: 'pc-q35-9.9' }), facts()), /spec.machine: this QEMU has no machine type "pc-q35-9.9"/);
    const t = planVm(spec(), facts()).topology;
    assert.throws(() => planVm(spec(), facts({ topology: t, machineAliases: { q35: 'pc-q35-7.1', 'pc-q35-7.1': 'pc-q35-7.1' } })), /created as pc-q35-7.2, which this QEMU does not offer/);
  });

  it('adds -incoming defer for a migration target and no -S', () => {
    const p = planVm(spec(), facts(), { incoming: true });
    assert.deepEqual(opt(p.argv, '-incoming'), ['defer']);
    assert.ok(!p.argv.includes('-S'));
  });

  it('parses QEMU machine aliases', () => {
    const m = parseMachineHelp('Supported machines are:\nq35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)\npc-q35-7.2           Standard PC (Q35 + ICH9, 2009)\nnone                 empty machine\n');
    assert.equal(m.q35, 'pc-q35-7.2');
    assert.equal(m['pc-q35-7.2'], 'pc-q35-7.2');
  });
});
