/**
 * Guest DHCP in cluster mode: the join of CNI tap attachments with the agent's VMs
 * (agent/kube/guest-dhcp.ts, cni/attachment-events.ts). Pure tests for the join and the records,
 * then one VM pod in the fake cluster: the kubelet's part played by hand (sandbox, CNI ADD through
 * the real shim into the agent's CNI server, Multus' network-status), the guest gets its address
 * by DHCP from the agent, the host pings it, the lease survives an agent restart and goes with the
 * pod.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CoreV1Api, type V1Pod } from '@kubernetes/client-node';
import { attachmentDirFor, attachmentEventOf, readAttachments, recordStandaloneOutcome, writeAttachmentEvent, type TapAttachment } from '../../cni/attachment-events.js';
import { invokeCni } from '../../cni/invoke.js';
import { ClusterAgent } from '../../agent/kube/cluster-agent.js';
import { buildServers, buildVmRuntime, cniSocketOf, guestDhcpOf, type ComposeConfig } from '../../agent/kube/compose.js';
import { GuestDhcp, LeasingRuntime, planGuestLeases, type GuestVm, type LeaseSink } from '../../agent/kube/guest-dhcp.js';
import type { MigrationHandoff, VmExit, VmReport, VmRuntime, VmTarget } from '../../agent/kube/vm-runtime.js';
import type { StaticLease } from '../../agent/dhcp/lease.js';
import { exec } from '../../lib/exec.js';
import { createLogger, silentLogger } from '../../lib/log.js';
import { PROJECT_ROOT } from '../../lib/project-root.js';
import { FakeApiServer } from './fake-apiserver.js';
import { createKubeletSandbox, type KubeletSandbox } from './kubelet-sandbox.js';
import { skipBecause } from '../helpers/skip.js';
import { pingUntilReply } from '../helpers/ping.js';
import { until as waitUntil, type Probe } from '../helpers/until.js';

const GUEST_MAC = '52:54:00:5e:00:01';
const TAP_MAC = '0a:58:0a:00:00:99';
const NS_ID = { ino: 4026532999, dev: 4 };

const topology = (mac = GUEST_MAC) => ({
  version: 1,
  machine: 'pc-q35-7.2',
  cpuModel: 'max',
  cpus: 1,
  memoryBytes: 64 * 2 ** 20,
  numaCells: [],
  rootPorts: [{ id: 'rp1', chassis: 1, port: 1, slot: 2, function: 0 }],
  devices: [{ key: 'nic:net0', kind: 'nic', id: 'net-net0', driver: 'virtio-net-pci', bus: 'rp1', addr: 0, mac }],
});
const SPEC = 'cpus: 1\nmemory: 64Mi\nkernel: /boot/vmlinuz\ninterfaces:\n  - {name: net0, network: vmnet}\n';

const pod = (name = 'vm', uid = 'uid-1', netStatus: unknown = [{ name: 'default/vmnet', interface: 'net1' }]): V1Pod => ({
  metadata: { name, namespace: 'default', uid, annotations: { 'k8s.v1.cni.cncf.io/network-status': JSON.stringify(netStatus) } },
});

const attachment = (over: Partial<TapAttachment> = {}): TapAttachment => ({
  containerId: 'c1',
  ifname: 'net1',
  netns: '/var/run/netns/cni-1',
  netnsId: NS_ID,
  network: 'vm-net',
  pod: { namespace: 'default', name: 'vm', uid: 'uid-1' },
  bridge: 'podvirt0',
  mac: TAP_MAC,
  mtu: 1450,
  migrationTarget: false,
  ips: [{ address: '10.88.0.7/24', gateway: '10.88.0.1' }],
  routes: [{ dst: '0.0.0.0/0' }],
  dns: { nameservers: ['10.96.0.10', 'fd00::10'] },
  addedAt: '2026-01-01T00:00:00Z',
  ...over,
});

const vm = (over: Partial<GuestVm> = {}): GuestVm => ({ key: 'default/vm', pod: pod(), specText: SPEC, topology: topology(), netnsId: NS_ID, ...over });

class RecordingSink implements LeaseSink {
  readonly leases = new Map<string, StaticLease>();
  readonly ops: string[] = [];
  add(l: StaticLease): void {
    this.leases.set(l.mac, l);
    this.ops.push(`add ${l.mac} ${l.ip}`);
  }
  removeMac(mac: string): void {
    this.leases.delete(mac);
    this.ops.push(`del ${mac}`);
  }
}

const target = (key: string, p: V1Pod, netns: string): VmTarget => ({
  key,
  pod: p,
  specText: SPEC,
  sandbox: { podUid: p.metadata!.uid!, pid: 1, containerId: 'x', netns } as unknown as VmTarget['sandbox'],
  topology: undefined,
});
const report = (netns: string, topo: unknown = topology()): VmReport => ({ phase: 'Running', qemuPid: 1, vcpuThreads: [], topology: topo, netns });

describe('kube guest DHCP: the join (pure)', () => {
  it('a tap-mode ADD becomes an attachment: pod from CNI_ARGS, tap MAC, guest IP, routes, DNS, netns identity; 0.3.1 results too', () => {
    const config = { cniVersion: '0.3.1', name: 'vm-net', type: 'podvirt', bridge: 'br-x', mtu: 1450 };
    const result = {
      cniVersion: '0.3.1',
      interfaces: [{ name: 'br-x', mac: '02:00:00:00:00:01' }, { name: 'pvhabc', mac: '02:00:00:00:00:02' }, { name: 'net1', mac: TAP_MAC, sandbox: '/var/run/netns/cni-1' }, { name: 'pvpabc', sandbox: '/var/run/netns/cni-1' }],
      ips: [{ version: '4', address: '10.88.0.7/24', gateway: '10.88.0.1', interface: 2 }],
      routes: [{ dst: '0.0.0.0/0' }],
      dns: { nameservers: ['10.96.0.10'] },
    };
    const env = {
      CNI_COMMAND: 'ADD',
      CNI_CONTAINERID: 'c1',
      CNI_IFNAME: 'net1',
      CNI_NETNS: '/var/run/netns/cni-1',
      CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=vm;K8S_POD_UID=uid-1;K8S_POD_INFRA_CONTAINER_ID=c1',
    };
    const ev = attachmentEventOf({ env, stdin: Buffer.from(JSON.stringify(config)) }, { exitCode: 0, stdout: JSON.stringify(result) }, () => NS_ID);
    assert.ok(ev?.kind === 'add');
    const a = ev.attachment;
    assert.deepEqual(
      { pod: a.pod, mac: a.mac, bridge: a.bridge, ips: a.ips, routes: a.routes, dns: a.dns, netnsId: a.netnsId, network: a.network, mtu: a.mtu, target: a.migrationTarget },
      { pod: { namespace: 'default', name: 'vm', uid: 'uid-1' }, mac: TAP_MAC, bridge: 'br-x', ips: [{ address: '10.88.0.7/24', gateway: '10.88.0.1' }], routes: [{ dst: '0.0.0.0/0' }], dns: { nameservers: ['10.96.0.10'] }, netnsId: NS_ID, network: 'vm-net', mtu: 1450, target: false },
    );
    // Not events: a failed ADD, migration mode, CHECK; a DEL of any mode is.
    assert.equal(attachmentEventOf({ env, stdin: Buffer.from(JSON.stringify(config)) }, { exitCode: 1, stdout: '{}' }), undefined);
    const mig = { ...config, mode: 'migration', ipam: { type: 'host-local' } };
    assert.equal(attachmentEventOf({ env, stdin: Buffer.from(JSON.stringify(mig)) }, { exitCode: 0, stdout: JSON.stringify(result) }), undefined);
    assert.equal(attachmentEventOf({ env: { ...env, CNI_COMMAND: 'CHECK' }, stdin: Buffer.from(JSON.stringify(config)) }, { exitCode: 0, stdout: '' }), undefined);
    assert.deepEqual(attachmentEventOf({ env: { ...env, CNI_COMMAND: 'DEL' }, stdin: Buffer.from(JSON.stringify(mig)) }, { exitCode: 0, stdout: '' }), {
      kind: 'del',
      containerId: 'c1',
      ifname: 'net1',
      network: 'vm-net',
    });
  });

  it('one lease per tap NIC: guest MAC from the topology (not the tap), tap from network-status, IPv4, router, DNS, MTU, bridge', () => {
    const plan = planGuestLeases(vm(), [attachment(), attachment({ containerId: 'c1', ifname: 'net2', ips: [{ address: '10.99.0.5/24' }] })]);
    assert.deepEqual(plan.missing, []);
    assert.deepEqual(plan.leases, [
      { mac: GUEST_MAC, ip: '10.88.0.7', prefixLength: 24, gateway: '10.88.0.1', dns: ['10.96.0.10'], bridge: 'podvirt0', owner: 'default/vm', hostname: 'vm', mtu: 1450 },
    ]);
  });

  it('IPAM routes besides the default one, DNS domain and search reach the lease; IPv6 and malformed ones do not', () => {
    const [l] = planGuestLeases(vm(), [
      attachment({
        routes: [{ dst: '0.0.0.0/0' }, { dst: '10.96.0.0/12' }, { dst: '192.168.7.0/24', gw: '10.88.0.254' }, { dst: 'fd00::/8' }],
        dns: { nameservers: ['10.96.0.10'], domain: 'vms.example', search: ['svc.cluster.local', 'bad..name'] },
      }),
    ]).leases;
    assert.deepEqual(
      { routes: l?.routes, domain: l?.domain, search: l?.search },
      { routes: [{ dst: '10.96.0.0/12', gw: '10.88.0.1' }, { dst: '192.168.7.0/24', gw: '10.88.0.254' }], domain: 'vms.example', search: ['svc.cluster.local'] },
    );
  });

  const cases: Array<{ name: string; vm?: Partial<GuestVm>; att?: Partial<TapAttachment>; want: string | RegExp }> = [
    { name: 'another namespace (inode) → none', att: { netnsId: { ino: 1, dev: 4 } }, want: /no CNI attachment net1/ },
    { name: 'same inode, another pod (a reused inode) → none', att: { pod: { namespace: 'default', name: 'vm', uid: 'old-uid' } }, want: /no CNI attachment/ },
    { name: 'a runtime without K8S_POD_* args: the namespace decides', att: { pod: undefined }, want: '10.88.0.7' },
    { name: 'no network-status: the network name decides', vm: { pod: pod('vm', 'uid-1', []) }, att: { network: 'vmnet', ifname: 'eth7' }, want: '10.88.0.7' },
    { name: 'IPv6 only → none, said why', att: { ips: [{ address: 'fd00::7/64' }] }, want: /no IPv4 address/ },
    { name: 'gateway from the default route when the IP has none', att: { ips: [{ address: '10.88.0.7/24' }], routes: [{ dst: '0.0.0.0/0', gw: '10.88.0.254' }] }, want: 'gw 10.88.0.254' },
    { name: 'MAC from the spec when no topology is recorded yet', vm: { topology: undefined, specText: SPEC.replace('network: vmnet}', 'network: vmnet, mac: "52:54:00:00:00:aa"}') }, want: 'mac 52:54:00:00:00:aa' },
  ];
  for (const tc of cases) {
    it(tc.name, () => {
      const plan = planGuestLeases(vm(tc.vm), [attachment(tc.att)]);
      const l = plan.leases[0];
      const text = l ? `${l.ip} gw ${l.gateway} mac ${l.mac}` : plan.missing.join('; ');
      if (typeof tc.want === 'string') assert.ok(text.includes(tc.want), text);
      else assert.match(text, tc.want);
    });
  }

  it('GuestDhcp: VM up → lease; attachment DEL, VM down → gone; a restarted DHCP server gets the whole table', () => {
    const g = new GuestDhcp({ attachmentDir: null, log: silentLogger, statNetns: () => NS_ID });
    const sink = new RecordingSink();
    g.attachSink(sink);
    g.onAttachment({ kind: 'add', attachment: attachment() });
    assert.equal(sink.leases.size, 0, 'no VM yet');
    g.vmUp(target('default/vm', pod(), '/proc/1/ns/net'), report('/proc/1/ns/net'));
    assert.equal(sink.leases.get(GUEST_MAC)?.ip, '10.88.0.7');
    const again = new RecordingSink();
    g.attachSink(again);
    assert.deepEqual([...again.leases.keys()], [GUEST_MAC]);
    g.onAttachment({ kind: 'del', containerId: 'c1', ifname: 'net1', network: 'vm-net' });
    assert.equal(again.leases.size, 0, 'attachment DEL removes the lease');
    g.onAttachment({ kind: 'add', attachment: attachment() });
    assert.equal(again.leases.size, 1, 'a later ADD for a running VM adds it back');
    g.vmDown('default/vm');
    assert.equal(again.leases.size, 0);
    assert.deepEqual(g.leases(), []);
  });

  it('GC (CNI 1.1) ends the network\'s attachments that are not valid any more, on disk and in the join', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'pvt-gdhcp-gc-'));
    try {
      for (const a of [attachment(), attachment({ containerId: 'c2' }), attachment({ containerId: 'c3', network: 'other-net' })]) writeAttachmentEvent(dir, { kind: 'add', attachment: a });
      const g = new GuestDhcp({ attachmentDir: dir, log: silentLogger, statNetns: () => NS_ID });
      const config = { cniVersion: '1.1.0', name: 'vm-net', type: 'podvirt', 'cni.dev/valid-attachments': [{ containerID: 'c2', ifname: 'net1' }] };
      const ev = attachmentEventOf({ env: { CNI_COMMAND: 'GC', CNI_PATH: '/x' }, stdin: Buffer.from(JSON.stringify(config)) }, { exitCode: 0, stdout: '' });
      assert.deepEqual(ev, { kind: 'gc', network: 'vm-net', valid: [{ containerId: 'c2', ifname: 'net1' }] });
      writeAttachmentEvent(dir, ev);
      g.onAttachment(ev);
      const left = (xs: TapAttachment[]) => xs.map((a) => a.containerId).sort();
      assert.deepEqual(left(readAttachments(dir)), ['c2', 'c3'], 'the valid one and another network\'s stay');
      assert.deepEqual(left(g.knownAttachments()), ['c2', 'c3']);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it('GuestDhcp: a migration target on the same node takes the MAC over; the source going does not take it away', () => {
    const ids: Record<string, { ino: number; dev: number }> = { '/proc/1/ns/net': NS_ID, '/proc/2/ns/net': { ino: 4026533000, dev: 4 } };
    const g = new GuestDhcp({ attachmentDir: null, log: silentLogger, statNetns: (p) => ids[p] });
    const sink = new RecordingSink();
    g.attachSink(sink);
    g.onAttachment({ kind: 'add', attachment: attachment() });
    g.onAttachment({ kind: 'add', attachment: attachment({ containerId: 'c2', netnsId: ids['/proc/2/ns/net'], pod: { namespace: 'default', name: 'vm-target', uid: 'uid-2' }, migrationTarget: true }) });
    g.vmUp(target('default/vm', pod(), '/proc/1/ns/net'), report('/proc/1/ns/net'));
    g.vmUp(target('default/vm-target', pod('vm-target', 'uid-2'), '/proc/2/ns/net'), report('/proc/2/ns/net'));
    assert.equal(sink.leases.get(GUEST_MAC)?.owner, 'default/vm-target');
    g.vmDown('default/vm');
    assert.equal(sink.leases.get(GUEST_MAC)?.owner, 'default/vm-target', 'same MAC, same IP, now owned by the target');
    assert.equal(sink.leases.get(GUEST_MAC)?.ip, '10.88.0.7');
  });

  it('LeasingRuntime: start, adopt and a migration into this node add leases; stop and an exit remove them', async () => {
    const exits: Array<(e: VmExit) => void> = [];
    const inner: VmRuntime = {
      start: async () => report('/proc/1/ns/net'),
      adopt: async (t) => (t.key === 'default/vm' ? report('/proc/1/ns/net') : undefined),
      stop: async () => undefined,
      report: async () => undefined,
      onExit: (cb) => exits.push(cb),
      detachAll: async () => undefined,
    };
    const g = new GuestDhcp({ attachmentDir: null, log: silentLogger, statNetns: () => NS_ID });
    const sink = new RecordingSink();
    g.attachSink(sink);
    g.onAttachment({ kind: 'add', attachment: attachment() });
    const rt = new LeasingRuntime(inner, g);
    assert.equal(rt.query, undefined, 'no QMP queries offered when the inner runtime has none');
    await rt.start(target('default/vm', pod(), '/proc/1/ns/net'));
    assert.equal(sink.leases.size, 1);
    await rt.stop('default/vm', 1000);
    assert.equal(sink.leases.size, 0);
    assert.ok(await rt.adopt(target('default/vm', pod(), '/proc/1/ns/net')));
    assert.equal(sink.leases.size, 1, 'adopted after an agent restart');
    for (const cb of exits) cb({ key: 'default/vm', phase: 'Failed', reason: 'killed' });
    assert.equal(sink.leases.size, 0, 'a VM that died gives its lease up');
    const handoff: MigrationHandoff = {
      migrateInto: async () => report('/proc/1/ns/net'),
      migrateOut: async () => ({ outcome: 'completed' }),
    };
    await rt.wrapMigration(handoff).migrateInto(target('default/vm', pod(), '/proc/1/ns/net'), 'default/src', async () => undefined, () => undefined);
    assert.equal(sink.leases.get(GUEST_MAC)?.ip, '10.88.0.7', 'the target has the lease once the VM runs here');
  });

  describe('records on disk (what the bundle leaves and a restarted agent reads)', () => {
    let dir: string;
    beforeEach(async () => {
      dir = await fs.mkdtemp(path.join(os.tmpdir(), 'pvt-gdhcp-'));
    });
    afterEach(async () => {
      await fs.rm(dir, { recursive: true, force: true });
    });

    it('the bundle records beside the socket it was pointed at (making the directory); a new GuestDhcp joins it with an adopted VM; DEL removes the record', async () => {
      // A plain file stands in for the netns: the join only compares inode and device.
      const nsFile = path.join(dir, 'netns');
      await fs.writeFile(nsFile, '');
      const config = { cniVersion: '1.0.0', name: 'vm-net', type: 'podvirt', bridge: 'br-x', agentSocket: path.join(dir, 'cni.sock') };
      const result = { cniVersion: '1.0.0', interfaces: [{ name: 'br-x' }, { name: 'pvh1' }, { name: 'net1', mac: TAP_MAC, sandbox: nsFile }], ips: [{ address: '10.88.0.7/24', gateway: '10.88.0.1', interface: 2 }] };
      const env = { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c1', CNI_IFNAME: 'net1', CNI_NETNS: nsFile, CNI_ARGS: 'K8S_POD_NAMESPACE=default;K8S_POD_NAME=vm;K8S_POD_UID=uid-1' };
      recordStandaloneOutcome({ env, stdin: Buffer.from(JSON.stringify(config)) }, { exitCode: 0, stdout: JSON.stringify(result) });
      const adir = attachmentDirFor(config.agentSocket);
      assert.equal(readAttachments(adir).length, 1);

      const g = new GuestDhcp({ attachmentDir: adir, log: silentLogger });
      const sink = new RecordingSink();
      g.attachSink(sink);
      g.vmUp(target('default/vm', pod(), nsFile), report(nsFile));
      assert.equal(sink.leases.get(GUEST_MAC)?.ip, '10.88.0.7');

      recordStandaloneOutcome({ env: { ...env, CNI_COMMAND: 'DEL' }, stdin: Buffer.from(JSON.stringify(config)) }, { exitCode: 0, stdout: '' });
      assert.deepEqual(readAttachments(adir), []);
      // After a reboot the bundle may run before any agent made the directory: it makes it.
      const fresh = { ...config, agentSocket: path.join(dir, 'fresh', 'cni.sock') };
      recordStandaloneOutcome({ env, stdin: Buffer.from(JSON.stringify(fresh)) }, { exitCode: 0, stdout: JSON.stringify(result) });
      assert.equal(readAttachments(attachmentDirFor(fresh.agentSocket)).length, 1);
      // No agentSocket in the config: $PODVIRT_CNI_SOCKET decides, as for the shim.
      const viaEnv = path.join(dir, 'env', 'cni.sock');
      recordStandaloneOutcome({ env: { ...env, PODVIRT_CNI_SOCKET: viaEnv }, stdin: Buffer.from(JSON.stringify({ ...config, agentSocket: undefined })) }, { exitCode: 0, stdout: JSON.stringify(result) });
      assert.equal(readAttachments(attachmentDirFor(viaEnv)).length, 1);
    });

    it('a starting agent prunes records whose namespace is gone, and picks up records written while it ran', () => {
      writeAttachmentEvent(dir, { kind: 'add', attachment: attachment({ containerId: 'gone', netns: path.join(dir, 'no-such-netns') }) });
      const g = new GuestDhcp({ attachmentDir: dir, log: silentLogger, statNetns: (p) => (p.endsWith('cni-1') ? NS_ID : undefined) });
      assert.deepEqual(readAttachments(dir), [], 'stale record deleted');
      const sink = new RecordingSink();
      g.attachSink(sink);
      writeAttachmentEvent(dir, { kind: 'add', attachment: attachment() });
      g.vmUp(target('default/vm', pod(), '/var/run/netns/cni-1'), report('/var/run/netns/cni-1'));
      assert.equal(sink.leases.size, 1, 'looked again when a NIC had no attachment');
    });
  });
});

const log = createLogger('test-kube-guest-dhcp', process.env.PODVIRT_TEST_LOG ?? 'silent');

const until = <T>(what: string, probe: Probe<T>, timeoutMs = 20000): Promise<T> => waitUntil(what, probe, timeoutMs, 100);

describe('kube guest DHCP: a VM pod gets its address from the agent (CNI through the shim, TCG guest)', function () {
  this.timeout(240_000);
  const tag = randomBytes(3).toString('hex');
  const node = `pvtgd-${tag}-node`;
  const bridge = `pvtgd${tag}`;
  const probeNs = `pvtgd-p${tag}`;
  const subnet = `10.215.${100 + (parseInt(tag.slice(0, 2), 16) % 100)}`;
  const guest = path.join(PROJECT_ROOT, '.cache', 'guest');
  const shim = path.join(PROJECT_ROOT, 'dist', 'cni', 'podvirt');
  let tmp: string;
  let api: FakeApiServer;
  let core: CoreV1Api;
  let agent: ClusterAgent | undefined;
  let cfg: ComposeConfig;
  let sb: KubeletSandbox | undefined;
  let podUid: string;
  let netConfig: Record<string, unknown>;
  let added = false;
  const ifname = 'net1';

  const newConfig = (): ComposeConfig => ({
    node,
    stateDir: path.join(tmp, 'state'),
    runDir: path.join(tmp, 'run'),
    cniBinDir: '/nonexistent',
    kubeletDir: '/nonexistent',
    devicePluginConfig: undefined,
    csiEndpoint: undefined,
    csiStateDir: undefined,
    procRoot: '/proc',
    sysRoot: '/sys',
    devRoot: '/dev',
    disabled: new Set(['device-plugin', 'csi', 'cni-install']),
    log,
  });
  const startAgent = async (): Promise<ClusterAgent> => {
    cfg = newConfig();
    const a = new ClusterAgent({
      kc: api.kubeConfig(),
      node,
      runtime: await buildVmRuntime(cfg),
      log,
      version: '0.1.0-test',
      metricsAddr: '',
      labelNode: false,
      servers: await buildServers(cfg),
      resyncMs: 60_000,
      retryInitialMs: 100,
      stopTimeoutMs: 3000,
    });
    await a.start();
    return a;
  };
  /** The runtime's part (Multus → our shim → the agent's CNI server). */
  const cni = (command: 'ADD' | 'DEL') =>
    invokeCni({
      plugin: shim,
      command,
      config: netConfig,
      containerId: sb!.containerId,
      netns: `/run/netns/${sb!.netnsName}`,
      ifname,
      args: `IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=vm;K8S_POD_UID=${podUid};K8S_POD_INFRA_CONTAINER_ID=${sb!.containerId}`,
      path: [path.dirname(shim), '/usr/lib/cni'],
      env: { PODVIRT_CNI_SOCKET: cniSocketOf(cfg) },
    });
  const podObj = () => api.getObject('pods', 'default', 'vm') as V1Pod | undefined;
  const status = () => JSON.parse(podObj()?.metadata?.annotations?.['vm.podvirt.io/status'] ?? '{}') as { phase?: string; qemuPid?: number; serialLog?: string; consoleSocket?: string };
  /** The serial log, whether its reported path is the node's or QEMU's own (QEMU in the pod's mount namespace). */
  const serialText = async () => {
    const { serialLog, qemuPid } = status();
    if (!serialLog) return '';
    for (const p of [serialLog, `/proc/${qemuPid}/root${serialLog}`]) {
      const t = await fs.readFile(p, 'utf8').catch(() => undefined);
      if (t !== undefined) return t;
    }
    return '';
  };
  /** A DHCP client with `mac` on the VM bridge, from a namespace of its own: does the agent answer for that MAC? */
  const probeDhcp = async (mac: string): Promise<{ code: number | null; stdout: string }> => {
    if (!existsSync(`/run/netns/${probeNs}`)) {
      await exec('ip', ['netns', 'add', probeNs]);
      await exec('ip', ['link', 'add', `pvtgdv${tag}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', probeNs]);
      await exec('ip', ['link', 'set', `pvtgdv${tag}`, 'master', bridge, 'up']);
    }
    await exec('ip', ['-n', probeNs, 'link', 'set', 'eth0', 'address', mac, 'up']);
    // The event script prints the address; nothing is configured in the probe namespace.
    return exec('ip', ['netns', 'exec', probeNs, 'busybox', 'udhcpc', '-f', '-q', '-n', '-i', 'eth0', '-t', '3', '-T', '1', '-s', probeScript], { allowFailure: true, timeoutMs: 20_000 });
  };
  let probeScript: string;

  before(async function () {
    if (process.getuid?.() !== 0) skipBecause(this, 'needs root (netns, bridges, cgroups)');
    if (!existsSync(path.join(guest, 'vmlinuz'))) skipBecause(this, 'test guest not built (hack/setup.d/20-test-guest.sh)');
    if (!existsSync(shim)) skipBecause(this, 'CNI shim not built (npm run build)');
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'pvt-gdhcp-vm-'));
    await fs.chmod(tmp, 0o755);
    probeScript = path.join(tmp, 'probe-event');
    await fs.writeFile(probeScript, '#!/bin/sh\n[ "$1" = bound ] && echo "LEASE $ip"\nexit 0\n', { mode: 0o755 });
    // The operator's part: the VM network's bridge holds an address in the subnet (DHCP answers from it).
    await exec('ip', ['link', 'add', bridge, 'type', 'bridge']);
    await exec('ip', ['addr', 'add', `${subnet}.1/24`, 'dev', bridge]);
    await exec('ip', ['link', 'set', bridge, 'up']);
    netConfig = {
      cniVersion: '0.3.1',
      name: `pvtgd-net-${tag}`,
      type: 'podvirt',
      bridge,
      owner: 107,
      group: 107,
      ipam: { type: 'host-local', dataDir: path.join(tmp, 'ipam'), ranges: [[{ subnet: `${subnet}.0/24`, rangeStart: `${subnet}.10`, gateway: `${subnet}.1` }]], routes: [{ dst: '0.0.0.0/0' }] },
    };
    api = new FakeApiServer({ bookmarkIntervalMs: 200, gracefulPodDeletion: true });
    await api.start();
    core = api.kubeConfig().makeApiClient(CoreV1Api);
    api.createObject('nodes', { metadata: { name: node }, status: { capacity: { cpu: '2' } } });
    agent = await startAgent();
  });

  after(async () => {
    await agent?.stop();
    if (sb && added) await cni('DEL').catch(() => undefined);
    await sb?.destroy();
    await api?.stop();
    await exec('ip', ['netns', 'delete', probeNs], { allowFailure: true });
    await exec('ip', ['link', 'delete', bridge], { allowFailure: true });
    if (tmp) await fs.rm(tmp, { recursive: true, force: true });
  });

  it('the guest gets the IPAM address by DHCP and answers ping; the lease survives an agent restart', async () => {
    // The kubelet: pod object, sandbox, CNI ADD (Multus → podvirt), network-status, container running.
    const spec = `cpus: 1\nmemory: 128Mi\naccel: tcg\nkernel: ${guest}/vmlinuz\ninitrd: ${guest}/initramfs.cpio.gz\ncmdline: console=ttyS0\ninterfaces:\n  - {name: net0, network: vmnet}\n`;
    const created = api.createObject('pods', {
      metadata: { name: 'vm', namespace: 'default', annotations: { 'vm.podvirt.io/spec': spec } },
      spec: { nodeName: node, containers: [{ name: 'compute', image: 'example.org/launcher:dev' }] },
    }) as V1Pod;
    podUid = created.metadata!.uid!;
    sb = await createKubeletSandbox(`pvtgd-${tag}`, { uid: podUid });
    // What the device plugin (devices.kubevirt.io/tun) and the container runtime give the pod: its
    // own /dev/net/tun node, open to the pod's uid, in the container's mount namespace only (QEMU
    // runs in that namespace; the host's node stays as it is, 0600 here).
    await exec('nsenter', ['-t', String(sb.pid), '-m', '--', 'sh', '-c', 'mount -t tmpfs -o mode=0755,size=64k pvt-dev /dev/net && mknod -m 0660 /dev/net/tun c 10 200 && chown 107:107 /dev/net/tun']);
    const out = await cni('ADD');
    assert.equal(out.exitCode, 0, out.stdout + out.stderr);
    added = true;
    const ip = ((out.result!.ips as Array<{ address: string }>)[0]!.address).split('/')[0]!;
    assert.equal(readAttachments(attachmentDirFor(cniSocketOf(cfg))).length, 1, 'the server recorded the attachment');
    const cur = podObj()!;
    cur.metadata!.annotations!['k8s.v1.cni.cncf.io/network-status'] = JSON.stringify([{ name: 'default/vmnet', interface: ifname, ips: [ip], mac: (out.result!.interfaces as Array<{ mac: string }>)[2]!.mac }]);
    api.replaceObject('pods', cur as Record<string, unknown>);
    api.setStatus('pods', 'default', 'vm', {
      phase: 'Running',
      containerStatuses: [{ name: 'compute', containerID: `containerd://${sb.containerId}`, ready: true, restartCount: 0, image: 'x', imageID: 'x', state: { running: { startedAt: new Date().toISOString() } } }],
    });

    await until('VM running', () => (status().phase === 'Running' ? true : status().phase === 'Failed' ? Promise.reject(new Error(JSON.stringify(status()))) : undefined), 60_000);
    const guestMac = (JSON.parse(podObj()!.metadata!.annotations!['vm.podvirt.io/topology']!) as { devices: { key: string; mac: string }[] }).devices.find((d) => d.key === 'nic:net0')!.mac;
    const leases = (await guestDhcpOf(cfg)).leases();
    assert.deepEqual(leases.map((l) => [l.mac, l.ip, l.gateway, l.bridge]), [[guestMac, ip, `${subnet}.1`, bridge]]);
    const line = new RegExp(`PODVIRT-DHCP eth0 ${ip.replace(/\./g, '\\.')}/24 router=${subnet.replace(/\./g, '\\.')}\\.1`);
    await until('the guest bound its lease', async () => (line.test(await serialText()) ? true : undefined), 120_000);
    await pingUntilReply(ip);

    // Agent restart: a new agent (new join, rebuilt from the records) adopts the VM and serves its lease.
    const qemuPid = status().qemuPid;
    await agent!.stop();
    agent = await startAgent();
    await until('re-adopted', () => (agent!.reconciler.stats.adoptions === 1 ? true : undefined));
    assert.equal(status().qemuPid, qemuPid);
    assert.deepEqual((await guestDhcpOf(cfg)).leases().map((l) => [l.mac, l.ip]), [[guestMac, ip]]);
    // The restarted agent's DHCP server answers for the guest's MAC (a client borrowing it, so the
    // guest need not be made to renew).
    const r = await probeDhcp(guestMac);
    assert.equal(r.code, 0, `the restarted agent answers for ${guestMac}`);
    assert.match(r.stdout, new RegExp(`LEASE ${ip.replace(/\./g, '\\.')}\\b`));
  });

  it('with no CNI server listening, the bundle fallback leaves the same record, which a starting agent reads; its DEL removes it', async () => {
    const ns = `pvtgd-b${tag}`;
    const sockDir = path.join(tmp, 'no-agent');
    await fs.mkdir(sockDir);
    await exec('ip', ['netns', 'add', ns]);
    const base = { plugin: shim, config: netConfig, containerId: `bundle${tag}`, netns: `/run/netns/${ns}`, ifname: 'net1', path: [path.dirname(shim), '/usr/lib/cni'], env: { PODVIRT_CNI_SOCKET: path.join(sockDir, 'cni.sock') } };
    try {
      const add = await invokeCni({ ...base, command: 'ADD', args: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=other;K8S_POD_UID=u2' });
      assert.equal(add.exitCode, 0, add.stdout + add.stderr);
      const g = new GuestDhcp({ attachmentDir: attachmentDirFor(base.env.PODVIRT_CNI_SOCKET), log: silentLogger });
      const [a] = g.knownAttachments();
      const st = await fs.stat(`/run/netns/${ns}`);
      assert.deepEqual(
        { pod: a?.pod, netnsId: a?.netnsId, bridge: a?.bridge, ip: a?.ips[0]?.address },
        { pod: { namespace: 'default', name: 'other', uid: 'u2' }, netnsId: { ino: st.ino, dev: st.dev }, bridge, ip: (add.result!.ips as Array<{ address: string }>)[0]!.address },
      );
      const del = await invokeCni({ ...base, command: 'DEL' });
      assert.equal(del.exitCode, 0, del.stdout + del.stderr);
      assert.deepEqual(readAttachments(attachmentDirFor(base.env.PODVIRT_CNI_SOCKET)), []);
    } finally {
      await invokeCni({ ...base, command: 'DEL' }).catch(() => undefined);
      await exec('ip', ['netns', 'delete', ns], { allowFailure: true });
    }
  });

  it('pod deleted: the VM stops and its lease goes (the DHCP server no longer answers for the MAC); CNI DEL removes the record', async function () {
    if (status().phase !== 'Running') skipBecause(this, 'needs the VM of the previous test');
    const guestMac = (await guestDhcpOf(cfg)).leases()[0]!.mac;
    await core.deleteNamespacedPod({ namespace: 'default', name: 'vm' });
    await until('VM stopped', () => (status().phase === 'Stopped' ? true : undefined), 30_000);
    assert.deepEqual((await guestDhcpOf(cfg)).leases(), []);
    // A client with the guest's MAC on the bridge gets no answer now.
    const r = await probeDhcp(guestMac);
    assert.notEqual(r.code, 0, `no DHCP answer for the deleted pod's MAC: ${r.stdout}`);
    // The kubelet tears the sandbox down.
    const del = await cni('DEL');
    assert.equal(del.exitCode, 0, del.stdout);
    added = false;
    assert.deepEqual(readAttachments(attachmentDirFor(cniSocketOf(cfg))), []);
    api.deleteObject('pods', 'default', 'vm');
  });
});
