import { strict as assert } from 'node:assert';
import { parseConfig } from '../../plugins/config.js';

describe('device-plugin: config', () => {
  it('defaults: 1000 IDs, deviceNodes unset (= every node that exists), no VFIO', () => {
    assert.deepEqual(parseConfig(''), { maxDevices: 1000, deviceNodes: undefined, pciHostDevices: [], mediatedDevices: [] });
  });
  it('reads the contract example (YAML) and the same as JSON', () => {
    const yaml = `maxDevices: 1000
deviceNodes: [kvm, tun, vhost-net, vhost-vsock]
pciHostDevices:
  - pciVendorSelector: "10de:1eb8"
    resourceName: "nvidia.com/TU104GL"
mediatedDevices:
  - mdevNameSelector: "GRID T4-1Q"
    resourceName: "nvidia.com/GRID_T4-1Q"
`;
    const c = parseConfig(yaml);
    assert.deepEqual(c.deviceNodes, ['kvm', 'tun', 'vhost-net', 'vhost-vsock']);
    assert.deepEqual(c.pciHostDevices, [{ pciVendorSelector: '10DE:1EB8', resourceName: 'nvidia.com/TU104GL' }]);
    assert.deepEqual(c.mediatedDevices, [{ mdevNameSelector: 'GRID T4-1Q', resourceName: 'nvidia.com/GRID_T4-1Q' }]);
    assert.deepEqual(parseConfig(JSON.stringify({ maxDevices: 1000, deviceNodes: ['kvm', 'tun', 'vhost-net', 'vhost-vsock'], pciHostDevices: [{ pciVendorSelector: '10de:1eb8', resourceName: 'nvidia.com/TU104GL' }], mediatedDevices: [{ mdevNameSelector: 'GRID T4-1Q', resourceName: 'nvidia.com/GRID_T4-1Q' }] })), c);
  });
  it('skips entries served by an external provider', () => {
    const c = parseConfig('pciHostDevices: [{pciVendorSelector: "10DE:1EB8", resourceName: "nvidia.com/A", externalResourceProvider: true}]');
    assert.deepEqual(c.pciHostDevices, []);
  });
  it('an empty deviceNodes list serves no device-node resource', () => assert.deepEqual(parseConfig('deviceNodes: []').deviceNodes, []));

  const bad: Array<[string, string, RegExp]> = [
    ['unknown top-level key', 'maxDevice: 5', /maxDevice: unknown key/],
    ['wrong type', 'maxDevices: many', /maxDevices: /],
    ['zero maxDevices', 'maxDevices: 0', /maxDevices: /],
    ['unknown device node', 'deviceNodes: [kvm, gpu]', /deviceNodes\[1\]: /],
    ['bad selector', 'pciHostDevices: [{pciVendorSelector: "10DE-1EB8", resourceName: "nvidia.com/X"}]', /pciHostDevices\[0\]\.pciVendorSelector: must be "VVVV:DDDD"/],
    ['missing resourceName', 'pciHostDevices: [{pciVendorSelector: "10DE:1EB8"}]', /pciHostDevices\[0\]\.resourceName: /],
    ['resource name without domain', 'pciHostDevices: [{pciVendorSelector: "10DE:1EB8", resourceName: "gpu"}]', /pciHostDevices\[0\]\.resourceName: invalid resource name "gpu"/],
    ['kubernetes.io domain', 'mediatedDevices: [{mdevNameSelector: "x", resourceName: "kubernetes.io/x"}]', /mediatedDevices\[0\]\.resourceName: .*reserved/],
    ['unknown nested key', 'mediatedDevices: [{mdevNameSelector: "x", resourceName: "a.io/x", typo: 1}]', /mediatedDevices\[0\]\.typo: unknown key/],
    ['name used by pci and mdev', 'pciHostDevices: [{pciVendorSelector: "10DE:1EB8", resourceName: "a.io/x"}]\nmediatedDevices: [{mdevNameSelector: "x", resourceName: "a.io/x"}]', /mediatedDevices\[0\]\.resourceName: resource name "a.io\/x" is already used by pciHostDevices/],
    ['shadowing a device-node resource', 'pciHostDevices: [{pciVendorSelector: "10DE:1EB8", resourceName: "devices.kubevirt.io/kvm"}]', /pciHostDevices\[0\]\.resourceName: .*deviceNodes/],
    ['not a mapping', '- kvm', /\(top level\): expected a mapping/],
    ['not YAML', 'a: [b', /not valid YAML or JSON/],
  ];
  for (const [name, text, msg] of bad) {
    it(`rejects ${name}, naming the key`, () => assert.throws(() => parseConfig(text, 'config x.yaml'), (e: unknown) => e instanceof Error && /^config x\.yaml: /.test(e.message) && msg.test(e.message)));
  }
  it('several selectors may feed one PCI resource', () => {
    const c = parseConfig('pciHostDevices: [{pciVendorSelector: "10DE:1EB8", resourceName: "a.io/x"}, {pciVendorSelector: "10DE:1EB9", resourceName: "a.io/x"}]');
    assert.equal(c.pciHostDevices.length, 2);
  });
});
