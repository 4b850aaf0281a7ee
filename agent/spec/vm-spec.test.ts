import { strict as assert } from 'node:assert';
import { InvalidArgument } from '../../lib/errors.js';
import { bootDiskName, parseVmSpec, validateVmSpec } from './vm-spec.js';
import { podVmInput } from './pod-facts.js';

const base = { cpus: 2, memory: '512Mi', kernel: '/k', disks: [], interfaces: [] };

describe('agent-core: VM spec', () => {
  it('fills defaults and converts memory', () => {
    const s = validateVmSpec(base);
    assert.equal(s.memory, 512 * 2 ** 20);
    assert.equal(s.accel, 'auto');
    assert.equal(s.machine, 'q35');
    assert.equal(s.isolateEmulatorThread, false);
    assert.equal(s.serial, 'console');
    assert.equal(s.hotplugPorts, 4);
  });

  it('parses YAML and JSON annotation text', () => {
    const y = parseVmSpec('cpus: 1\nmemory: 1Gi\naccel: tcg\nkernel: /k\ninterfaces:\n  - {name: net0, network: br}\n');
    assert.equal(y.memory, 2 ** 30);
    assert.deepEqual(y.interfaces[0], { name: 'net0', network: 'br', binding: 'tap', model: 'virtio' });
    const j = parseVmSpec(JSON.stringify({ ...base, disks: [{ name: 'root', volume: 'v', bootIndex: 0 }] }));
    assert.equal(j.disks[0]!.type, 'block');
    assert.equal(j.disks[0]!.bus, 'virtio');
    assert.equal(bootDiskName(j), 'root');
  });

  const bad: Array<[string, unknown, string]> = [
    ['missing disk name', { ...base, disks: [{ name: 'a', volume: 'v' }, { volume: 'w' }] }, 'spec.disks[1].name: required'],
    ['missing cpus', { memory: '1Gi', kernel: '/k' }, 'spec.cpus: required'],
    ['bad memory', { ...base, memory: 'lots' }, 'spec.memory: "lots" is not a memory size'],
    ['bad accel', { ...base, accel: 'xen' }, 'spec.accel:'],
    ['unknown key', { ...base, cpu: 2 }, 'spec: unknown field(s) cpu'],
    ['no boot source', { cpus: 1, memory: '64Mi' }, 'spec.kernel: required unless a boot disk'],
    ['initrd without kernel', { cpus: 1, memory: '64Mi', initrd: '/i', bootDisk: 'r', disks: [{ name: 'r', volume: 'v' }] }, 'spec.initrd: needs kernel'],
    ['bootDisk names nothing', { ...base, bootDisk: 'x' }, 'spec.bootDisk: names no disk'],
    ['duplicate disk', { ...base, disks: [{ name: 'a', volume: 'v' }, { name: 'a', volume: 'w' }] }, 'spec.disks[1].name: duplicate name'],
    ['file without path', { ...base, disks: [{ name: 'a', volume: 'v', type: 'file' }] }, 'spec.disks[0].path: required for a file disk'],
    ['path escapes', { ...base, disks: [{ name: 'a', volume: 'v', type: 'file', path: '../x' }] }, 'spec.disks[0].path: must be relative'],
    ['bad mac', { ...base, interfaces: [{ name: 'n', network: 'x', mac: 'zz' }] }, 'spec.interfaces[0].mac: must be a MAC'],
    ['bad binding', { ...base, interfaces: [{ name: 'n', network: 'x', binding: 'bridge' }] }, 'spec.interfaces[0].binding:'],
    ['hugepage multiple', { ...base, memory: '1025Mi', hugepages: { pageSize: '2Mi' } }, 'spec.memory: must be a multiple of the hugepage size'],
    ['bad machine', { ...base, machine: 'pc' }, 'spec.machine: must be q35'],
    ['upper-case name', { ...base, disks: [{ name: 'Root', volume: 'v' }] }, 'spec.disks[0].name: must be a lowercase DNS label'],
  ];
  for (const [name, input, want] of bad) {
    it(`rejects: ${name}`, () => {
      assert.throws(() => validateVmSpec(input), (e: unknown) => e instanceof InvalidArgument && e.message.includes(want), `expected "${want}"`);
    });
  }

  it('rejects non-mapping and non-YAML text', () => {
    assert.throws(() => parseVmSpec('- a\n- b'), /spec: must be a mapping/);
    assert.throws(() => parseVmSpec('{cpus: ['), /not YAML or JSON/);
  });
});

describe('agent-core: pod facts', () => {
  const pod = (spec: unknown, extra: Record<string, unknown> = {}) => ({
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: 'vm1', uid: 'u-1', annotations: { 'vm.podvirt.io/spec': JSON.stringify(spec), ...extra } },
    spec: {
      containers: [
        {
          name: 'compute',
          resources: {
            limits: { cpu: '2', memory: '1Gi', 'devices.kubevirt.io/kvm': '1' },
            requests: { cpu: '2000m', memory: '1Gi' },
          },
          volumeDevices: [{ name: 'rootvol', devicePath: '/dev/vm-root' }],
          volumeMounts: [{ name: 'data', mountPath: '/data' }],
        },
      ],
    },
  });

  it('extracts spec, volumes, resources and topology', () => {
    const spec = { ...base, disks: [{ name: 'root', volume: 'rootvol' }, { name: 'd', volume: 'data', type: 'file', path: 'd.img' }] };
    const f = podVmInput(pod(spec, { 'vm.podvirt.io/topology': '{"version":1}' }));
    assert.equal(f.name, 'vm1');
    assert.equal(f.namespace, 'default');
    assert.deepEqual(f.volumes.rootvol, { kind: 'block', devicePath: '/dev/vm-root' });
    assert.deepEqual(f.volumes.data, { kind: 'filesystem', mountPath: '/data', readOnly: false });
    assert.deepEqual(f.resources, { cpus: 2, memoryBytes: 2 ** 30, extended: { 'devices.kubevirt.io/kvm': 1 }, guaranteed: true });
    assert.deepEqual(f.topology, { version: 1 });
  });

  it('names the disk whose volume is missing or of the wrong kind', () => {
    assert.throws(() => podVmInput(pod({ ...base, disks: [{ name: 'r', volume: 'nope' }] })), /spec\.disks\[0\]\.volume: container "compute" has no volumeDevices entry "nope"/);
    assert.throws(() => podVmInput(pod({ ...base, disks: [{ name: 'r', volume: 'data' }] })), /spec\.disks\[0\]\.volume: "data" is mounted as a filesystem/);
    assert.throws(() => podVmInput(pod({ ...base, disks: [{ name: 'r', volume: 'rootvol', type: 'file', path: 'x' }] })), /is a block device/);
  });

  it('requires the annotation', () => {
    assert.throws(() => podVmInput({ kind: 'Pod', metadata: { name: 'x' }, spec: { containers: [{ name: 'c' }] } }), /annotations\["vm.podvirt.io\/spec"\]: required/);
  });
});
