import { strict as assert } from 'node:assert';
import { localLauncher, DEVICE_SCRIPT } from './local-launcher.js';
import { tapsFor } from './vm-backend.js';
import { topologyMac } from './agent.js';
import { vmShape } from './vm-shape.js';
import type { AttachmentRecord } from './pod-store.js';

const SPEC = JSON.stringify({
  cpus: 2,
  memory: '256Mi',
  accel: 'tcg',
  kernel: '/k',
  isolateEmulatorThread: true,
  interfaces: [
    { name: 'net0', network: 'pod' },
    { name: 'net1', network: 'blue' },
  ],
});

const att = (vmNetwork: string, ifname: string): AttachmentRecord => ({
  network: vmNetwork === 'pod' ? 'podvirt0' : vmNetwork,
  vmNetwork,
  ifname,
  containerId: 'c',
  mac: '02:00:00:00:00:01',
  bridge: 'br',
  ip: '10.0.0.2/24',
  gateway: '10.0.0.1',
  config: {},
});

describe('agent/local: pure pieces of the VM wiring', () => {
  it('derives the pod shape from the spec (extra CPU for the emulator, tun for taps, networks named)', () => {
    assert.deepEqual(vmShape(SPEC), { cpus: 2, memoryBytes: 256 << 20, extraCpus: 1, wantsTun: true, wantsKvm: false, networks: ['pod', 'blue'] });
    assert.throws(() => vmShape('{"cpus": 0, "memory": "1Mi"}'), /spec.cpus.*spec.memory|spec.memory.*spec.cpus|invalid VM spec/);
  });

  it('maps each VM interface to the tap of the network it names', () => {
    assert.deepEqual(tapsFor(SPEC, [att('blue', 'net1'), att('pod', 'eth0')]), { net0: 'eth0', net1: 'net1' });
    assert.throws(() => tapsFor(SPEC, [att('pod', 'eth0')]), /network "blue" is not attached/);
  });

  it('finds the guest MAC of a network in the recorded topology', () => {
    const topo = {
      version: 1,
      machine: 'pc-q35-7.2',
      cpuModel: 'max',
      cpus: 2,
      memoryBytes: 256 << 20,
      numaCells: [],
      rootPorts: [{ id: 'rp1', chassis: 1, port: 1, slot: 2, function: 0 }],
      devices: [{ key: 'nic:net1', kind: 'nic', id: 'net-net1', driver: 'virtio-net-pci', bus: 'rp1', addr: 0, mac: '52:54:00:aa:bb:cc' }],
    };
    assert.equal(topologyMac(topo, SPEC, 'blue'), '52:54:00:aa:bb:cc');
    assert.equal(topologyMac(topo, SPEC, 'pod'), undefined);
    assert.equal(topologyMac(undefined, SPEC, 'blue'), undefined);
    assert.equal(topologyMac({ nonsense: true }, SPEC, 'blue'), undefined);
  });

  it('wraps the launcher: own mount namespace, granted nodes bound over their /dev paths, then the inner argv', () => {
    const argv = localLauncher(['nsenter', '--net=/run/netns/x', '--', 'sh'], '/run/podvirt/vm1/dev', 107, 107, [
      { path: '/dev/net/tun', kind: 'c', major: 10, minor: 200 },
      { path: '/dev/kvm', kind: 'c', major: 10, minor: 232 },
    ]);
    assert.deepEqual(argv, [
      'unshare', '--mount', '--propagation', 'slave', '--', 'sh', '-c', DEVICE_SCRIPT, 'podvirt-devices', '/run/podvirt/vm1/dev', '107', '107', '2',
      '/dev/net/tun', 'c', '10', '200', '/dev/kvm', 'c', '10', '232',
      'nsenter', '--net=/run/netns/x', '--', 'sh',
    ]);
    assert.throws(() => localLauncher([], '/d', 1, 1, [{ path: '/etc/passwd', kind: 'c', major: 1, minor: 3 }]), /not under \/dev/);
    assert.throws(() => localLauncher([], 'rel', 1, 1, []), /must be absolute/);
  });
});
