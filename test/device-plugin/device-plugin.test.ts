import { strict as assert } from 'node:assert';
import { promises as fs, writeFileSync, renameSync } from 'node:fs';
import * as path from 'node:path';
import { once } from 'node:events';
import * as grpc from '@grpc/grpc-js';
import { silentLogger } from '../../lib/log.js';
import { startDevicePlugin, type DevicePluginHandle } from '../../plugins/device-plugin.js';
import { KubeletDeviceManager } from '../../plugins/kubelet-side.js';
import { socketNameFor } from '../../plugins/resources.js';
import { FakeHost } from './fake-host.js';

const KVM = 'devices.kubevirt.io/kvm';
const TUN = 'devices.kubevirt.io/tun';
const VHOST_NET = 'devices.kubevirt.io/vhost-net';
const VSOCK = 'devices.kubevirt.io/vhost-vsock';
const GPU = 'nvidia.com/TU104GL';
const NIC = 'intel.com/X710';
const MDEV = 'nvidia.com/GRID_T4-1Q';
const WAIT = 5000;

function rpcError(e: unknown): grpc.ServiceError {
  assert.ok(e instanceof Error && 'code' in e, `expected a gRPC error, got ${String(e)}`);
  return e as grpc.ServiceError;
}

describe('device-plugin: against a kubelet emulator over real unix sockets', function () {
  let host: FakeHost;
  let kubelet: KubeletDeviceManager;
  let dp: DevicePluginHandle | undefined;

  beforeEach(async () => {
    host = new FakeHost();
    kubelet = new KubeletDeviceManager({ dir: host.kubeletDir });
    await kubelet.start();
  });
  afterEach(async () => {
    await dp?.stop();
    dp = undefined;
    await kubelet.stop();
    host.cleanup();
  });

  const start = async (config?: object, configFile?: string, resyncMs = 0) => {
    dp = await startDevicePlugin({
      kubeletDir: host.kubeletDir,
      devRoot: host.dev,
      sysRoot: host.sys,
      cdiDir: host.cdiDir,
      logger: silentLogger,
      config,
      configFile,
      resyncMs,
    });
    return dp;
  };

  it('registers only the device-node resources whose node exists, with maxDevices healthy IDs and no topology', async () => {
    host.addNode('kvm');
    host.addNode('net/tun');
    await start({ maxDevices: 10 });
    const kvm = await kubelet.waitForResource(KVM, (r) => r.healthy.length === 10, WAIT);
    await kubelet.waitForResource(TUN, (r) => r.healthy.length === 10, WAIT);
    assert.equal(kvm.endpoint, socketNameFor(KVM));
    assert.equal(kvm.options.get_preferred_allocation_available, false);
    assert.ok(kvm.devices.every((d) => d.topology === null));
    assert.deepEqual(kubelet.resourceNames(), [KVM, TUN]);
    assert.deepEqual(dp!.resources().map((r) => r.resourceName), [KVM, TUN]);
  });

  it('Allocate of a device-node returns the real /dev path (not the dev root), rw, and its CDI device', async () => {
    host.addStandardDeviceNodes();
    await start();
    await kubelet.waitForResource(VHOST_NET, (r) => r.healthy.length === 1000, WAIT);
    for (const [res, p] of [[KVM, '/dev/kvm'], [TUN, '/dev/net/tun'], [VHOST_NET, '/dev/vhost-net'], [VSOCK, '/dev/vhost-vsock']] as const) {
      await kubelet.waitForResource(res, (r) => r.healthy.length === 1000, WAIT);
      const a = await kubelet.allocate(res, 1);
      assert.deepEqual(a.response.devices, [{ container_path: p, host_path: p, permissions: 'rw' }]);
      assert.deepEqual(a.response.envs, {});
      assert.deepEqual(a.response.cdi_devices, [{ name: `podvirt.io/device=${path.basename(p)}` }]);
    }
    const spec = JSON.parse(await fs.readFile(path.join(host.cdiDir, 'podvirt.json'), 'utf8')) as {
      kind: string;
      devices: Array<{ name: string; containerEdits: { deviceNodes: Array<{ path: string }> } }>;
    };
    assert.equal(spec.kind, 'podvirt.io/device');
    assert.deepEqual(spec.devices.map((d) => [d.name, d.containerEdits.deviceNodes[0]!.path]), [
      ['kvm', '/dev/kvm'],
      ['tun', '/dev/net/tun'],
      ['vhost-net', '/dev/vhost-net'],
      ['vhost-vsock', '/dev/vhost-vsock'],
    ]);
  });

  it('allocateContainer merges several resources for one container, all or nothing', async () => {
    host.addNode('kvm');
    host.addNode('net/tun');
    host.addStandardVfio();
    await start({ maxDevices: 2, pciHostDevices: [{ pciVendorSelector: '8086:1572', resourceName: NIC }] });
    // Every resource registers and lists on its own stream: wait for each one the allocation uses.
    await kubelet.waitForResource(KVM, (r) => r.healthy.length === 2, WAIT);
    await kubelet.waitForResource(TUN, (r) => r.healthy.length === 2, WAIT);
    await kubelet.waitForResource(NIC, (r) => r.healthy.length === 2, WAIT);
    const c = await kubelet.allocateContainer({ [KVM]: 1, [TUN]: 1, [NIC]: 1 });
    assert.deepEqual(c.devices.map((d) => d.hostPath), ['/dev/kvm', '/dev/net/tun', '/dev/vfio/vfio', '/dev/vfio/70']);
    assert.deepEqual(c.envs, { PCI_RESOURCE_INTEL_COM_X710: c.allocations[NIC]!.deviceIds[0]! });
    assert.deepEqual(c.cdiDevices, ['podvirt.io/device=kvm', 'podvirt.io/device=tun', 'podvirt.io/device=vfio', 'podvirt.io/device=vfio-70']);
    // kvm has 1 left, the NIC 1 left, but 2 NICs cannot be had: nothing stays allocated.
    await assert.rejects(kubelet.allocateContainer({ [KVM]: 1, [NIC]: 2 }), /insufficient intel.com\/X710: requested 2, available 1/);
    assert.equal(kubelet.resource(KVM)!.allocated.length, 1);
  });

  it('turns every ID Unhealthy when the node is removed and Healthy when it returns (ListAndWatch)', async () => {
    host.addNode('kvm');
    await start({ maxDevices: 5, deviceNodes: ['kvm'] });
    const first = await kubelet.waitForResource(KVM, (r) => r.healthy.length === 5, WAIT);
    host.removeNode('kvm');
    const gone = await kubelet.waitForResource(KVM, (r) => r.healthy.length === 0 && r.updates > first.updates, WAIT);
    assert.equal(gone.devices.length, 5);
    assert.ok(gone.devices.every((d) => d.health === 'Unhealthy'));
    await assert.rejects(kubelet.allocate(KVM, ['kvm-0']), (e: unknown) => {
      const se = rpcError(e);
      assert.equal(se.code, grpc.status.FAILED_PRECONDITION);
      assert.match(se.details, /"kvm-0" is Unhealthy/);
      return true;
    });
    host.addNode('kvm');
    await kubelet.waitForResource(KVM, (r) => r.healthy.length === 5, WAIT);
  });

  it('broadcasts every snapshot to every open ListAndWatch stream', async () => {
    host.addNode('kvm');
    await start({ maxDevices: 2, deviceNodes: ['kvm'] });
    await kubelet.waitForResource(KVM, (r) => r.healthy.length === 2, WAIT);
    // A second stream next to the kubelet's, as after a re-registration while the old one closes.
    const client = kubelet.client(KVM);
    const stream = client.ListAndWatch({});
    const seen: string[][] = [];
    const healthOf = (devices: Array<{ health: string }>) => devices.map((d) => d.health);
    let first: () => void = () => undefined;
    const opened = new Promise<void>((resolve) => (first = resolve));
    const unhealthy = new Promise<void>((resolve) =>
      stream.on('data', (m: { devices: Array<{ health: string }> }) => {
        seen.push(healthOf(m.devices));
        first();
        if (m.devices.every((d) => d.health === 'Unhealthy')) resolve();
      }),
    );
    stream.on('error', () => undefined);
    try {
      await opened; // the initial snapshot arrives once the stream is in the server's set
      assert.equal(dp!.resources()[0]!.openStreams, 2);
      host.removeNode('kvm');
      await unhealthy;
      await kubelet.waitForResource(KVM, (r) => r.healthy.length === 0, WAIT);
      assert.deepEqual(seen[0], ['Healthy', 'Healthy']);
    } finally {
      stream.cancel();
    }
  });

  it('watches a parent dir that does not exist at start (tun appears under a new net/)', async () => {
    host.addNode('kvm');
    await start({ maxDevices: 2 });
    await kubelet.waitForResource(KVM, (r) => r.healthy.length === 2, WAIT);
    assert.equal(kubelet.resource(TUN), undefined);
    host.addNode('net/tun');
    await kubelet.waitForResource(TUN, (r) => r.healthy.length === 2, WAIT);
  });

  it('Allocate of an unknown ID fails with NOT_FOUND naming the ID', async () => {
    host.addNode('kvm');
    await start({ maxDevices: 3 });
    await kubelet.waitForResource(KVM, (r) => r.healthy.length === 3, WAIT);
    await assert.rejects(kubelet.allocate(KVM, ['kvm-1', 'kvm-77']), (e: unknown) => {
      const se = rpcError(e);
      assert.equal(se.code, grpc.status.NOT_FOUND);
      assert.match(se.details, /devices\.kubevirt\.io\/kvm: unknown device ID "kvm-77"/);
      return true;
    });
    // Idempotent: the same ID twice is fine.
    const again = await kubelet.allocate(KVM, ['kvm-1', 'kvm-1']);
    assert.equal(again.response.devices.length, 1);
  });

  it('re-registers every resource after a kubelet restart, and retries while the kubelet is absent', async () => {
    host.addNode('kvm');
    host.addNode('vhost-net');
    await start({ maxDevices: 4 });
    await kubelet.waitForResource(KVM, (r) => r.healthy.length === 4, WAIT);
    await kubelet.waitForResource(VHOST_NET, (r) => r.healthy.length === 4, WAIT);
    await kubelet.restart({ downMs: 300 });
    for (const res of [KVM, VHOST_NET]) {
      const r = await kubelet.waitForResource(res, (x) => x.registrations === 2 && x.healthy.length === 4, WAIT);
      assert.equal(r.connected, true);
    }
    // Sockets are back in place and the plugin still allocates.
    assert.ok((await fs.lstat(path.join(host.kubeletDir, socketNameFor(KVM)))).isSocket());
    await kubelet.allocate(KVM, 1);
  });

  it('re-registers when only kubelet.sock is re-created (sockets left in place)', async () => {
    host.addNode('kvm');
    await start({ maxDevices: 2 });
    await kubelet.waitForResource(KVM, (r) => r.healthy.length === 2, WAIT);
    await kubelet.stop();
    await kubelet.start();
    const r = await kubelet.waitForResource(KVM, (x) => x.registrations === 2 && x.healthy.length === 2, WAIT);
    assert.equal(r.endpoint, socketNameFor(KVM));
  });

  it('survives the kubelet dir being removed and re-created', async () => {
    host.addNode('kvm');
    await start({ maxDevices: 2 });
    await kubelet.waitForResource(KVM, (r) => r.healthy.length === 2, WAIT);
    await kubelet.stop();
    await fs.rm(host.kubeletDir, { recursive: true });
    // The plugin may re-create the dir first when it serves its removed socket again.
    await fs.mkdir(host.kubeletDir, { recursive: true });
    await kubelet.start();
    await kubelet.waitForResource(KVM, (x) => x.registrations === 2 && x.healthy.length === 2, WAIT);
    assert.ok((await fs.lstat(path.join(host.kubeletDir, socketNameFor(KVM)))).isSocket());
  });

  it('starts before the kubelet exists and registers once kubelet.sock appears', async () => {
    await kubelet.stop();
    host.addNode('kvm');
    await start({ maxDevices: 2 });
    await kubelet.start();
    await kubelet.waitForResource(KVM, (r) => r.healthy.length === 2, WAIT);
  });

  it('serves VFIO PCI devices: only vfio-pci functions in fully bound groups, BDF IDs with NUMA topology', async () => {
    host.addStandardVfio();
    await start({
      deviceNodes: [],
      pciHostDevices: [
        { pciVendorSelector: '10de:1eb8', resourceName: GPU },
        { pciVendorSelector: '8086:1572', resourceName: NIC },
      ],
    });
    const gpu = await kubelet.waitForResource(GPU, (r) => r.healthy.length > 0, WAIT);
    // af:00.0 is in group 50 with an snd_hda_intel function; d8:00.0 is bound to nvidia.
    assert.deepEqual(gpu.healthy, ['0000:3b:00.0', '0000:3c:00.0', '0000:86:00.0']);
    assert.deepEqual(
      gpu.devices.map((d) => d.topology?.nodes.map((n) => n.ID)),
      [['0'], ['0'], ['1']],
    );
    assert.equal(gpu.options.get_preferred_allocation_available, true);

    const a = await kubelet.allocate(GPU, ['0000:3b:00.0', '0000:86:00.0']);
    assert.deepEqual(a.response.devices, [
      { container_path: '/dev/vfio/vfio', host_path: '/dev/vfio/vfio', permissions: 'mrw' },
      { container_path: '/dev/vfio/12', host_path: '/dev/vfio/12', permissions: 'mrw' },
      { container_path: '/dev/vfio/40', host_path: '/dev/vfio/40', permissions: 'mrw' },
    ]);
    assert.deepEqual(a.response.envs, { PCI_RESOURCE_NVIDIA_COM_TU104GL: '0000:3b:00.0,0000:86:00.0' });
    assert.deepEqual(
      a.response.cdi_devices.map((c) => c.name),
      ['podvirt.io/device=vfio', 'podvirt.io/device=vfio-12', 'podvirt.io/device=vfio-40'],
    );

    // The dual-port NIC shares group 70: a request for 2 gets the whole group, one /dev/vfio/70.
    await kubelet.waitForResource(NIC, (r) => r.healthy.length === 2, WAIT);
    const nic = await kubelet.allocate(NIC, 2);
    assert.deepEqual(nic.deviceIds, ['0000:5e:00.0', '0000:5e:00.1']);
    assert.deepEqual(nic.response.devices.map((d) => d.host_path), ['/dev/vfio/vfio', '/dev/vfio/70']);
  });

  it('GetPreferredAllocation keeps a request on one NUMA node over the wire', async () => {
    host.addStandardVfio();
    await start({ deviceNodes: [], pciHostDevices: [{ pciVendorSelector: '10DE:1EB8', resourceName: GPU }] });
    await kubelet.waitForResource(GPU, (r) => r.healthy.length === 3, WAIT);
    const a = await kubelet.allocate(GPU, 2);
    assert.deepEqual(a.deviceIds, ['0000:3b:00.0', '0000:3c:00.0']);
  });

  it('VFIO device health follows /dev/vfio/<group>', async () => {
    host.addStandardVfio();
    await start({ deviceNodes: [], pciHostDevices: [{ pciVendorSelector: '10DE:1EB8', resourceName: GPU }] });
    await kubelet.waitForResource(GPU, (r) => r.healthy.length === 3, WAIT);
    host.removeNode('vfio/13');
    const r = await kubelet.waitForResource(GPU, (x) => x.healthy.length === 2, WAIT);
    assert.deepEqual(r.healthy, ['0000:3b:00.0', '0000:86:00.0']);
    await assert.rejects(kubelet.allocate(GPU, ['0000:3c:00.0']), /"0000:3c:00.0" is Unhealthy/);
    host.addNode('vfio/13');
    await kubelet.waitForResource(GPU, (x) => x.healthy.length === 3, WAIT);
  });

  it('a device rebound away from vfio-pci stays advertised as Unhealthy (picked up by a rescan)', async () => {
    host.addStandardVfio();
    await start({ deviceNodes: [], pciHostDevices: [{ pciVendorSelector: '10DE:1EB8', resourceName: GPU }] });
    await kubelet.waitForResource(GPU, (r) => r.healthy.length === 3, WAIT);
    // sysfs cannot be watched: the slow resync (or any dev/config event) rescans; call it directly.
    host.setDriver('0000:86:00.1', 'snd_hda_intel');
    await dp!.reconcile();
    const r = await kubelet.waitForResource(GPU, (x) => x.healthy.length === 2, WAIT);
    assert.equal(r.devices.length, 3);
    assert.deepEqual(r.healthy, ['0000:3b:00.0', '0000:3c:00.0']);
    host.setDriver('0000:86:00.1', 'vfio-pci');
    await dp!.reconcile();
    await kubelet.waitForResource(GPU, (x) => x.healthy.length === 3, WAIT);
  });

  it('the periodic rescan picks up a sysfs change with no file event at all', async () => {
    host.addStandardVfio();
    await start({ deviceNodes: [], pciHostDevices: [{ pciVendorSelector: '10DE:1EB8', resourceName: GPU }] }, undefined, 100);
    await kubelet.waitForResource(GPU, (r) => r.healthy.length === 3, WAIT);
    host.setDriver('0000:3c:00.0', null);
    const r = await kubelet.waitForResource(GPU, (x) => x.healthy.length === 2, WAIT);
    assert.deepEqual(r.healthy, ['0000:3b:00.0', '0000:86:00.0']);
  });

  it('serves mediated devices by type name with MDEV_PCI_RESOURCE_ env of UUIDs', async () => {
    host.addStandardVfio();
    await start({ deviceNodes: [], mediatedDevices: [{ mdevNameSelector: 'GRID T4-1Q', resourceName: MDEV }] });
    const r = await kubelet.waitForResource(MDEV, (x) => x.healthy.length === 2, WAIT);
    assert.deepEqual(r.healthy, ['a1b2c3d4-0000-4000-8000-000000000001', 'a1b2c3d4-0000-4000-8000-000000000002']);
    assert.deepEqual(r.devices[0]!.topology?.nodes.map((n) => n.ID), ['1']);
    const a = await kubelet.allocate(MDEV, ['a1b2c3d4-0000-4000-8000-000000000002']);
    assert.deepEqual(a.response.envs, { MDEV_PCI_RESOURCE_NVIDIA_COM_GRID_T4_1Q: 'a1b2c3d4-0000-4000-8000-000000000002' });
    assert.deepEqual(a.response.devices.map((d) => d.host_path), ['/dev/vfio/vfio', '/dev/vfio/101']);
  });

  it('applies config changes live: a new pciHostDevices entry registers, a removed one stops being served', async () => {
    host.addStandardVfio();
    host.addNode('kvm');
    const file = path.join(host.root, 'dp.yaml');
    writeFileSync(file, 'maxDevices: 2\ndeviceNodes: [kvm]\n');
    await start(undefined, file);
    await kubelet.waitForResource(KVM, (r) => r.healthy.length === 2, WAIT);
    assert.equal(kubelet.resource(GPU), undefined);

    const applied = once(dp!.events, 'config-applied');
    writeFileSync(file, 'maxDevices: 2\ndeviceNodes: [kvm]\npciHostDevices:\n  - {pciVendorSelector: "10DE:1EB8", resourceName: "nvidia.com/TU104GL"}\n');
    await applied;
    await kubelet.waitForResource(GPU, (r) => r.healthy.length === 3, WAIT);
    const gpuSocket = path.join(host.kubeletDir, socketNameFor(GPU));
    assert.ok((await fs.lstat(gpuSocket)).isSocket());
    const kvmRegistrations = kubelet.resource(KVM)!.registrations;

    // Replace the file by rename, as editors and ConfigMap updates do.
    const tmp = `${file}.tmp`;
    writeFileSync(tmp, JSON.stringify({ maxDevices: 2, deviceNodes: ['kvm'] }));
    const applied2 = once(dp!.events, 'config-applied');
    renameSync(tmp, file);
    await applied2;
    // The kubelet sees the devices withdrawn (empty list, then the stream ends) and the socket is gone.
    await kubelet.waitFor(() => (kubelet.resource(GPU)!.healthy.length === 0 ? true : undefined), WAIT, 'GPU withdrawn');
    await assert.rejects(fs.lstat(gpuSocket), /ENOENT/);
    assert.deepEqual(dp!.resources().map((r) => r.resourceName), [KVM]);
    // The unaffected resource was not restarted or re-registered.
    assert.equal(kubelet.resource(KVM)!.registrations, kvmRegistrations);
    assert.equal(kubelet.resource(KVM)!.connected, true);
  });

  it('follows a ConfigMap-style update (the ..data symlink swapped by rename)', async () => {
    host.addNode('kvm');
    const cm = path.join(host.root, 'cm');
    await fs.mkdir(path.join(cm, '..v1'), { recursive: true });
    writeFileSync(path.join(cm, '..v1', 'dp.yaml'), 'maxDevices: 2\n');
    await fs.symlink('..v1', path.join(cm, '..data'));
    await fs.symlink('..data/dp.yaml', path.join(cm, 'dp.yaml'));
    await start(undefined, path.join(cm, 'dp.yaml'));
    await kubelet.waitForResource(KVM, (r) => r.devices.length === 2, WAIT);
    await fs.mkdir(path.join(cm, '..v2'));
    writeFileSync(path.join(cm, '..v2', 'dp.yaml'), 'maxDevices: 5\n');
    await fs.symlink('..v2', path.join(cm, '..data_tmp'));
    const applied = once(dp!.events, 'config-applied');
    await fs.rename(path.join(cm, '..data_tmp'), path.join(cm, '..data'));
    await applied;
    await kubelet.waitForResource(KVM, (r) => r.devices.length === 5 && r.healthy.length === 5, WAIT);
  });

  it('rejects a malformed config naming the key and keeps the last good one', async () => {
    host.addNode('kvm');
    const file = path.join(host.root, 'dp.json');
    writeFileSync(file, JSON.stringify({ maxDevices: 3 }));
    await start(undefined, file);
    await kubelet.waitForResource(KVM, (r) => r.healthy.length === 3, WAIT);
    const rejected = once(dp!.events, 'config-rejected');
    writeFileSync(file, JSON.stringify({ maxDevices: 7, pciHostDevices: [{ pciVendorSelector: 'nvidia', resourceName: GPU }] }));
    const [msg] = (await rejected) as [string];
    assert.match(msg, /pciHostDevices\[0\]\.pciVendorSelector: must be "VVVV:DDDD"/);
    assert.equal(dp!.lastConfigError(), msg);
    assert.equal(dp!.config().maxDevices, 3);
    await dp!.reconcile();
    assert.equal(kubelet.resource(KVM)!.devices.length, 3);
    // A good file again clears the error and applies.
    const applied = once(dp!.events, 'config-applied');
    writeFileSync(file, JSON.stringify({ maxDevices: 6 }));
    await applied;
    assert.equal(dp!.lastConfigError(), undefined);
    await kubelet.waitForResource(KVM, (r) => r.devices.length === 6, WAIT);
  });

  it('fails to start on an invalid initial config, naming the key', async () => {
    const file = path.join(host.root, 'bad.yaml');
    writeFileSync(file, 'deviceNodes: [kvm, gpu]\nmaxDevice: 3\n');
    await assert.rejects(start(undefined, file), (e: unknown) => {
      assert.match(String(e), /deviceNodes\[1\]/);
      assert.match(String(e), /maxDevice: unknown key/);
      return true;
    });
  });

  it('stop() sends an empty list and removes its sockets', async () => {
    host.addNode('kvm');
    await start({ maxDevices: 2 });
    await kubelet.waitForResource(KVM, (r) => r.healthy.length === 2, WAIT);
    await dp!.stop();
    dp = undefined;
    const r = await kubelet.waitFor(() => {
      const x = kubelet.resource(KVM)!;
      return x.connected ? undefined : x;
    }, WAIT, 'stream closed');
    assert.equal(r.healthy.length, 0);
    const left = (await fs.readdir(host.kubeletDir)).filter((n) => n !== 'kubelet.sock');
    assert.deepEqual(left, []);
  });
});
