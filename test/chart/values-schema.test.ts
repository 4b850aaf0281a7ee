import { strict as assert } from 'node:assert';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { CHART_DIR, SchemaError, coalesce, loadDefaultValues, render, validateValues, type Values } from './render-chart.js';

describe('chart: values.schema.json', () => {
  it('is a strict draft-07 schema: every object level closes additionalProperties unless free-form on purpose', () => {
    const schema = JSON.parse(readFileSync(path.join(CHART_DIR, 'values.schema.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(schema.$schema, 'http://json-schema.org/draft-07/schema#');
    // Free-form on purpose: passthrough Kubernetes/CNI objects and string maps.
    const freeForm = new Set(['agent.affinity', 'networks.vm.ipam', 'networks.migration.ipam']);
    const open: string[] = [];
    const walk = (node: unknown, at: string): void => {
      if (!node || typeof node !== 'object') return;
      const n = node as Record<string, unknown>;
      if (n.type === 'object' && n.properties && n.additionalProperties !== false && !freeForm.has(at)) open.push(at);
      for (const [k, v] of Object.entries((n.properties as Record<string, unknown> | undefined) ?? {})) walk(v, at ? `${at}.${k}` : k);
    };
    walk(schema, '');
    assert.deepEqual(open, []);
  });

  it('accepts the chart defaults', () => {
    assert.deepEqual(validateValues(loadDefaultValues()), []);
  });

  const good: { name: string; values: Values }[] = [
    { name: 'image pinned by digest', values: { image: { digest: `sha256:${'a'.repeat(64)}` } } },
    { name: 'registry with a port', values: { image: { repository: 'registry.local:5000/podvirt/podvirt', tag: 'v0.1.0-rc.1' } } },
    { name: 'VFIO and mdev resources', values: { devicePlugin: { pciHostDevices: [{ pciVendorSelector: '10de:1eb8', resourceName: 'nvidia.com/TU104GL' }], mediatedDevices: [{ mdevNameSelector: 'GRID T4-1Q', resourceName: 'nvidia.com/GRID_T4-1Q' }] } } },
    { name: 'percent maxUnavailable', values: { agent: { updateStrategy: { maxUnavailable: '25%' } } } },
    { name: 'resources with cpu as a number and hugepages', values: { agent: { resources: { requests: { cpu: 0.5, memory: '1Gi', 'hugepages-2Mi': '64Mi' }, limits: { memory: '1.5Gi' } } } } },
    { name: 'whereabouts IPAM passed through', values: { networks: { vm: { ipam: { type: 'whereabouts', range: '10.88.0.0/16' } } } } },
    { name: 'k0s kubelet dir', values: { kubeletDir: '/var/lib/k0s/kubelet' } },
    { name: 'SELinux sidecars', values: { csi: { sidecarSecurityContext: { seLinuxOptions: { type: 'spc_t' } } } } },
  ];
  for (const tc of good) {
    it(`accepts: ${tc.name}`, () => {
      assert.deepEqual(validateValues(coalesce(loadDefaultValues(), tc.values)), []);
    });
  }

  // Each bad value must be rejected with a message that names the key and says what is wrong.
  const bad: { name: string; values: Values; message: string }[] = [
    { name: 'unknown top-level key', values: { imagee: {} }, message: '(root): must NOT have additional properties: "imagee"' },
    { name: 'unknown nested key (typo)', values: { agent: { tolerationz: [] } }, message: 'agent: must NOT have additional properties: "tolerationz"' },
    { name: 'pullPolicy not an enum value', values: { image: { pullPolicy: 'Sometimes' } }, message: 'image.pullPolicy: must be equal to one of the allowed values ("Always", "IfNotPresent", "Never")' },
    { name: 'image tag with a slash', values: { image: { tag: 'v1/evil' } }, message: 'image.tag: must match pattern' },
    { name: 'image tag starting with a dot', values: { image: { tag: '.v1' } }, message: 'image.tag: must match pattern' },
    { name: 'upper-case repository', values: { image: { repository: 'GHCR.io/Podvirt' } }, message: 'image.repository: must match pattern' },
    { name: 'digest that is not sha256', values: { image: { digest: 'md5:abc' } }, message: 'image.digest: must match pattern' },
    { name: 'sidecar tag missing', values: { csi: { provisioner: { image: { tag: null } } } }, message: "csi.provisioner.image: must have required property 'tag'" },
    { name: 'bad memory quantity', values: { agent: { resources: { requests: { memory: '128MB' } } } }, message: 'agent.resources.requests.memory: must match pattern' },
    { name: 'negative cpu', values: { agent: { resources: { limits: { cpu: -1 } } } }, message: 'agent.resources.limits.cpu: must be >= 0' },
    { name: 'unknown resource name', values: { agent: { resources: { requests: { gpu: '1' } } } }, message: 'agent.resources.requests: must NOT have additional properties: "gpu"' },
    { name: 'deviceNodes entry outside cli.md', values: { devicePlugin: { deviceNodes: ['kvm', 'vfio'] } }, message: 'devicePlugin.deviceNodes.1: must be equal to one of the allowed values ("kvm", "tun", "vhost-net", "vhost-vsock")' },
    { name: 'duplicate deviceNodes', values: { devicePlugin: { deviceNodes: ['kvm', 'kvm'] } }, message: 'devicePlugin.deviceNodes: must NOT have duplicate items' },
    { name: 'maxDevices zero', values: { devicePlugin: { maxDevices: 0 } }, message: 'devicePlugin.maxDevices: must be >= 1' },
    { name: 'maxDevices not an integer', values: { devicePlugin: { maxDevices: 10.5 } }, message: 'devicePlugin.maxDevices: must be integer' },
    { name: 'pciVendorSelector malformed', values: { devicePlugin: { pciHostDevices: [{ pciVendorSelector: '10DE-1EB8', resourceName: 'nvidia.com/x' }] } }, message: 'devicePlugin.pciHostDevices.0.pciVendorSelector: must match pattern' },
    { name: 'resourceName without a domain', values: { devicePlugin: { mediatedDevices: [{ mdevNameSelector: 'x', resourceName: 'gpu' }] } }, message: 'devicePlugin.mediatedDevices.0.resourceName: must match pattern' },
    { name: 'relative kubeletDir', values: { kubeletDir: 'var/lib/kubelet' }, message: 'kubeletDir: must match pattern' },
    { name: 'port out of range', values: { agent: { metricsPort: 70000 } }, message: 'agent.metricsPort: must be <= 65535' },
    { name: 'log level not pino', values: { agent: { logLevel: 'verbose' } }, message: 'agent.logLevel: must be equal to one of the allowed values' },
    { name: 'extra arg that is not a flag', values: { agent: { extraArgs: ['oops'] } }, message: 'agent.extraArgs.0: must match pattern' },
    { name: 'maxUnavailable 0', values: { agent: { updateStrategy: { maxUnavailable: 0 } } }, message: 'agent.updateStrategy.maxUnavailable: must be >= 1' },
    { name: 'toleration operator', values: { agent: { tolerations: [{ operator: 'Maybe' }] } }, message: 'agent.tolerations.0.operator: must be equal to one of the allowed values ("Exists", "Equal")' },
    { name: 'bridge name longer than IFNAMSIZ', values: { networks: { vm: { bridge: 'podvirt-bridge-01' } } }, message: 'networks.vm.bridge: must match pattern' },
    { name: 'isGateway as a string', values: { networks: { vm: { isGateway: 'true' } } }, message: 'networks.vm.isGateway: must be boolean' },
    { name: 'tap owner root', values: { networks: { vm: { owner: 0 } } }, message: 'networks.vm.owner: must be >= 1' },
    { name: 'ipam without type', values: { networks: { migration: { ipam: { type: null, subnet: '10.0.0.0/8' } } } }, message: "networks.migration.ipam: must have required property 'type'" },
    { name: 'storage class name with capitals', values: { storageClass: { name: 'PodVirt' } }, message: 'storageClass.name: must match pattern' },
    { name: 'reclaimPolicy Recycle', values: { storageClass: { reclaimPolicy: 'Recycle' } }, message: 'storageClass.reclaimPolicy: must be equal to one of the allowed values ("Delete", "Retain")' },
    { name: 'fsGroupPolicy typo', values: { csi: { fsGroupPolicy: 'file' } }, message: 'csi.fsGroupPolicy: must be equal to one of the allowed values ("None", "File", "ReadWriteOnceWithFSType")' },
    { name: 'timeout without a unit', values: { csi: { timeout: '60' } }, message: 'csi.timeout: must match pattern' },
    { name: 'isDefault as a string', values: { storageClass: { isDefault: 'yes' } }, message: 'storageClass.isDefault: must be boolean' },
    { name: 'pod label that would clash with the selector', values: { agent: { podLabels: { 'app.kubernetes.io/name': 'x' } } }, message: 'agent.podLabels: property name must be valid: "app.kubernetes.io/name"' },
    { name: 'pod label key with spaces', values: { agent: { podLabels: { 'my label': 'x' } } }, message: 'agent.podLabels: property name must be valid: "my label"' },
    { name: 'snapshotter.enabled removed', values: { csi: { snapshotter: { enabled: null } } }, message: "csi.snapshotter: must have required property 'enabled'" },
  ];
  for (const tc of bad) {
    it(`rejects: ${tc.name}`, () => {
      const problems = validateValues(coalesce(loadDefaultValues(), tc.values));
      assert.ok(
        problems.some((p) => p.startsWith(tc.message)),
        `expected a message starting with ${JSON.stringify(tc.message)}, got:\n${problems.join('\n')}`,
      );
    });
  }

  it('render() refuses invalid values before rendering anything, listing every problem', () => {
    assert.throws(
      () => render({ values: { image: { pullPolicy: 'Sometimes' }, agent: { metricsPort: 0 } } }),
      (e: unknown) =>
        e instanceof SchemaError &&
        e.messages.length === 2 &&
        /values don't meet the specifications of the schema/.test(e.message) &&
        e.messages.some((m) => m.startsWith('image.pullPolicy')) &&
        e.messages.some((m) => m.startsWith('agent.metricsPort')),
    );
  });

  it('every key of values.yaml is described by the schema (no silent passthrough of defaults)', () => {
    const schema = JSON.parse(readFileSync(path.join(CHART_DIR, 'values.schema.json'), 'utf8')) as Record<string, unknown>;
    const missing: string[] = [];
    const walk = (vals: unknown, node: Record<string, unknown> | undefined, at: string): void => {
      if (!vals || typeof vals !== 'object' || Array.isArray(vals) || !node) return;
      const props = node.properties as Record<string, Record<string, unknown>> | undefined;
      // Free-form objects (CNI IPAM, affinity) pass their content through on purpose.
      if (!props || node.additionalProperties !== false) return;
      for (const [k, v] of Object.entries(vals)) {
        const sub = props[k];
        if (!sub) missing.push(`${at}${k}`);
        else walk(v, sub.$ref ? undefined : sub, `${at}${k}.`);
      }
    };
    walk(loadDefaultValues(), schema, '');
    assert.deepEqual(missing, []);
  });
});
