import { strict as assert } from 'node:assert';
import { readFileSync, readdirSync } from 'node:fs';
import * as path from 'node:path';
import { parse, parseAllDocuments } from 'yaml';
import { parseLocalManifest } from '../../agent/local/manifest.js';
import { parseNetConf } from '../../cni/netconf.js';
import { podVmInput } from '../../agent/spec/index.js';
import { PROJECT_ROOT } from '../../lib/project-root.js';
import { validateCniConfig, validateManifest } from './k8s-validate.js';
import { podSecurityViolations } from './pod-security.js';
import { loadDefaultValues, render, type Manifest } from './render-chart.js';

const EXAMPLES = path.join(PROJECT_ROOT, 'examples');

type Obj = Record<string, unknown>;
interface Container {
  name: string;
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  volumeDevices?: { name: string; devicePath: string }[];
}
interface PodSpec {
  containers: Container[];
  volumes?: { name: string; persistentVolumeClaim?: { claimName: string } }[];
  affinity?: Obj;
  restartPolicy?: string;
}

function loadFile(file: string): Manifest[] {
  const docs = parseAllDocuments(readFileSync(path.join(EXAMPLES, file), 'utf8'), { version: '1.1', uniqueKeys: true });
  return docs.map((d, i) => {
    assert.deepEqual(d.errors.map((e) => e.message), [], `${file} document ${i + 1}`);
    return d.toJS() as Manifest;
  });
}
function onlyPod(file: string): Manifest & { spec: PodSpec } {
  const pods = loadFile(file).filter((m) => m.kind === 'Pod');
  assert.equal(pods.length, 1);
  return pods[0] as Manifest & { spec: PodSpec };
}
const files = (): string[] => readdirSync(EXAMPLES).filter((f) => f.endsWith('.yaml')).sort();

describe('examples/', () => {
  it('holds a VM pod, its PVC, its networks and a migration target', () => {
    assert.deepEqual(files(), ['migration-target.yaml', 'nad-migration.yaml', 'nad-vm.yaml', 'namespace.yaml', 'pvc.yaml', 'vm-pod.yaml']);
  });

  it('every document parses (YAML 1.1, unique keys) and validates against its Kubernetes schema', () => {
    const problems: string[] = [];
    for (const f of files()) {
      for (const m of loadFile(f)) problems.push(...validateManifest(m).map((p) => `${f}: ${p}`));
    }
    assert.deepEqual(problems, []);
  });

  it('everything lives in the vms namespace, which enforces the baseline Pod Security level', () => {
    const ns = loadFile('namespace.yaml')[0] as Manifest;
    assert.equal(ns.metadata.labels?.['pod-security.kubernetes.io/enforce'], 'baseline');
    for (const f of files().filter((x) => x !== 'namespace.yaml')) {
      for (const m of loadFile(f)) assert.equal(m.metadata.namespace, 'vms', `${f} ${m.kind}`);
    }
  });

  it('the NADs carry valid podvirt configs: a tap VM network and a migration network', () => {
    const modes: Record<string, string> = {};
    for (const f of ['nad-vm.yaml', 'nad-migration.yaml']) {
      const nad = loadFile(f)[0] as Manifest & { spec: { config: string } };
      assert.deepEqual(validateCniConfig(nad.spec.config), [], f);
      const conf = JSON.parse(nad.spec.config) as { name: string; mode: string; owner?: number; bridge?: string };
      assert.equal(conf.name, nad.metadata.name);
      modes[nad.metadata.name] = conf.mode;
      if (conf.mode === 'tap') assert.equal(conf.bridge, 'podvirt0');
      // The plugin's own parser accepts it; the VM network's bridge answers DHCP from the gateway.
      assert.equal(parseNetConf(conf as unknown as Obj).isGateway, conf.mode === 'tap', f);
    }
    assert.deepEqual(modes, { 'vm-net': 'tap', 'migration-net': 'migration' });
  });

  it('the PVC is a block volume of the chart StorageClass', () => {
    const pvc = loadFile('pvc.yaml')[0] as Manifest & { spec: { storageClassName: string; volumeMode: string } };
    const values = loadDefaultValues() as { storageClass: { name: string } };
    assert.equal(pvc.spec.storageClassName, values.storageClass.name);
    assert.equal(pvc.spec.volumeMode, 'Block');
    const target = loadFile('migration-target.yaml').find((m) => m.kind === 'PersistentVolumeClaim') as Manifest & { spec: Obj };
    assert.deepEqual(target.spec, pvc.spec, 'the target claim asks for the same volume');
  });

  for (const file of ['vm-pod.yaml', 'migration-target.yaml']) {
    describe(file, () => {
      it('passes the baseline and the restricted Pod Security levels', () => {
        const pod = onlyPod(file);
        assert.deepEqual(podSecurityViolations(pod.spec, 'baseline'), []);
        assert.deepEqual(podSecurityViolations(pod.spec, 'restricted'), []);
        const sc = (pod.spec as unknown as { securityContext: Obj }).securityContext;
        assert.equal(sc.runAsNonRoot, true);
        assert.notEqual(sc.runAsUser, 0);
      });

      it('is Guaranteed QoS with whole CPUs and asks for /dev/kvm and /dev/net/tun', () => {
        const pod = onlyPod(file);
        for (const c of pod.spec.containers) {
          const req = c.resources?.requests ?? {};
          const lim = c.resources?.limits ?? {};
          assert.deepEqual(req, lim, `${c.name}: requests must equal limits`);
          assert.ok(req.cpu && /^[1-9][0-9]*$/.test(req.cpu), `${c.name}: whole CPUs for exclusive cores`);
          assert.ok(req.memory);
        }
        const lim = pod.spec.containers[0]?.resources?.limits ?? {};
        assert.equal(lim['devices.kubevirt.io/kvm'], '1');
        assert.equal(lim['devices.kubevirt.io/tun'], '1');
        assert.equal(pod.spec.restartPolicy, 'Never');
      });

      it('its VM spec annotation parses and agrees with the pod (CPUs, memory, volumes, networks)', () => {
        const pod = onlyPod(file);
        const ann = pod.metadata.annotations ?? {};
        const spec = parse(ann['vm.podvirt.io/spec'] ?? '', { version: '1.1' }) as {
          cpus: number;
          memory: string;
          accel: string;
          kernel: string;
          initrd: string;
          cmdline: string;
          disks: { name: string; volume: string }[];
          interfaces: { name: string; network: string }[];
        };
        for (const k of ['cpus', 'memory', 'accel', 'kernel', 'initrd', 'cmdline', 'disks', 'interfaces']) assert.ok(k in spec, `spec lacks ${k}`);
        assert.ok(['auto', 'kvm', 'tcg'].includes(spec.accel));
        const c0 = pod.spec.containers[0] as Container;
        assert.equal(String(spec.cpus), c0.resources?.limits?.cpu, 'one exclusive CPU per vCPU');
        const local = parseLocalManifest(readFileSync(path.join(EXAMPLES, file), 'utf8'));
        assert.ok((local.memoryLimitBytes ?? 0) > 512 * 2 ** 20, 'the pod leaves room for QEMU beside the guest memory');
        const withDevice = new Set((c0.volumeDevices ?? []).map((d) => d.name));
        for (const d of spec.disks) assert.ok(withDevice.has(d.volume), `disk ${d.name}: pod volume ${d.volume} is a volumeDevice of the container`);
        const nets = JSON.parse(ann['k8s.v1.cni.cncf.io/networks'] ?? '[]') as { name: string; mac?: string; 'cni-args'?: { ipamKey?: string } }[];
        const nadNames = ['nad-vm.yaml', 'nad-migration.yaml'].map((f) => (loadFile(f)[0] as Manifest).metadata.name);
        for (const n of nets) assert.ok(nadNames.includes(n.name), `network ${n.name} has a NAD in examples/`);
        for (const i of spec.interfaces) assert.ok(nets.some((n) => n.name === i.network), `interface ${i.name}: network ${i.network} is attached`);
        assert.ok(nets.some((n) => n.name === 'migration-net'), 'the migration network is attached');
        assert.ok(nets.find((n) => n.name === 'vm-net')?.mac, 'the VM NIC has a fixed MAC (it must not change on migration)');
        const vmNet = nets.find((n) => n.name === 'vm-net');
        assert.ok(vmNet?.['cni-args']?.ipamKey, "the VM's address belongs to the VM from its first pod on (an IPAM key)");
        // Multus passes cni-args as args.cni: the plugin's own parser must accept the key.
        assert.equal(parseNetConf({ cniVersion: '1.0.0', name: 'vm-net', type: 'podvirt', args: { cni: vmNet['cni-args'] } }).args.ipamKey, vmNet['cni-args'].ipamKey);
      });

      it("the agent's own VM spec parser accepts it, with a Guaranteed pod sized for the VM", () => {
        const input = podVmInput(onlyPod(file));
        assert.equal(input.container, 'compute');
        assert.equal(input.resources.guaranteed, true);
        assert.equal(input.resources.cpus, input.spec.cpus, 'one exclusive CPU per vCPU');
        assert.ok((input.resources.memoryBytes ?? 0) > input.spec.memory, 'room for QEMU beside the guest memory');
        assert.deepEqual(input.resources.extended, { 'devices.kubevirt.io/kvm': 1, 'devices.kubevirt.io/tun': 1 });
        assert.deepEqual(input.volumes.data, { kind: 'block', devicePath: '/dev/vm/data' });
        assert.deepEqual(input.volumes.run, { kind: 'filesystem', mountPath: '/run/podvirt', readOnly: false }, 'a writable run dir for QEMU under the read-only root');
        assert.deepEqual(input.spec.disks.map((d) => [d.name, d.volume, d.type]), [['data', 'data', 'block']]);
        assert.deepEqual(input.spec.interfaces.map((i) => [i.name, i.network, i.binding]), [['net0', 'vm-net', 'tap']]);
      });

      it('the local-mode manifest parser accepts it together with its PVC and NADs', () => {
        const text = [file, 'pvc.yaml', 'nad-vm.yaml', 'nad-migration.yaml'].map((f) => readFileSync(path.join(EXAMPLES, f), 'utf8')).join('\n---\n');
        const local = parseLocalManifest(text);
        assert.equal(local.namespace, 'vms');
        assert.deepEqual([...local.nads.keys()].sort(), ['migration-net', 'vm-net']);
        assert.deepEqual(local.deviceResources, { 'devices.kubevirt.io/kvm': 1, 'devices.kubevirt.io/tun': 1 });
        assert.equal(local.cpuLimit, 2);
        assert.deepEqual(local.networks.map((n) => n.interface), ['net1', 'mig0']);
      });
    });
  }

  it('the migration target runs the same VM, names its source and avoids the source node', () => {
    const src = onlyPod('vm-pod.yaml');
    const dst = onlyPod('migration-target.yaml');
    const a = (p: Manifest, k: string): string | undefined => p.metadata.annotations?.[k];
    assert.equal(a(dst, 'vm.podvirt.io/spec'), a(src, 'vm.podvirt.io/spec'));
    assert.equal(a(dst, 'k8s.v1.cni.cncf.io/networks'), a(src, 'k8s.v1.cni.cncf.io/networks'));
    assert.equal(a(dst, 'vm.podvirt.io/migrate-from'), `${src.metadata.namespace}/${src.metadata.name}`);
    assert.equal(a(src, 'vm.podvirt.io/migrate-from'), undefined);
    const anti = ((dst.spec.affinity?.podAntiAffinity as Obj).requiredDuringSchedulingIgnoredDuringExecution as { topologyKey: string; labelSelector: { matchLabels: Record<string, string> } }[])[0];
    assert.equal(anti?.topologyKey, 'kubernetes.io/hostname');
    for (const [k, v] of Object.entries(anti?.labelSelector.matchLabels ?? {})) assert.equal(src.metadata.labels?.[k], v, 'the selector matches the source pod');
    const claim = (p: Manifest & { spec: PodSpec }): string | undefined => p.spec.volumes?.[0]?.persistentVolumeClaim?.claimName;
    assert.notEqual(claim(dst), claim(src), 'node-local disks: the target gets a claim of its own');
  });
});

describe('chart tooling: the Pod Security checker is not vacuous', () => {
  it('the agent DaemonSet pod breaks baseline in exactly the documented ways', () => {
    const ds = render({}).all.find((m) => m.kind === 'DaemonSet') as Manifest & { spec: { template: { spec: unknown } } };
    const v = podSecurityViolations(ds.spec.template.spec, 'baseline');
    const hostPaths = ['kubelet-dir', 'csi-socket-dir', 'registration-dir', 'state-dir', 'run-dir', 'netns-dir', 'dev', 'sys', 'cgroup', 'cni-bin-dir'];
    assert.deepEqual(v.sort(), ['hostNetwork is true', 'hostPID is true', 'container agent is privileged', ...hostPaths.map((h) => `volume ${h} is a hostPath`)].sort());
  });

  const bad: { name: string; spec: Obj; level: 'baseline' | 'restricted'; want: string }[] = [
    { name: 'added SYS_ADMIN', spec: { containers: [{ name: 'c', securityContext: { capabilities: { add: ['SYS_ADMIN'] } } }] }, level: 'baseline', want: 'container c adds capability SYS_ADMIN' },
    { name: 'hostPort', spec: { containers: [{ name: 'c', ports: [{ containerPort: 80, hostPort: 80 }] }] }, level: 'baseline', want: 'container c uses hostPort 80' },
    { name: 'unconfined seccomp', spec: { securityContext: { seccompProfile: { type: 'Unconfined' } }, containers: [{ name: 'c' }] }, level: 'baseline', want: 'pod seccompProfile Unconfined' },
    { name: 'unsafe sysctl', spec: { securityContext: { sysctls: [{ name: 'net.core.somaxconn', value: '1' }] }, containers: [{ name: 'c' }] }, level: 'baseline', want: 'unsafe sysctl net.core.somaxconn' },
    { name: 'root allowed', spec: { containers: [{ name: 'c', securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] }, seccompProfile: { type: 'RuntimeDefault' } } }] }, level: 'restricted', want: 'container c runAsNonRoot is not true' },
    { name: 'capabilities kept', spec: { securityContext: { runAsNonRoot: true, seccompProfile: { type: 'RuntimeDefault' } }, containers: [{ name: 'c', securityContext: { allowPrivilegeEscalation: false } }] }, level: 'restricted', want: 'container c does not drop ALL capabilities' },
    { name: 'hostPath volume', spec: { volumes: [{ name: 'h', hostPath: { path: '/' } }], containers: [{ name: 'c' }] }, level: 'baseline', want: 'volume h is a hostPath' },
  ];
  for (const tc of bad) {
    it(`flags: ${tc.name}`, () => {
      assert.ok(podSecurityViolations(tc.spec, tc.level).includes(tc.want), podSecurityViolations(tc.spec, tc.level).join('; '));
    });
  }
});
