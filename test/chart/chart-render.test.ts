import { strict as assert } from 'node:assert';
import { main as agentMain } from '../../agent/kube/main.js';
import { AGENT_CONTAINER, AGENT_SELECTOR } from '../../agent/kube/kubectl/console.js';
import { parseNetConf } from '../../cni/netconf.js';
import { parseConfig } from '../../plugins/config.js';
import { validateCniConfig, validateManifest } from './k8s-validate.js';
import { render, type Manifest, type RenderOptions, type Rendered } from './render-chart.js';

const SNAPSHOT_API = 'snapshot.storage.k8s.io/v1/VolumeSnapshotClass';
const NAD_API = 'k8s.cni.cncf.io/v1/NetworkAttachmentDefinition';
const MONITOR_API = 'monitoring.coreos.com/v1/ServiceMonitor';
const CLUSTER_SCOPED = new Set(['ClusterRole', 'ClusterRoleBinding', 'CSIDriver', 'StorageClass', 'VolumeSnapshotClass']);
const REQUIRED_LABELS = [
  'app.kubernetes.io/name',
  'app.kubernetes.io/instance',
  'app.kubernetes.io/version',
  'app.kubernetes.io/component',
  'app.kubernetes.io/part-of',
  'app.kubernetes.io/managed-by',
];

type Obj = Record<string, unknown>;
interface Container {
  name: string;
  image: string;
  args?: string[];
  env?: { name: string; value?: string; valueFrom?: { fieldRef?: { fieldPath: string } } }[];
  securityContext?: Obj & { capabilities?: { add?: string[]; drop?: string[] } };
  volumeMounts?: { name: string; mountPath: string; mountPropagation?: string; readOnly?: boolean; subPath?: string }[];
}
interface PodSpec {
  hostNetwork?: boolean;
  hostPID?: boolean;
  hostIPC?: boolean;
  serviceAccountName: string;
  initContainers?: Container[];
  containers: Container[];
  volumes: ({ name: string; hostPath?: { path: string; type?: string }; configMap?: { name: string } } & Obj)[];
  tolerations?: unknown[];
  affinity?: unknown;
}

function one(r: Rendered, kind: string, name?: string): Manifest {
  const found = r.all.filter((m) => m.kind === kind && (name === undefined || m.metadata.name === name));
  assert.equal(found.length, 1, `expected exactly one ${kind}${name ? ` ${name}` : ''}, got ${found.length}`);
  return found[0] as Manifest;
}
const podSpec = (r: Rendered): PodSpec => ((one(r, 'DaemonSet').spec as Obj).template as { spec: PodSpec }).spec;
const container = (r: Rendered, name: string): Container => {
  const c = podSpec(r).containers.find((x) => x.name === name);
  assert.ok(c, `no container ${name}`);
  return c;
};
const flag = (c: Container, name: string): string | undefined =>
  c.args?.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);

// The table of values cases: every manifest each one produces must validate.
const CASES: { name: string; opts: RenderOptions; kinds: string[] }[] = [
  {
    name: 'defaults on a bare cluster (no snapshot API, no Multus)',
    opts: {},
    kinds: ['ClusterRole', 'ClusterRoleBinding', 'ConfigMap', 'CSIDriver', 'DaemonSet', 'Role', 'RoleBinding', 'Service', 'ServiceAccount', 'StorageClass'],
  },
  {
    name: 'defaults with the snapshot API and Multus',
    opts: { apiVersions: [SNAPSHOT_API, NAD_API] },
    kinds: ['ClusterRole', 'ClusterRoleBinding', 'ConfigMap', 'CSIDriver', 'DaemonSet', 'NetworkAttachmentDefinition', 'NetworkAttachmentDefinition', 'Role', 'RoleBinding', 'Service', 'ServiceAccount', 'StorageClass', 'VolumeSnapshotClass'],
  },
  {
    name: 'everything optional switched off, existing service account',
    opts: {
      apiVersions: [SNAPSHOT_API, NAD_API],
      values: {
        rbac: { create: false },
        serviceAccount: { create: false, name: 'podvirt-existing' },
        storageClass: { create: false },
        volumeSnapshotClass: { create: false },
        networks: { vm: { create: false }, migration: { create: false } },
        cni: { install: false },
        csi: { snapshotter: { enabled: false }, resizer: { enabled: false } },
        metrics: { service: { enabled: false }, serviceMonitor: { enabled: true } },
      },
    },
    kinds: ['ConfigMap', 'CSIDriver', 'DaemonSet'],
  },
  {
    name: 'customised: release name containing the chart name, k0s kubelet dir, digest, VFIO, default classes',
    opts: {
      releaseName: 'podvirt-prod',
      namespace: 'virt',
      apiVersions: [SNAPSHOT_API, NAD_API, MONITOR_API],
      values: {
        metrics: { serviceMonitor: { enabled: true, interval: '15s', labels: { release: 'kube-prometheus' } } },
        kubeletDir: '/var/lib/k0s/kubelet',
        image: { repository: 'registry.local:5000/podvirt', digest: `sha256:${'b'.repeat(64)}`, pullPolicy: 'Always' },
        imagePullSecrets: [{ name: 'regcred' }],
        agent: {
          extraArgs: ['--stop-timeout=60'],
          podAnnotations: { 'prometheus.io/scrape': 'true' },
          podLabels: { team: 'virt' },
          tolerations: [{ key: 'virt', operator: 'Exists', effect: 'NoSchedule' }],
          affinity: { nodeAffinity: { requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: [{ matchExpressions: [{ key: 'kvm', operator: 'In', values: ['yes'] }] }] } } },
          priorityClassName: '',
          resources: { requests: { cpu: '250m', memory: '256Mi' }, limits: { memory: '1Gi' } },
        },
        devicePlugin: {
          maxDevices: 110,
          deviceNodes: ['kvm', 'tun'],
          pciHostDevices: [{ pciVendorSelector: '10DE:1EB8', resourceName: 'nvidia.com/TU104GL' }],
          mediatedDevices: [{ mdevNameSelector: 'GRID T4-1Q', resourceName: 'nvidia.com/GRID_T4-1Q' }],
        },
        storageClass: { isDefault: true, parameters: { fsType: 'xfs' }, annotations: { 'example.com/tier': 'local' } },
        volumeSnapshotClass: { isDefault: true, deletionPolicy: 'Retain' },
        networks: { namespace: 'vms', vm: { name: 'vm-net', bridge: 'br-vm', mtu: 9000, multiQueue: false, ipam: { type: 'whereabouts', range: '10.70.0.0/16' } } },
      },
    },
    kinds: ['ClusterRole', 'ClusterRoleBinding', 'ConfigMap', 'CSIDriver', 'DaemonSet', 'NetworkAttachmentDefinition', 'NetworkAttachmentDefinition', 'Role', 'RoleBinding', 'Service', 'ServiceAccount', 'ServiceMonitor', 'StorageClass', 'VolumeSnapshotClass'],
  },
  {
    name: 'fullnameOverride and nameOverride',
    opts: { releaseName: 'x', values: { fullnameOverride: 'pv', nameOverride: 'vmm' } },
    kinds: ['ClusterRole', 'ClusterRoleBinding', 'ConfigMap', 'CSIDriver', 'DaemonSet', 'Role', 'RoleBinding', 'Service', 'ServiceAccount', 'StorageClass'],
  },
];

describe('chart: rendered manifests', () => {
  for (const tc of CASES) {
    describe(tc.name, () => {
      let r: Rendered;
      before(() => {
        r = render(tc.opts);
      });

      it('produces exactly the expected objects', () => {
        assert.deepEqual(r.all.map((m) => m.kind).sort(), [...tc.kinds].sort());
        const ids = r.all.map((m) => `${m.kind}/${m.metadata.namespace ?? ''}/${m.metadata.name}`);
        assert.equal(new Set(ids).size, ids.length, 'duplicate objects');
      });

      it('every object validates against its Kubernetes schema (no unknown fields)', () => {
        const problems = r.all.flatMap((m) => validateManifest(m).map((p) => `${m.kind} ${m.metadata.name}: ${p}`));
        assert.deepEqual(problems, []);
      });

      it('every object carries the app.kubernetes.io labels; namespaces are right', () => {
        const ns = tc.opts.namespace ?? 'podvirt';
        for (const m of r.all) {
          for (const l of REQUIRED_LABELS) assert.ok(m.metadata.labels?.[l], `${m.kind} ${m.metadata.name} lacks ${l}`);
          assert.equal(m.metadata.labels?.['app.kubernetes.io/managed-by'], 'Helm');
          assert.equal(m.metadata.labels?.['app.kubernetes.io/part-of'], 'podvirt');
          if (CLUSTER_SCOPED.has(m.kind)) assert.equal(m.metadata.namespace, undefined, `${m.kind} is cluster-scoped`);
          else if (m.kind === 'NetworkAttachmentDefinition') {
            const nsWanted = ((tc.opts.values?.networks as Obj | undefined)?.namespace as string | undefined) || ns;
            assert.equal(m.metadata.namespace, nsWanted);
          } else assert.equal(m.metadata.namespace, ns, `${m.kind} ${m.metadata.name} namespace`);
        }
        const ds = one(r, 'DaemonSet');
        const spec = ds.spec as { selector: { matchLabels: Record<string, string> }; template: { metadata: { labels: Record<string, string> } } };
        for (const l of REQUIRED_LABELS) assert.ok(spec.template.metadata.labels[l], `pod template lacks ${l}`);
        for (const [k, v] of Object.entries(spec.selector.matchLabels)) assert.equal(spec.template.metadata.labels[k], v, 'selector must match the template');
        for (const svc of r.all.filter((m) => m.kind === 'Service')) {
          const sel = (svc.spec as { selector: Record<string, string> }).selector;
          assert.deepEqual(sel, spec.selector.matchLabels, 'the metrics Service selects exactly the agent pods');
        }
        for (const sm of r.all.filter((m) => m.kind === 'ServiceMonitor')) {
          const svc = one(r, 'Service');
          assert.deepEqual((sm.spec as { selector: { matchLabels: Record<string, string> } }).selector.matchLabels, spec.selector.matchLabels);
          for (const [k, v] of Object.entries((sm.spec as { selector: { matchLabels: Record<string, string> } }).selector.matchLabels)) assert.equal(svc.metadata.labels?.[k], v, 'the ServiceMonitor selects the Service');
        }
        assert.ok(!('app.kubernetes.io/version' in spec.selector.matchLabels), 'the selector must survive upgrades (no version in it)');
      });

      it('RBAC: no wildcards, only the documented rules, bound to the agent service account', () => {
        const roles = r.all.filter((m) => m.kind === 'ClusterRole' || m.kind === 'Role');
        for (const role of roles) {
          for (const rule of (role.rules ?? []) as { apiGroups: string[]; resources: string[]; verbs: string[] }[]) {
            for (const list of [rule.apiGroups, rule.resources, rule.verbs]) assert.ok(!list.some((x) => x.includes('*')), `wildcard in ${role.kind}`);
            assert.ok(!rule.verbs.includes('escalate') && !rule.verbs.includes('bind') && !rule.verbs.includes('impersonate'));
            if (role.kind === 'ClusterRole') assert.ok(!rule.resources.includes('secrets'), 'no cluster-wide access to Secrets');
          }
        }
        const sa = podSpec(r).serviceAccountName;
        for (const b of r.all.filter((m) => m.kind.endsWith('Binding'))) {
          const subjects = b.subjects as { kind: string; name: string; namespace: string }[];
          assert.deepEqual(subjects, [{ kind: 'ServiceAccount', name: sa, namespace: tc.opts.namespace ?? 'podvirt' }]);
          const ref = b.roleRef as { kind: string; name: string };
          assert.ok(r.all.some((m) => m.kind === ref.kind && m.metadata.name === ref.name), `${b.kind} points at a missing ${ref.kind}`);
        }
      });

      it('the CSI socket path is one path everywhere', () => {
        const values = r.values as { kubeletDir: string };
        const socketDir = `${values.kubeletDir}/plugins/csi.podvirt.io`;
        const spec = podSpec(r);
        assert.equal(spec.volumes.find((v) => v.name === 'csi-socket-dir')?.hostPath?.path, socketDir);
        assert.equal(flag(container(r, 'agent'), 'csi-endpoint'), `unix://${socketDir}/csi.sock`);
        assert.equal(flag(container(r, 'node-driver-registrar'), 'kubelet-registration-path'), `${socketDir}/csi.sock`);
        for (const c of spec.containers.filter((x) => x.name !== 'agent')) {
          assert.equal(flag(c, 'csi-address'), '/csi/csi.sock', c.name);
          assert.ok(c.volumeMounts?.some((m) => m.name === 'csi-socket-dir' && m.mountPath === '/csi'), `${c.name} mounts the socket dir at /csi`);
        }
        // The agent sees kubelet paths verbatim (NodePublish target paths must resolve inside it).
        assert.ok(container(r, 'agent').volumeMounts?.some((m) => m.name === 'kubelet-dir' && m.mountPath === values.kubeletDir));
        assert.equal(spec.volumes.find((v) => v.name === 'registration-dir')?.hostPath?.path, `${values.kubeletDir}/plugins_registry`);
      });

      it('the device plugin config is valid for the device plugin and reaches the agent as a watched file', () => {
        const cm = one(r, 'ConfigMap');
        const text = (cm.data as Record<string, string>)['config.yaml'] as string;
        const parsed = parseConfig(text, 'rendered config.yaml');
        const dp = (r.values as { devicePlugin: { maxDevices: number; deviceNodes: string[]; pciHostDevices: { pciVendorSelector: string; resourceName: string }[]; mediatedDevices: unknown[] } }).devicePlugin;
        assert.equal(parsed.maxDevices, dp.maxDevices);
        assert.deepEqual(parsed.deviceNodes, dp.deviceNodes);
        assert.deepEqual(parsed.pciHostDevices, dp.pciHostDevices.map((d) => ({ ...d, pciVendorSelector: d.pciVendorSelector.toUpperCase() })));
        assert.deepEqual(parsed.mediatedDevices, dp.mediatedDevices);
        const agent = container(r, 'agent');
        const mount = agent.volumeMounts?.find((m) => m.name === 'device-plugin-config');
        assert.ok(mount && !mount.subPath, 'mounted as a directory: subPath mounts never see ConfigMap updates');
        assert.equal(flag(agent, 'device-plugin-config'), `${mount.mountPath}/config.yaml`);
        assert.equal(podSpec(r).volumes.find((v) => v.name === 'device-plugin-config')?.configMap?.name, cm.metadata.name);
      });

      it('NetworkAttachmentDefinitions carry valid podvirt CNI configs', () => {
        for (const nad of r.all.filter((m) => m.kind === 'NetworkAttachmentDefinition')) {
          const text = (nad.spec as { config: string }).config;
          assert.deepEqual(validateCniConfig(text), [], nad.metadata.name);
          const conf = JSON.parse(text) as { name: string; mode: string; capabilities?: Obj };
          assert.equal(conf.name, nad.metadata.name);
          assert.ok(conf.mode === 'tap' || conf.mode === 'migration');
          if (conf.mode === 'tap') assert.deepEqual(conf.capabilities, { mac: true, ips: true }, 'runtimeConfig.mac/ips only arrive when declared');
        }
      });
    });
  }

  describe('what the agent may do (docs/chart.md lists and justifies each)', () => {
    let r: Rendered;
    before(() => {
      r = render({});
    });

    it('pod level: host network and host PID, nothing else from the host', () => {
      const spec = podSpec(r);
      assert.equal(spec.hostNetwork, true);
      assert.equal(spec.hostPID, true);
      assert.equal(spec.hostIPC, undefined);
      assert.equal((one(r, 'DaemonSet').spec as { template: { spec: Obj } }).template.spec.dnsPolicy, 'ClusterFirstWithHostNet');
    });

    it('exactly these host paths, each where the documentation says', () => {
      const hostPaths = Object.fromEntries(podSpec(r).volumes.filter((v) => v.hostPath).map((v) => [v.name, v.hostPath?.path]));
      assert.deepEqual(hostPaths, {
        'kubelet-dir': '/var/lib/kubelet',
        'csi-socket-dir': '/var/lib/kubelet/plugins/csi.podvirt.io',
        'registration-dir': '/var/lib/kubelet/plugins_registry',
        'state-dir': '/var/lib/podvirt',
        'run-dir': '/run/podvirt',
        'netns-dir': '/run/netns',
        dev: '/dev',
        sys: '/sys',
        cgroup: '/sys/fs/cgroup',
        'cni-bin-dir': '/opt/cni/bin',
      });
    });

    it('agent container: privileged (Bidirectional propagation requires it), root, read-only root fs', () => {
      const a = container(r, 'agent');
      assert.deepEqual(a.securityContext, { privileged: true, runAsUser: 0, readOnlyRootFilesystem: true });
      const mounts = Object.fromEntries((a.volumeMounts ?? []).map((m) => [m.name, m]));
      const propagation = Object.fromEntries(Object.entries(mounts).map(([k, m]) => [k, m.mountPropagation ?? 'None']));
      assert.deepEqual(propagation, {
        'kubelet-dir': 'Bidirectional',
        'state-dir': 'Bidirectional',
        'run-dir': 'None',
        'netns-dir': 'HostToContainer',
        dev: 'None',
        sys: 'None',
        cgroup: 'HostToContainer',
        'device-plugin-config': 'None',
        'cni-bin-dir': 'None',
        tmp: 'None',
      });
      assert.equal(mounts.sys?.readOnly, true, '/sys is read-only; only the cgroup tree below it is writable');
      assert.equal(mounts['device-plugin-config']?.readOnly, true);
    });

    it('sidecars: unprivileged, no privilege escalation, every capability dropped, only the socket dirs', () => {
      const sidecars = podSpec(r).containers.filter((c) => c.name !== 'agent');
      assert.deepEqual(sidecars.map((c) => c.name), ['node-driver-registrar', 'csi-provisioner', 'csi-snapshotter', 'csi-resizer']);
      for (const c of sidecars) {
        const sc = c.securityContext ?? {};
        assert.notEqual(sc.privileged, true, c.name);
        assert.equal(sc.allowPrivilegeEscalation, false, c.name);
        assert.deepEqual(sc.capabilities, { drop: ['ALL'] }, c.name);
        assert.equal(sc.readOnlyRootFilesystem, true, c.name);
        const mounts = (c.volumeMounts ?? []).map((m) => m.name).sort();
        assert.deepEqual(mounts, c.name === 'node-driver-registrar' ? ['csi-socket-dir', 'registration-dir'] : ['csi-socket-dir'], c.name);
        assert.ok(!(c.volumeMounts ?? []).some((m) => m.mountPropagation), `${c.name} needs no mount propagation`);
      }
      assert.equal(podSpec(r).initContainers, undefined, 'no init containers: the agent installs the CNI executable itself');
    });

    it('images: the podvirt image at the chart appVersion, sidecars pinned to registry.k8s.io/sig-storage releases', () => {
      assert.equal(container(r, 'agent').image, 'ghcr.io/podvirt/podvirt:0.1.0');
      const images = Object.fromEntries(podSpec(r).containers.filter((c) => c.name !== 'agent').map((c) => [c.name, c.image]));
      assert.deepEqual(images, {
        'node-driver-registrar': 'registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.17.0',
        'csi-provisioner': 'registry.k8s.io/sig-storage/csi-provisioner:v6.3.0',
        'csi-snapshotter': 'registry.k8s.io/sig-storage/csi-snapshotter:v8.6.0',
        'csi-resizer': 'registry.k8s.io/sig-storage/csi-resizer:v2.2.1',
      });
    });

    it('external-provisioner runs per node with topology, capacity and its downward-API variables', () => {
      const p = container(r, 'csi-provisioner');
      for (const a of ['--node-deployment=true', '--feature-gates=Topology=true', '--strict-topology=true', '--immediate-topology=false', '--enable-capacity=true', '--capacity-ownerref-level=1']) {
        assert.ok(p.args?.includes(a), `provisioner lacks ${a}`);
      }
      const env = Object.fromEntries((p.env ?? []).map((e) => [e.name, e.valueFrom?.fieldRef?.fieldPath]));
      assert.deepEqual(env, { NODE_NAME: 'spec.nodeName', NAMESPACE: 'metadata.namespace', POD_NAME: 'metadata.name' });
      const s = container(r, 'csi-snapshotter');
      assert.ok(s.args?.includes('--node-deployment=true'));
      assert.equal(s.env?.find((e) => e.name === 'NODE_NAME')?.valueFrom?.fieldRef?.fieldPath, 'spec.nodeName');
      assert.ok(container(r, 'csi-resizer').args?.includes('--leader-election=false'));
    });

    it('the agent gets its node name, migration address, state paths and CNI bin dir', () => {
      const a = container(r, 'agent');
      assert.equal(a.args?.[0], 'agent');
      assert.equal(flag(a, 'node-name'), '$(NODE_NAME)');
      assert.equal(a.env?.find((e) => e.name === 'NODE_NAME')?.valueFrom?.fieldRef?.fieldPath, 'spec.nodeName');
      // Migrations listen on the node's address; without POD_IP the agent disables them.
      assert.equal(a.env?.find((e) => e.name === 'POD_IP')?.valueFrom?.fieldRef?.fieldPath, 'status.podIP');
      assert.equal(flag(a, 'state-dir'), '/var/lib/podvirt');
      assert.equal(flag(a, 'run-dir'), '/run/podvirt');
      assert.equal(flag(a, 'kubelet-dir'), '/var/lib/kubelet');
      assert.equal(flag(a, 'cni-bin-dir'), '/opt/cni/bin');
      assert.equal(flag(a, 'metrics-addr'), ':9477');
      const off = container(render({ values: { cni: { install: false } } }), 'agent');
      assert.equal(flag(off, 'cni-bin-dir'), undefined);
      assert.equal(flag(off, 'disable'), 'cni-install');
      assert.ok(!off.volumeMounts?.some((m) => m.name === 'cni-bin-dir'));
    });
  });

  describe('the chart and the agent agree', () => {
    it('`podvirt agent` accepts the command line the chart gives it (its strict flag parser runs)', async () => {
      for (const opts of [{}, { values: { cni: { install: false }, agent: { extraArgs: ['--stop-timeout=60'] } } }] as RenderOptions[]) {
        const a = container(render(opts), 'agent');
        assert.equal(a.args?.[0], 'agent');
        const write = process.stdout.write.bind(process.stdout);
        let printed = '';
        process.stdout.write = ((chunk: string) => {
          printed += chunk;
          return true;
        }) as typeof process.stdout.write;
        try {
          // --help makes main return right after parsing: an unknown flag would throw first.
          assert.equal(await agentMain([...(a.args ?? []).slice(1), '--help']), 0);
        } finally {
          process.stdout.write = write;
        }
        assert.match(printed, /usage: podvirt agent/);
      }
    });

    it('kubectl podvirt finds the agent pods by their labels and container name', () => {
      const ds = one(render({}), 'DaemonSet');
      const labels = (ds.spec as { template: { metadata: { labels: Record<string, string> } } }).template.metadata.labels;
      for (const term of AGENT_SELECTOR.split(',')) {
        const [k, v] = term.split('=') as [string, string];
        assert.equal(labels[k], v, `agent pods must carry ${term}`);
      }
      assert.ok(podSpec(render({})).containers.some((c) => c.name === AGENT_CONTAINER));
    });
  });

  describe('objects and switches', () => {
    it('CSIDriver: node-local, capacity-aware, persistent volumes only', () => {
      const d = one(render({}), 'CSIDriver');
      assert.equal(d.metadata.name, 'csi.podvirt.io');
      assert.deepEqual(d.spec, { attachRequired: false, podInfoOnMount: true, storageCapacity: true, fsGroupPolicy: 'File', volumeLifecycleModes: ['Persistent'] });
    });

    it('StorageClass: WaitForFirstConsumer, expandable, default-class annotation only when asked', () => {
      const sc = one(render({}), 'StorageClass');
      assert.equal(sc.provisioner, 'csi.podvirt.io');
      assert.equal(sc.volumeBindingMode, 'WaitForFirstConsumer');
      assert.equal(sc.allowVolumeExpansion, true);
      assert.equal(sc.parameters, undefined, 'the driver works with no parameters');
      assert.equal(sc.metadata.annotations, undefined);
      const def = one(render({ values: { storageClass: { isDefault: true } } }), 'StorageClass');
      assert.equal(def.metadata.annotations?.['storageclass.kubernetes.io/is-default-class'], 'true');
    });

    it('VolumeSnapshotClass appears only with the snapshot API and the snapshotter enabled', () => {
      assert.equal(render({}).all.filter((m) => m.kind === 'VolumeSnapshotClass').length, 0);
      assert.equal(render({ apiVersions: [SNAPSHOT_API], values: { csi: { snapshotter: { enabled: false } } } }).all.filter((m) => m.kind === 'VolumeSnapshotClass').length, 0);
      const vsc = one(render({ apiVersions: [SNAPSHOT_API] }), 'VolumeSnapshotClass');
      assert.equal(vsc.driver, 'csi.podvirt.io');
      assert.equal(vsc.deletionPolicy, 'Delete');
    });

    it('disabling the snapshotter or the resizer removes their container and their RBAC', () => {
      const rules = (r: Rendered): string[] =>
        ((one(r, 'ClusterRole').rules ?? []) as { apiGroups: string[]; resources: string[] }[]).flatMap((x) => x.resources.map((res) => `${x.apiGroups[0]}/${res}`));
      const full = rules(render({}));
      assert.ok(full.includes('snapshot.storage.k8s.io/volumesnapshotcontents'));
      assert.ok(full.includes('/persistentvolumeclaims/status'));
      const slim = render({ values: { csi: { snapshotter: { enabled: false }, resizer: { enabled: false } } } });
      assert.deepEqual(podSpec(slim).containers.map((c) => c.name), ['agent', 'node-driver-registrar', 'csi-provisioner']);
      assert.ok(!rules(slim).some((x) => x.startsWith('snapshot.storage.k8s.io/')));
      assert.ok(!rules(slim).includes('/persistentvolumeclaims/status'));
    });

    it('the ClusterRole is exactly the documented set of rules', () => {
      const got = ((one(render({}), 'ClusterRole').rules ?? []) as { apiGroups: string[]; resources: string[]; verbs: string[] }[]).flatMap((x) =>
        x.resources.map((res) => `${x.apiGroups.join(',') || 'core'} ${res}: ${x.verbs.join(',')}`),
      );
      assert.deepEqual(got, [
        'core pods: get,list,watch,patch',
        'core pods/status: patch',
        'core events: create,patch',
        'core nodes: get,list,watch,patch',
        'core persistentvolumes: get,list,watch,create,patch,delete',
        'core persistentvolumeclaims: get,list,watch,update',
        'core persistentvolumeclaims/status: patch',
        'storage.k8s.io storageclasses: get,list,watch',
        'storage.k8s.io csinodes: get,list,watch',
        'snapshot.storage.k8s.io volumesnapshots: get,list,watch,update',
        'snapshot.storage.k8s.io volumesnapshotcontents: get,list,watch,update,patch',
        'snapshot.storage.k8s.io volumesnapshotcontents/status: update,patch',
        'snapshot.storage.k8s.io volumesnapshotclasses: get,list,watch',
      ]);
      const role = one(render({}), 'Role');
      assert.deepEqual(role.rules, [
        { apiGroups: ['storage.k8s.io'], resources: ['csistoragecapacities'], verbs: ['get', 'list', 'watch', 'create', 'update', 'patch', 'delete'] },
        { apiGroups: [''], resources: ['secrets'], verbs: ['get', 'list', 'create', 'delete'] },
      ]);
    });

    it('Secrets (migration tokens): only through the namespaced Role, in the release namespace, never cluster-wide', () => {
      for (const opts of [{}, { namespace: 'virt', releaseName: 'podvirt-prod' }]) {
        const r = render(opts);
        const ns = opts.namespace ?? 'podvirt';
        const grants = (m: Manifest) => ((m.rules ?? []) as { apiGroups: string[]; resources: string[] }[]).some((x) => x.apiGroups.includes('') && x.resources.includes('secrets'));
        assert.deepEqual(r.all.filter((m) => m.kind === 'ClusterRole' && grants(m)), [], 'a ClusterRole grants secrets');
        const roles = r.all.filter((m) => m.kind === 'Role' && grants(m));
        assert.equal(roles.length, 1);
        assert.equal(roles[0]!.metadata.namespace, ns);
        // Bound only by a RoleBinding in the same namespace (a ClusterRoleBinding to a Role is impossible; to be sure no other binding points at it).
        const bindings = r.all.filter((m) => m.kind.endsWith('Binding') && (m.roleRef as { kind: string; name: string }).kind === 'Role' && (m.roleRef as { name: string }).name === roles[0]!.metadata.name);
        assert.deepEqual(bindings.map((b) => `${b.kind}/${b.metadata.namespace}`), [`RoleBinding/${ns}`]);
        const container = podSpec(r).containers.find((c) => c.name === 'agent')!;
        assert.equal(container.env?.find((e) => e.name === 'POD_NAMESPACE')?.valueFrom?.fieldRef?.fieldPath, 'metadata.namespace', 'the agent learns its namespace (where the Secrets live)');
      }
    });

    it('the metrics Service points at the agent metrics port; the ServiceMonitor needs its API', () => {
      const r = render({ values: { agent: { metricsPort: 9999 } } });
      const svc = one(r, 'Service');
      assert.equal((svc.spec as { clusterIP: string }).clusterIP, 'None');
      assert.deepEqual((svc.spec as { ports: unknown[] }).ports, [{ name: 'metrics', port: 9999, targetPort: 'metrics', protocol: 'TCP' }]);
      assert.equal(flag(container(r, 'agent'), 'metrics-addr'), ':9999');
      const wanted = render({ values: { metrics: { serviceMonitor: { enabled: true } } } });
      assert.equal(wanted.all.filter((m) => m.kind === 'ServiceMonitor').length, 0);
      assert.match(wanted.notes, /no ServiceMonitor was created/);
      const sm = one(render({ apiVersions: [MONITOR_API], values: { metrics: { serviceMonitor: { enabled: true } } } }), 'ServiceMonitor');
      assert.deepEqual((sm.spec as { endpoints: { port: string; path: string }[] }).endpoints.map((e) => [e.port, e.path]), [['metrics', '/metrics']]);
    });

    it("the NADs' configs are accepted by the plugin's own parser; the VM network's bridge is the gateway unless turned off", () => {
      const nads = (r: Rendered): Record<string, ReturnType<typeof parseNetConf>> =>
        Object.fromEntries(r.all.filter((m) => m.kind === 'NetworkAttachmentDefinition').map((m) => [m.metadata.name, parseNetConf(JSON.parse((m.spec as { config: string }).config) as Obj)]));
      const on = nads(render({ apiVersions: [NAD_API] }));
      assert.deepEqual(Object.keys(on).sort(), ['podvirt-migration', 'podvirt-vm']);
      assert.equal(on['podvirt-vm']?.isGateway, true, "the agent's guest DHCP answers from the bridge's address in the guest subnet");
      assert.equal(on['podvirt-migration']?.isGateway, false);
      const off = nads(render({ apiVersions: [NAD_API], values: { networks: { vm: { isGateway: false } } } }));
      assert.equal(off['podvirt-vm']?.isGateway, false);
    });

    it('NOTES.txt says what is missing on a bare cluster and what was created otherwise', () => {
      const bare = render({}).notes;
      assert.match(bare, /snapshot\.storage\.k8s\.io\/v1 API is not served/);
      assert.match(bare, /Multus \(k8s\.cni\.cncf\.io\/v1\) is not installed/);
      assert.match(bare, /rollout status daemonset\/podvirt-agent/);
      const full = render({ apiVersions: [SNAPSHOT_API, NAD_API], namespace: 'virt' }).notes;
      assert.doesNotMatch(full, /WARNING/);
      assert.match(full, /"virt\/podvirt-vm" \(VM tap network\)/);
      assert.match(full, /VolumeSnapshotClass "podvirt"/);
      assert.doesNotMatch(full, /<no value>|\{\{/);
    });

    it('object names follow the fullname rules (release containing the chart name, overrides, 63-char cap)', () => {
      assert.equal(one(render({ releaseName: 'podvirt-prod' }), 'DaemonSet').metadata.name, 'podvirt-prod-agent');
      assert.equal(one(render({ releaseName: 'lab' }), 'DaemonSet').metadata.name, 'lab-podvirt-agent');
      assert.equal(one(render({ values: { fullnameOverride: 'pv' } }), 'DaemonSet').metadata.name, 'pv-agent');
      const long = render({ releaseName: 'r'.repeat(70) });
      assert.ok(one(long, 'ServiceAccount').metadata.name.length <= 63);
    });
  });
});
