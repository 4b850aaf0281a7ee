/**
 * Cluster mode launches QEMU *inside* the pod: a kubelet-like sandbox with its own pid and mount
 * namespaces (a tmpfs "emptyDir" and a block volume device node at its devicePath that the host
 * does not see), and the cluster runtime (VmCoreRuntime) starting a real TCG guest in it.
 */
import { strict as assert } from 'node:assert';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, promises as fs, readlinkSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { V1Pod } from '@kubernetes/client-node';
import { exec, execText } from '../../lib/exec.js';
import { createLogger } from '../../lib/log.js';
import { PROJECT_ROOT } from '../../lib/project-root.js';
import { discoverPodSandbox } from '../../agent/kube/pod-discovery.js';
import { VmCoreRuntime } from '../../agent/kube/vm-core-runtime.js';
import type { VmReport, VmTarget } from '../../agent/kube/vm-runtime.js';
import { createKubeletSandbox, type KubeletSandbox } from '../kube/kubelet-sandbox.js';
import { skipBecause } from '../helpers/skip.js';
import { typeLine } from '../helpers/serial.js';

const log = createLogger('test-in-pod', process.env.PODVIRT_TEST_LOG ?? 'silent');
const guest = path.join(PROJECT_ROOT, '.cache', 'guest');

const nsOf = (pid: number, ns: string) => readlinkSync(`/proc/${pid}/ns/${ns}`);
const statusField = async (pid: number, field: string) => new RegExp(`^${field}:\\s*(.*)$`, 'm').exec(await fs.readFile(`/proc/${pid}/status`, 'utf8'))?.[1]?.trim();


async function waitLog(file: string, re: RegExp, timeoutMs = 60_000): Promise<RegExpMatchArray> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const m = (await fs.readFile(file, 'utf8').catch(() => '')).match(re);
    if (m) return m;
    if (Date.now() > end) throw new Error(`timed out waiting for ${re} in ${file}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

describe('agent-core: QEMU inside the pod (cluster mode)', function () {
  this.timeout(120_000);
  const tag = `pvt-ac-${randomBytes(3).toString('hex')}`;
  let tmp = '';
  let loop = '';
  let sb: KubeletSandbox | undefined;
  let runtime: VmCoreRuntime | undefined;
  const key = `default/${tag}`;

  after(async () => {
    await runtime?.stop(key, 2000).catch(() => undefined);
    await sb?.destroy();
    if (loop) await exec('losetup', ['-d', loop]).catch(() => undefined);
    if (tmp) await fs.rm(tmp, { recursive: true, force: true });
  });

  it('QEMU shares every namespace of the pod, runs as its uid with no capabilities, boots, and uses the volume device at its devicePath', async function () {
    if (!existsSync(path.join(guest, 'vmlinuz'))) skipBecause(this, 'test guest not built (hack/setup.d/20-test-guest.sh)');
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'pvt-ac-inpod-'));
    await fs.chmod(tmp, 0o755);
    // The block volume: a loop device over a file holding a marker in its first sector.
    const backing = path.join(tmp, 'volume.raw');
    await fs.writeFile(backing, Buffer.concat([Buffer.from(`PVPAT:host-${tag}:END\n`), Buffer.alloc(512 - `PVPAT:host-${tag}:END\n`.length)]));
    await fs.truncate(backing, 8 * 2 ** 20);
    loop = await execText('losetup', ['--find', '--show', backing]);
    const devicePath = path.join(tmp, 'pod-dev', 'data');
    const podRunDir = path.join(tmp, 'pod-run');
    const uid = randomUUID();
    sb = await createKubeletSandbox(tag, { uid, pod: { emptyDirs: [podRunDir], devices: [{ devicePath, hostDevice: loop }] } });
    assert.equal(existsSync(devicePath), false, 'the volume device exists only in the pod');
    assert.equal((await statusField(sb.pid, 'NSpid'))?.split(/\s+/).at(-1), '1', 'the container process is pid 1 of its own pid namespace');

    runtime = new VmCoreRuntime({ stateDir: path.join(tmp, 'state'), runDir: path.join(tmp, 'node-run'), podRunDir, log });
    const pod: V1Pod = {
      metadata: {
        name: tag,
        namespace: 'default',
        uid,
        annotations: {
          'vm.podvirt.io/spec': `cpus: 1\nmemory: 128Mi\naccel: tcg\nkernel: ${guest}/vmlinuz\ninitrd: ${guest}/initramfs.cpio.gz\ncmdline: console=ttyS0 podvirt.nodhcp=1\ndisks:\n  - {name: data, volume: data}\n`,
        },
      },
      spec: {
        containers: [{ name: 'compute', image: 'example.org/launcher:dev', volumeDevices: [{ name: 'data', devicePath }] }],
        volumes: [{ name: 'data', persistentVolumeClaim: { claimName: 'data' } }],
      },
    };
    const sandbox = await discoverPodSandbox(uid, sb.containerId, { layout: sb.layout });
    assert.equal(sandbox.pid, sb.pid);
    const target: VmTarget = { key, pod, specText: pod.metadata!.annotations!['vm.podvirt.io/spec']!, sandbox, topology: undefined };
    const report: VmReport = await runtime.start(target);
    const qemu = report.qemuPid;

    for (const ns of ['mnt', 'pid', 'net', 'ipc', 'uts', 'cgroup']) assert.equal(nsOf(qemu, ns), nsOf(sb.pid, ns), `QEMU in the pod's ${ns} namespace`);
    assert.notEqual(nsOf(qemu, 'mnt'), nsOf(process.pid, 'mnt'));
    assert.match((await statusField(qemu, 'Uid'))!, /^107\s+107\s+107\s+107$/, 'QEMU runs as the pod uid');
    assert.match((await statusField(qemu, 'Gid'))!, /^107\s+107\s+107\s+107$/);
    assert.equal(await statusField(qemu, 'CapEff'), '0000000000000000', 'no effective capabilities');
    assert.equal(await statusField(qemu, 'CapBnd'), '0000000000000000', 'none to regain either');
    assert.equal(await statusField(qemu, 'NoNewPrivs'), '1');
    const cg = await fs.readFile(`/proc/${qemu}/cgroup`, 'utf8');
    assert.ok(cg.includes(`/pod${uid}/${sb.containerId}`), `QEMU in the container cgroup: ${cg}`);
    for (const d of sb.containerDirs) assert.ok((await fs.readFile(path.join(d, 'cgroup.procs'), 'utf8')).split('\n').includes(String(qemu)), `QEMU in ${d}`);
    // Re-parented to the pod's init once the launcher's shell left: nothing of podvirt stays resident.
    assert.equal(await statusField(qemu, 'PPid'), String(sb.pid));
    const cmdline = (await fs.readFile(`/proc/${qemu}/cmdline`, 'utf8')).split('\0');
    assert.ok(cmdline.some((a) => a.includes(JSON.stringify(devicePath))), 'the disk is opened at its devicePath, as the pod sees it');
    // Its sockets are in the pod's emptyDir, reached through QEMU's root.
    assert.ok(report.qmpSocket?.startsWith(`/proc/${qemu}/root${podRunDir}/`), report.qmpSocket);
    assert.equal(existsSync(path.join(podRunDir, 'vms', uid, 'qmp.sock')), false, 'not on the host');

    await waitLog(report.serialLog!, /PODVIRT-GUEST-READY/);
    await typeLine(report.consoleSocket!, `diskpattern read /dev/vda; diskpattern write /dev/vda guest-${tag}`);
    assert.equal((await waitLog(report.serialLog!, /PODVIRT-DISK-READ \/dev\/vda (\S+)/))[1], `host-${tag}`, 'the guest reads what the host wrote');
    await waitLog(report.serialLog!, /PODVIRT-DISK-WRITTEN/);
    const fh = await fs.open(backing, 'r');
    const sector = Buffer.alloc(512);
    await fh.read(sector, 0, 512, 0).finally(() => fh.close());
    assert.match(sector.toString('latin1'), new RegExp(`^PVPAT:guest-${tag}:END`), 'the host sees what the guest wrote');

    // A restarted agent re-adopts the in-pod QEMU through its recorded state.
    await runtime.detachAll();
    runtime = new VmCoreRuntime({ stateDir: path.join(tmp, 'state'), runDir: path.join(tmp, 'node-run'), podRunDir, log });
    const adopted = await runtime.adopt(target);
    assert.equal(adopted?.qemuPid, qemu);
    assert.equal(adopted?.phase, 'Running');
    assert.equal(adopted?.vcpuThreads.length, 1);

    await runtime.stop(key, 1000);
    assert.equal(existsSync(`/proc/${qemu}/root`) && (await statusField(qemu, 'State'))?.startsWith('Z') !== true, false, 'QEMU gone');
    assert.equal(existsSync(`/proc/${sb.pid}/root${podRunDir}/vms/${uid}`), false, "QEMU's run dir removed from the pod");
    assert.equal(existsSync(path.join(tmp, 'node-run', 'vms', uid)), false);
  });
});
