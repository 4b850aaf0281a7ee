/** Pure parts of the cluster agent: cgroup discovery parsing, node labels, metric parsers, CNI install. */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { cgroupPathsFor, choosePodProcess, matchPodCgroup, parseProcCgroup, runtimeIdOf } from '../../agent/kube/pod-discovery.js';
import { isValidLabelKey, isValidLabelValue, labelPatch, labelValue, planNodeLabels, gatherNodeFacts } from '../../agent/kube/node-labels.js';
import { allocatedDevices, cpuSecondsFromStat, parseNetDev } from '../../agent/kube/metrics.js';
import { installCniPlugin } from '../../agent/kube/cni-install.js';
import { computeContainerId, endedBefore, wantsVm } from '../../agent/kube/reconciler.js';
import { parseListenAddr } from '../../agent/kube/health-server.js';

const UID = '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0';
const CID = 'ab'.repeat(32);

describe('cluster agent: pod cgroup discovery (pure)', () => {
  const cases: Array<{ name: string; path: string; uid?: string; cid?: string; podPath?: string }> = [
    { name: 'cgroupfs driver', path: `/kubepods/besteffort/pod${UID}/${CID}`, uid: UID, cid: CID, podPath: `/kubepods/besteffort/pod${UID}` },
    { name: 'cgroupfs guaranteed', path: `/kubepods/pod${UID}/${CID}`, uid: UID, cid: CID },
    {
      name: 'systemd driver',
      path: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${UID.replace(/-/g, '_')}.slice/cri-containerd-${CID}.scope`,
      uid: UID,
      cid: CID,
    },
    { name: 'crio scope', path: `/kubepods.slice/kubepods-pod${UID.replace(/-/g, '_')}.slice/crio-${CID}.scope`, uid: UID, cid: CID },
    { name: 'pod level only', path: `/kubepods/pod${UID}`, uid: UID },
    { name: 'not a pod', path: '/system.slice/ssh.service' },
    { name: 'uid-like but wrong shape', path: '/kubepods/podnot-a-uid/x' },
  ];
  for (const tc of cases) {
    it(tc.name, () => {
      const m = matchPodCgroup(tc.path);
      assert.equal(m?.podUid, tc.uid);
      assert.equal(m?.containerId, tc.cid);
      if (tc.podPath) assert.equal(m?.podPath, tc.podPath);
    });
  }

  it('maps a process to its container groups on v1 and v2', () => {
    const lines = parseProcCgroup(`12:memory:/kubepods/pod${UID}/${CID}\n5:cpuset:/kubepods/pod${UID}/${CID}\n0::/\n`);
    const v1 = cgroupPathsFor({ version: 1, cpuset: '/sys/fs/cgroup/cpuset', memory: '/sys/fs/cgroup/memory' }, lines);
    assert.deepEqual(v1.paths.procs, [`/sys/fs/cgroup/cpuset/kubepods/pod${UID}/${CID}`, `/sys/fs/cgroup/memory/kubepods/pod${UID}/${CID}`]);
    assert.equal(v1.podCgroup, `/sys/fs/cgroup/cpuset/kubepods/pod${UID}`);
    const v2 = cgroupPathsFor({ version: 2, root: '/sys/fs/cgroup' }, parseProcCgroup(`0::/kubepods.slice/kubepods-pod${UID.replace(/-/g, '_')}.slice/cri-containerd-${CID}.scope\n`));
    assert.equal(v2.paths.cpusFile, `/sys/fs/cgroup/kubepods.slice/kubepods-pod${UID.replace(/-/g, '_')}.slice/cri-containerd-${CID}.scope/cpuset.cpus.effective`);
  });

  it('chooses the wanted container by runtime ID, else the lowest PID', () => {
    const procs = [
      { pid: 10, containerId: 'aaaa'.repeat(16), lines: [] },
      { pid: 20, containerId: CID, lines: [] },
    ];
    assert.equal(choosePodProcess(procs, CID)?.pid, 20);
    assert.equal(choosePodProcess(procs, undefined)?.pid, 10);
    assert.equal(choosePodProcess(procs, 'ff'.repeat(32)), undefined);
    assert.equal(runtimeIdOf(`containerd://${CID}`), CID);
  });

  it('decides which pods want a VM and which container hosts it', () => {
    const base = { metadata: { uid: UID, annotations: { 'vm.podvirt.io/spec': 'cpus: 1' } }, spec: { nodeName: 'n1', containers: [{ name: 'side', image: 'x' }, { name: 'compute', image: 'x' }] } };
    assert.equal(wantsVm(base, 'n1'), true);
    assert.equal(wantsVm(base, 'n2'), false);
    assert.equal(wantsVm({ ...base, metadata: { ...base.metadata, deletionTimestamp: new Date() } }, 'n1'), false);
    assert.equal(wantsVm({ ...base, status: { phase: 'Succeeded' } }, 'n1'), false);
    assert.equal(wantsVm({ ...base, metadata: { uid: UID } }, 'n1'), false);
    const running = { ...base, status: { containerStatuses: [{ name: 'compute', containerID: `containerd://${CID}`, state: { running: {} }, ready: true, restartCount: 0, image: 'x', imageID: 'x' }] } };
    assert.equal(computeContainerId(running), CID);
    assert.equal(computeContainerId(base), undefined);
  });

  it('knows from the pod when a VM ended for good (no restart) or may be started again', () => {
    assert.deepEqual(endedBefore(JSON.stringify({ phase: 'Migrated', target: 'x' })), { phase: 'Migrated' });
    assert.deepEqual(endedBefore(JSON.stringify({ phase: 'Failed', reason: 'QEMU exited' })), { phase: 'Failed', reason: 'QEMU exited' });
    assert.equal(endedBefore(JSON.stringify({ phase: 'Failed', reason: 'StartFailed' })), undefined);
    assert.equal(endedBefore(JSON.stringify({ phase: 'Running', qemuPid: 1 })), undefined);
    assert.equal(endedBefore('not json'), undefined);
    assert.equal(endedBefore(undefined), undefined);
  });
});

describe('cluster agent: node labels', () => {
  it('sanitises values to label syntax', () => {
    for (const [input, want] of [
      ['AMD EPYC 7763 64-Core Processor', 'AMD-EPYC-7763-64-Core-Processor'],
      ['Intel(R) Xeon(R) Gold 6338 @ 2.00GHz', 'Intel-R-Xeon-R-Gold-6338-2.00GHz'],
      ['--weird--', 'weird'],
      ['x'.repeat(70) + '-y', 'x'.repeat(63)],
      ['', ''],
    ]) {
      assert.equal(labelValue(input!), want);
      assert.ok(isValidLabelValue(labelValue(input!)));
    }
  });

  it('plans KVM, CPU, NUMA, hugepage and version labels, and removes stale owned ones', () => {
    const labels = planNodeLabels({
      kvmUsable: true,
      cpuVendor: 'GenuineIntel',
      cpuModel: 'Intel(R) Xeon(R) CPU',
      cpuFamily: '6',
      cpuFlags: ['vmx', 'avx2', 'sse4_2', 'not_curated_flag'],
      numaNodes: 2,
      hugepages2Mi: 512,
      hugepages1Gi: 0,
      version: '0.1.0',
    });
    assert.equal(labels['podvirt.io/kvm'], 'true');
    assert.equal(labels['cpu.podvirt.io/model'], 'Intel-R-Xeon-R-CPU');
    assert.equal(labels['cpu-feature.podvirt.io/vmx'], 'true');
    assert.equal(labels['cpu-feature.podvirt.io/sse4_2'], 'true');
    assert.equal(labels['cpu-feature.podvirt.io/not_curated_flag'], undefined);
    assert.equal(labels['podvirt.io/numa-nodes'], '2');
    assert.equal(labels['podvirt.io/hugepages-2Mi'], '512');
    for (const [k, v] of Object.entries(labels)) {
      assert.ok(isValidLabelKey(k), k);
      assert.ok(isValidLabelValue(v), `${k}=${v}`);
    }
    const patch = labelPatch({ 'cpu-feature.podvirt.io/svm': 'true', 'podvirt.io/kvm': 'true', 'kubernetes.io/hostname': 'n1', 'podvirt.io/enabled': 'true' }, labels);
    assert.equal('podvirt.io/enabled' in patch, false, "an operator's podvirt.io label is not ours to remove");
    assert.equal(patch['cpu-feature.podvirt.io/svm'], null);
    assert.equal('podvirt.io/kvm' in patch, false, 'unchanged labels are not re-sent');
    assert.equal('kubernetes.io/hostname' in patch, false, 'foreign labels untouched');
  });

  it('reads facts from fake sysfs and dev trees', async () => {
    const root = await fs.mkdtemp(path.join(os.tmpdir(), 'pvt-kube-facts-'));
    try {
      await fs.mkdir(path.join(root, 'sys/devices/system/node/node0'), { recursive: true });
      await fs.mkdir(path.join(root, 'sys/devices/system/node/node1'), { recursive: true });
      await fs.mkdir(path.join(root, 'sys/kernel/mm/hugepages/hugepages-2048kB'), { recursive: true });
      await fs.writeFile(path.join(root, 'sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages'), '128\n');
      await fs.mkdir(path.join(root, 'dev'));
      const f = await gatherNodeFacts('0.1.0', { sysRoot: path.join(root, 'sys'), devRoot: path.join(root, 'dev') });
      assert.equal(f.kvmUsable, false, 'no kvm node in the fake /dev');
      assert.equal(f.numaNodes, 2);
      assert.equal(f.hugepages2Mi, 128);
      assert.equal(f.hugepages1Gi, 0);
      assert.ok(f.cpuFlags.length > 0, 'CPU flags from systeminformation');
    } finally {
      await fs.rm(root, { recursive: true, force: true });
    }
  });
});

describe('cluster agent: metric parsers', () => {
  it('reads utime+stime from a stat line whose comm has spaces and parens', () => {
    const stat = '4242 (CPU 0/KVM) (x) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 1 0';
    assert.equal(cpuSecondsFromStat(stat), 4);
  });
  it('parses /proc/net/dev', () => {
    const text = `Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0
  tap0:    5000      50    0    0    0     0          0         0     7000      70    0    0    0     0       0          0
`;
    assert.deepEqual(parseNetDev(text)[1], { iface: 'tap0', rxBytes: 5000, rxPackets: 50, txBytes: 7000, txPackets: 70 });
  });
  it('sums device resources of live pods', () => {
    const m = allocatedDevices([
      { spec: { containers: [{ name: 'c', resources: { limits: { 'devices.kubevirt.io/kvm': '1', cpu: '2' } } }] } },
      { spec: { containers: [{ name: 'c', resources: { limits: { 'devices.kubevirt.io/kvm': '1', 'devices.kubevirt.io/tun': '1' } } }] } },
      { spec: { containers: [{ name: 'c', resources: { limits: { 'devices.kubevirt.io/kvm': '1' } } }] }, status: { phase: 'Succeeded' } },
    ]);
    assert.deepEqual([...m.entries()].sort(), [['devices.kubevirt.io/kvm', 2], ['devices.kubevirt.io/tun', 1]]);
  });
  it('parses listen addresses', () => {
    assert.deepEqual(parseListenAddr(':9477'), { host: undefined, port: 9477 });
    assert.deepEqual(parseListenAddr('127.0.0.1:0'), { host: '127.0.0.1', port: 0 });
    assert.throws(() => parseListenAddr('nope'));
  });
});

describe('cluster agent: CNI install', () => {
  it('copies shim and bundle atomically, executable, and skips unchanged files', async () => {
    const root = await fs.mkdtemp(path.join(os.tmpdir(), 'pvt-kube-cni-'));
    try {
      const build = path.join(root, 'build');
      const bin = path.join(root, 'bin');
      await fs.mkdir(build);
      await fs.writeFile(path.join(build, 'podvirt-cni'), 'shim-v1');
      await fs.writeFile(path.join(build, 'podvirt-cni.cjs'), 'bundle-v1');
      assert.deepEqual((await installCniPlugin(build, bin)).map((p) => path.basename(p)), ['podvirt', 'podvirt-cni.cjs']);
      assert.equal(await fs.readFile(path.join(bin, 'podvirt'), 'utf8'), 'shim-v1');
      assert.equal((await fs.stat(path.join(bin, 'podvirt'))).mode & 0o777, 0o755);
      assert.deepEqual(await installCniPlugin(build, bin), []);
      await fs.writeFile(path.join(build, 'podvirt-cni'), 'shim-v2');
      assert.deepEqual((await installCniPlugin(build, bin)).map((p) => path.basename(p)), ['podvirt']);
      assert.deepEqual((await fs.readdir(bin)).sort(), ['podvirt', 'podvirt-cni.cjs'], 'no temp files left');
      await fs.rm(path.join(build, 'podvirt-cni.cjs'));
      await assert.rejects(installCniPlugin(build, bin), /missing/);
    } finally {
      await fs.rm(root, { recursive: true, force: true });
    }
  });
});
