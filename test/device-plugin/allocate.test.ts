import { strict as assert } from 'node:assert';
import { isPodvirtError } from '../../lib/errors.js';
import { containerAllocation, envVarName, MDEV_ENV_PREFIX, PCI_ENV_PREFIX, preferredAllocation } from '../../plugins/allocate.js';
import { buildCdiSpec } from '../../plugins/cdi.js';
import type { PlannedDevice, ResourcePlan } from '../../plugins/plan.js';

describe('device-plugin: env variable names', () => {
  const cases: Array<[string, string, string]> = [
    [PCI_ENV_PREFIX, 'nvidia.com/TU104GL', 'PCI_RESOURCE_NVIDIA_COM_TU104GL'],
    [PCI_ENV_PREFIX, 'nvidia.com/GP102GL', 'PCI_RESOURCE_NVIDIA_COM_GP102GL'],
    [MDEV_ENV_PREFIX, 'nvidia.com/GRID_T4-1Q', 'MDEV_PCI_RESOURCE_NVIDIA_COM_GRID_T4_1Q'],
    [PCI_ENV_PREFIX, 'intel.com/x710-vf.a', 'PCI_RESOURCE_INTEL_COM_X710_VF_A'],
    [PCI_ENV_PREFIX, 'a.b-c.io/d', 'PCI_RESOURCE_A_B_C_IO_D'],
  ];
  for (const [prefix, name, want] of cases) it(`${name} -> ${want}`, () => assert.equal(envVarName(prefix, name), want));
});

const dev = (id: string, numaNode: number | undefined, iommuGroup: string, healthy = true): PlannedDevice => ({ id, numaNode, iommuGroup, healthy });

describe('device-plugin: preferred allocation', () => {
  // node 0: a0 (g1), a1 (g2); node 1: b0+b1 (g3, one group), b2 (g4); no NUMA: c0 (g5)
  const devices = [dev('a0', 0, '1'), dev('a1', 0, '2'), dev('b0', 1, '3'), dev('b1', 1, '3'), dev('b2', 1, '4'), dev('c0', undefined, '5')];
  const all = devices.map((d) => d.id);
  const cases: Array<{ name: string; available: string[]; must?: string[]; size: number; want: string[]; devices?: PlannedDevice[] }> = [
    { name: 'two devices fit on the smaller node', available: all, size: 2, want: ['a0', 'a1'] },
    { name: 'two on node 1 come as one whole group', available: ['b0', 'b1', 'b2'], size: 2, want: ['b0', 'b1'] },
    { name: 'one device: a single-device group rather than half of a pair', available: ['b0', 'b1', 'b2'], size: 1, want: ['b2'] },
    { name: 'must-include: its group is completed first', available: all, must: ['b0'], size: 2, want: ['b0', 'b1'] },
    { name: 'must-include on node 1 keeps the request on node 1', available: all, must: ['b2'], size: 3, want: ['b0', 'b1', 'b2'] },
    { name: 'three fit only on node 1', available: all, size: 3, want: ['b0', 'b1', 'b2'] },
    { name: 'no node can hold four: spread from the largest node, whole groups', available: all, size: 4, want: ['a0', 'b0', 'b1', 'b2'] },
    { name: 'more than available: everything', available: ['a0', 'b2'], size: 5, want: ['a0', 'b2'] },
    { name: 'must-include alone fills the request', available: all, must: ['a1', 'c0'], size: 2, want: ['a1', 'c0'] },
    {
      name: 'split a group only when nothing else fits',
      devices: [dev('d0', 0, '7'), dev('d1', 0, '7')],
      available: ['d0', 'd1'],
      size: 1,
      want: ['d0'],
    },
    {
      name: 'splits the smallest group that covers the rest',
      devices: [dev('e0', 0, '8'), dev('e1', 0, '8'), dev('e2', 0, '8'), dev('f0', 0, '9'), dev('f1', 0, '9')],
      available: ['e0', 'e1', 'e2', 'f0', 'f1'],
      size: 1,
      want: ['f0'],
    },
    { name: 'unknown IDs are usable, as their own group without NUMA', available: ['zz'], size: 1, want: ['zz'] },
    { name: 'duplicates in the request collapse', available: ['a0', 'a0', 'a1'], size: 2, want: ['a0', 'a1'] },
  ];
  for (const tc of cases) {
    it(tc.name, () => assert.deepEqual(preferredAllocation(tc.devices ?? devices, tc.available, tc.must ?? [], tc.size), tc.want));
  }
});

const pciPlan: ResourcePlan = {
  resourceName: 'nvidia.com/TU104GL',
  kind: 'pci',
  socketName: 'x.sock',
  devices: [dev('0000:3b:00.0', 0, '12'), dev('0000:86:00.0', 1, '40'), dev('0000:86:00.1', 1, '40'), dev('0000:af:00.0', 1, '50', false)],
};

describe('device-plugin: Allocate response', () => {
  it('dedupes group nodes and keeps the address list in request order', () => {
    const r = containerAllocation(pciPlan, ['0000:86:00.1', '0000:3b:00.0', '0000:86:00.0']);
    assert.deepEqual(r.devices?.map((d) => d.host_path), ['/dev/vfio/vfio', '/dev/vfio/12', '/dev/vfio/40']);
    assert.deepEqual(r.envs, { PCI_RESOURCE_NVIDIA_COM_TU104GL: '0000:86:00.1,0000:3b:00.0,0000:86:00.0' });
    assert.deepEqual(r.cdi_devices?.map((c) => c.name), ['podvirt.io/device=vfio', 'podvirt.io/device=vfio-12', 'podvirt.io/device=vfio-40']);
  });
  it('is idempotent for repeated IDs', () => {
    assert.deepEqual(containerAllocation(pciPlan, ['0000:3b:00.0', '0000:3b:00.0']), containerAllocation(pciPlan, ['0000:3b:00.0']));
  });
  const bad: Array<[string, string[], string, RegExp]> = [
    ['unknown IDs', ['0000:3b:00.0', 'nope', 'nada'], 'NotFound', /unknown device IDs "nope", "nada"/],
    ['an unhealthy ID', ['0000:af:00.0'], 'FailedPrecondition', /device "0000:af:00.0" is Unhealthy/],
    ['no IDs', [], 'InvalidArgument', /no device IDs/],
  ];
  for (const [name, ids, kind, msg] of bad) {
    it(`rejects ${name} saying which`, () =>
      assert.throws(
        () => containerAllocation(pciPlan, ids),
        (e: unknown) => isPodvirtError(e) && e.kind === kind && msg.test(e.message),
      ));
  }
});

describe('device-plugin: CDI spec', () => {
  it('has one device per device-node resource, the VFIO container node and each served group', () => {
    const kvm: ResourcePlan = { resourceName: 'devices.kubevirt.io/kvm', kind: 'device-node', socketName: 'k.sock', devices: [], hostPath: '/dev/kvm', node: 'kvm' };
    const spec = buildCdiSpec([kvm, pciPlan]);
    assert.equal(spec.kind, 'podvirt.io/device');
    assert.equal(spec.cdiVersion, '0.6.0');
    assert.deepEqual(
      spec.devices.map((d) => [d.name, d.containerEdits.deviceNodes.map((n) => `${n.path}:${n.permissions}`).join()]),
      [
        ['kvm', '/dev/kvm:rw'],
        ['vfio', '/dev/vfio/vfio:mrw'],
        ['vfio-12', '/dev/vfio/12:mrw'],
        ['vfio-40', '/dev/vfio/40:mrw'],
        ['vfio-50', '/dev/vfio/50:mrw'],
      ],
    );
    for (const d of spec.devices) assert.match(d.name, /^[A-Za-z0-9][A-Za-z0-9_.-]*$/);
  });
});
