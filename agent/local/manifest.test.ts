import { strict as assert } from 'node:assert';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseLocalManifest, parseNetworks } from './manifest.js';
import { parseBytes, wholeCpus } from './quantity.js';
import { resolveNetworkConfig } from './networks.js';
import { localPaths } from './paths.js';
import { callControl, serveControl } from './control.js';
import { NotFound } from '../../lib/errors.js';

const POD = `
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data, annotations: {podvirt.io/parameters: '{"fsType":"xfs"}'}}
spec: {volumeMode: Block, resources: {requests: {storage: 64Mi}}}
---
apiVersion: v1
kind: Pod
metadata:
  name: vm1
  annotations:
    vm.podvirt.io/spec: |
      cpus: 1
      memory: 128Mi
    k8s.v1.cni.cncf.io/networks: podvirt0, other/net2@eth5
spec:
  containers:
    - name: compute
      resources:
        limits: {cpu: "2", memory: 1Gi, devices.kubevirt.io/kvm: 1, devices.kubevirt.io/tun: "1"}
      volumeDevices: [{name: root, devicePath: /dev/vm-root}]
      volumeMounts: [{name: scratch, mountPath: /scratch}]
  volumes:
    - name: root
      persistentVolumeClaim: {claimName: data}
    - name: scratch
      ephemeral:
        volumeClaimTemplate:
          spec: {resources: {requests: {storage: 32Mi}}}
---
kind: NetworkAttachmentDefinition
metadata: {name: net2}
spec: {config: '{"cniVersion":"1.0.0","type":"podvirt","bridge":"br9","ipam":{"type":"host-local","ranges":[[{"subnet":"10.9.0.0/24"}]]}}'}
`;

describe('agent/local: manifest', () => {
  it('reads the pod, its claims, networks, NADs and resources', () => {
    const p = parseLocalManifest(POD);
    assert.equal(p.name, 'vm1');
    assert.match(p.vmSpec, /cpus: 1/);
    assert.deepEqual(p.volumes, [
      { name: 'root', claim: 'data', containerPath: '/dev/vm-root' },
      { name: 'scratch', claim: 'vm1-scratch', containerPath: '/scratch' },
    ]);
    assert.deepEqual(p.claims, [
      { name: 'data', sizeBytes: 64 << 20, volumeMode: 'Block', ephemeral: false, parameters: { fsType: 'xfs' } },
      { name: 'vm1-scratch', sizeBytes: 32 << 20, volumeMode: 'Filesystem', ephemeral: true, parameters: {} },
    ]);
    assert.deepEqual(p.networks.map((n) => [n.name, n.namespace, n.interface]), [['podvirt0', undefined, undefined], ['net2', 'other', 'eth5']]);
    assert.ok(p.nads.has('net2'));
    assert.equal(p.cpuLimit, 2);
    assert.equal(p.memoryLimitBytes, 1 << 30);
    assert.deepEqual(p.deviceResources, { 'devices.kubevirt.io/kvm': 1, 'devices.kubevirt.io/tun': 1 });
  });

  const bad: [string, string, RegExp][] = [
    ['no pod', 'kind: Service\n', /exactly one Pod/],
    ['no spec annotation', 'kind: Pod\nmetadata: {name: a}\n', /vm.podvirt.io\/spec.*required/],
    ['bad name', 'kind: Pod\nmetadata: {name: A_b, annotations: {vm.podvirt.io/spec: "x"}}\n', /DNS label/],
    ['hostPath volume', 'kind: Pod\nmetadata: {name: a, annotations: {vm.podvirt.io/spec: "x"}}\nspec: {volumes: [{name: h, hostPath: {path: /}}]}\n', /spec.volumes\[0\] \(h\).*persistentVolumeClaim, ephemeral and emptyDir/],
    ['bad size', 'kind: PersistentVolumeClaim\nmetadata: {name: d}\nspec: {resources: {requests: {storage: lots}}}\n---\nkind: Pod\nmetadata: {name: a, annotations: {vm.podvirt.io/spec: "x"}}\n', /PersistentVolumeClaim d.spec.resources.requests.storage: "lots" is not a size/],
    ['yaml error', 'kind: Pod\nmetadata: {name: [\n', /FILE document 1/],
  ];
  for (const [name, text, re] of bad) it(`rejects: ${name}`, () => assert.throws(() => parseLocalManifest(text), re));

  it('parses the networks annotation in both forms', () => {
    assert.deepEqual(parseNetworks('[{"name":"a","interface":"net1","mac":"02:00:00:00:00:01","ips":["10.0.0.5/24"]}]'), [
      { name: 'a', namespace: undefined, interface: 'net1', mac: '02:00:00:00:00:01', ips: ['10.0.0.5/24'] },
    ]);
    assert.throws(() => parseNetworks('a b'), /cannot parse/);
    assert.deepEqual(parseNetworks(undefined), []);
  });

  it('parses quantities', () => {
    assert.equal(parseBytes('1Gi', 'x'), 1 << 30);
    assert.equal(parseBytes('1.5Ki', 'x'), 1536);
    assert.equal(parseBytes(4096, 'x'), 4096);
    assert.throws(() => parseBytes('-1', 'f'), /f: "-1" is not a size/);
    assert.equal(wholeCpus('2000m'), 2);
    assert.equal(wholeCpus('1500m'), undefined);
  });

  it('resolves network configs: FILE, dir, embedded default; host-local gets a private dataDir', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'pvtl-nad-'));
    try {
      await fs.writeFile(path.join(dir, 'fromdir.json'), '{"cniVersion":"1.0.0","type":"podvirt","bridge":"x","ipam":{"type":"static"}}');
      const d = await resolveNetworkConfig('podvirt0', new Map(), dir, '/s/ipam');
      assert.equal(d.bridge, 'podvirt0');
      assert.equal((d.ipam as { dataDir: string }).dataDir, '/s/ipam');
      const f = await resolveNetworkConfig('fromdir', new Map(), dir, '/s/ipam');
      assert.equal(f.name, 'fromdir');
      assert.equal((f.ipam as { dataDir?: string }).dataDir, undefined);
      const n = await resolveNetworkConfig('net2', parseLocalManifest(POD).nads, dir, '/s/ipam');
      assert.equal(n.bridge, 'br9');
      await assert.rejects(resolveNetworkConfig('missing', new Map(), dir, '/s'), NotFound);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it('paths: flags over env over defaults', () => {
    assert.deepEqual(localPaths({}, {}), { stateDir: '/var/lib/podvirt/local', runDir: '/run/podvirt' });
    assert.deepEqual(localPaths({ 'run-dir': '/r' }, { PODVIRT_STATE_DIR: '/s', PODVIRT_RUN_DIR: '/x' }), { stateDir: '/s', runDir: '/r' });
    assert.throws(() => localPaths({ 'run-dir': '/' + 'x'.repeat(80) }, {}), /too long/);
  });

  it('control socket: JSON calls, typed errors cross the socket, absent agent is Unavailable', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'pvtl-ctl-'));
    const sock = path.join(dir, 'a.sock');
    const server = await serveControl(sock, [
      { method: 'POST', path: '/echo/:name', handler: async (body, [name]) => ({ name, body }) },
      { method: 'GET', path: '/missing', handler: async () => { throw new NotFound('no pod x'); } },
    ]);
    try {
      assert.deepEqual(await callControl(sock, 'POST', '/echo/a%20b', { x: 1 }), { name: 'a b', body: { x: 1 } });
      await assert.rejects(callControl(sock, 'GET', '/missing'), (e: Error & { kind?: string }) => e.kind === 'NotFound' && /no pod x/.test(e.message));
      await assert.rejects(callControl(sock, 'GET', '/nope'), (e: Error & { kind?: string }) => e.kind === 'NotFound');
    } finally {
      await new Promise((r) => server.close(r));
    }
    await assert.rejects(callControl(path.join(dir, 'none.sock'), 'GET', '/x'), (e: Error & { kind?: string }) => e.kind === 'Unavailable');
    await fs.rm(dir, { recursive: true, force: true });
  });
});
