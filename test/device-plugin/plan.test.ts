import { strict as assert } from 'node:assert';
import { validateConfig } from '../../plugins/config.js';
import { discover, type Inventory } from '../../plugins/discovery.js';
import { mergeAdvertised, planResources, viableGroups, type ResourcePlan } from '../../plugins/plan.js';
import { FakeHost } from './fake-host.js';

describe('device-plugin: discovery on a fake /sys and /dev', () => {
  let host: FakeHost;
  let inv: Inventory;
  before(async () => {
    host = new FakeHost();
    host.addStandardVfio();
    host.addNode('kvm');
    inv = await discover({ dev: host.dev, sys: host.sys }, { pci: true, mdev: true });
  });
  after(() => host.cleanup());

  it('reads PCI ID, driver, IOMMU group and NUMA node (-1 = none) of every function', () => {
    const byBdf = new Map(inv.pci.map((f) => [f.bdf, f]));
    assert.deepEqual(byBdf.get('0000:86:00.1'), { bdf: '0000:86:00.1', pciId: '10DE:10F8', driver: 'vfio-pci', iommuGroup: '40', numaNode: 1 });
    assert.deepEqual(byBdf.get('0000:00:1f.0'), { bdf: '0000:00:1f.0', pciId: '8086:A1C8', driver: undefined, iommuGroup: '80', numaNode: undefined });
    assert.equal(inv.pci.length, 10);
  });
  it('finds mdevs with their type name, parent, group and the parent NUMA node', () => {
    assert.deepEqual(inv.mdevs[2], {
      uuid: 'a1b2c3d4-0000-4000-8000-000000000003',
      typeName: 'GRID T4-2Q',
      parentBdf: '0000:d8:00.0',
      iommuGroup: '102',
      numaNode: 1,
    });
  });
  it('sees device nodes and VFIO group nodes', () => {
    assert.deepEqual(inv.deviceNodes, { kvm: true, tun: false, 'vhost-net': false, 'vhost-vsock': false });
    assert.equal(inv.vfioContainer, true);
    // The kernel creates /dev/vfio/50 although its group is not viable: the plugin must not offer it anyway.
    assert.deepEqual([...inv.vfioGroupNodes].sort(), ['100', '101', '102', '12', '13', '40', '50', '70']);
  });
  it('a group is viable only when every member is bound to vfio-pci', () => {
    assert.deepEqual([...viableGroups(inv)].sort(), ['12', '13', '40', '70']);
  });
});

const emptyInv = (over: Partial<Inventory> = {}): Inventory => ({
  deviceNodes: { kvm: false, tun: false, 'vhost-net': false, 'vhost-vsock': false },
  pci: [],
  mdevs: [],
  vfioContainer: true,
  vfioGroupNodes: new Set(),
  ...over,
});

describe('device-plugin: resource plan', () => {
  const cases: Array<{ name: string; config: object; inv: Inventory; want: Array<[string, number, number]> }> = [
    {
      name: 'deviceNodes unset: all four planned, health from presence',
      config: { maxDevices: 3 },
      inv: emptyInv({ deviceNodes: { kvm: true, tun: true, 'vhost-net': false, 'vhost-vsock': true } }),
      want: [
        ['devices.kubevirt.io/kvm', 3, 3],
        ['devices.kubevirt.io/tun', 3, 3],
        ['devices.kubevirt.io/vhost-net', 3, 0],
        ['devices.kubevirt.io/vhost-vsock', 3, 3],
      ],
    },
    {
      name: 'deviceNodes chooses',
      config: { maxDevices: 2, deviceNodes: ['vhost-net'] },
      inv: emptyInv({ deviceNodes: { kvm: true, tun: true, 'vhost-net': true, 'vhost-vsock': true } }),
      want: [['devices.kubevirt.io/vhost-net', 2, 2]],
    },
    {
      name: 'VFIO device without its group node is Unhealthy; no container node makes all Unhealthy',
      config: { deviceNodes: [], pciHostDevices: [{ pciVendorSelector: '10DE:1EB8', resourceName: 'a.io/gpu' }] },
      inv: emptyInv({
        pci: [
          { bdf: '0000:01:00.0', pciId: '10DE:1EB8', driver: 'vfio-pci', iommuGroup: '1', numaNode: 0 },
          { bdf: '0000:02:00.0', pciId: '10DE:1EB8', driver: 'vfio-pci', iommuGroup: '2', numaNode: 0 },
        ],
        vfioGroupNodes: new Set(['1']),
      }),
      want: [['a.io/gpu', 2, 1]],
    },
    {
      name: 'two selectors feed one resource',
      config: {
        deviceNodes: [],
        pciHostDevices: [
          { pciVendorSelector: '10DE:1EB8', resourceName: 'a.io/gpu' },
          { pciVendorSelector: '10DE:1EB9', resourceName: 'a.io/gpu' },
        ],
      },
      inv: emptyInv({
        pci: [
          { bdf: '0000:01:00.0', pciId: '10DE:1EB8', driver: 'vfio-pci', iommuGroup: '1', numaNode: undefined },
          { bdf: '0000:02:00.0', pciId: '10DE:1EB9', driver: 'vfio-pci', iommuGroup: '2', numaNode: undefined },
        ],
        vfioGroupNodes: new Set(['1', '2']),
      }),
      want: [['a.io/gpu', 2, 2]],
    },
    {
      name: 'mdev type names compare with spaces as underscores',
      config: { deviceNodes: [], mediatedDevices: [{ mdevNameSelector: 'GRID_T4-1Q', resourceName: 'a.io/vgpu' }] },
      inv: emptyInv({
        mdevs: [{ uuid: 'u1', typeName: 'GRID T4-1Q', parentBdf: 'p', iommuGroup: '9', numaNode: 0 }],
        vfioGroupNodes: new Set(['9']),
      }),
      want: [['a.io/vgpu', 1, 1]],
    },
  ];
  for (const tc of cases) {
    it(tc.name, () => {
      const plans = planResources(validateConfig(tc.config), tc.inv);
      assert.deepEqual(
        plans.map((p) => [p.resourceName, p.devices.length, p.devices.filter((d) => d.healthy).length]),
        tc.want,
      );
    });
  }

  it('keeps a vanished VFIO device advertised as Unhealthy, but never pads device-node tokens', () => {
    const prev = [
      { id: '0000:01:00.0', healthy: true, numaNode: 0, iommuGroup: '1' },
      { id: '0000:02:00.0', healthy: true, numaNode: 0, iommuGroup: '2' },
    ];
    const next: ResourcePlan = { resourceName: 'a.io/gpu', kind: 'pci', socketName: 's', devices: [prev[1]!] };
    assert.deepEqual(mergeAdvertised(prev, next).devices, [{ ...prev[0]!, healthy: false }, prev[1]]);
    const tokens: ResourcePlan = { resourceName: 'devices.kubevirt.io/kvm', kind: 'device-node', socketName: 's', devices: [{ id: 'kvm-0', healthy: true }] };
    assert.deepEqual(mergeAdvertised([{ id: 'kvm-0', healthy: true }, { id: 'kvm-1', healthy: true }], tokens), tokens);
  });
});
