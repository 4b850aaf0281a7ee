import { strict as assert } from 'node:assert';
import type { V1Pod } from '@kubernetes/client-node';
import { parse } from 'yaml';
import { planTargetPod, stickyNetworks } from '../../agent/kube/kubectl/migrate.js';
import { selectionCniArgs } from '../../agent/local/cni-backend.js';
import { IPAM_KEY_ANNOTATION, resolveNetworkConfig, vmIpamKey } from '../../agent/local/networks.js';
import { targetManifest } from '../../agent/migration/local.js';
import { isMigrationTarget } from '../../cni/attachment.js';
import { CniError } from '../../cni/cni-error.js';
import { conflictingIps, gcDelegateConfig, ipamKeyOf, recordPath, requestedIps } from '../../cni/ipam-owner.js';
import type { CniContext } from '../../cni/context.js';
import { DEFAULT_STATE_DIR, parseNetConf } from '../../cni/netconf.js';

const base = { cniVersion: '1.0.0', name: 'n1', type: 'podvirt', ipam: { type: 'host-local' } };
const ctxWith = (cniArgs: Record<string, string> = {}) => ({ cniArgs: new Map(Object.entries(cniArgs)) }) as unknown as CniContext;

/** The pure parts of sticky IPs: the plugin's key and state inputs, and how both modes' migration targets carry the key. */
describe('sticky IPs across migration (pure parts)', () => {
  describe('plugin inputs', () => {
    it('ipamKey: runtimeConfig over args.cni; none without IPAM; stateDir defaults next to host-local', () => {
      const both = parseNetConf({ ...base, runtimeConfig: { ipamKey: 'vm-a' }, args: { cni: { ipamKey: 'vm-b' } } });
      assert.equal(ipamKeyOf(both), 'vm-a');
      assert.equal(ipamKeyOf(parseNetConf({ ...base, args: { cni: { IPAMKEY: 'vm-b' } } })), 'vm-b', 'keys match case-insensitively');
      assert.equal(ipamKeyOf(parseNetConf(base)), undefined);
      assert.equal(ipamKeyOf(parseNetConf({ ...base, ipam: undefined, args: { cni: { ipamKey: 'vm-b' } } })), undefined);
      assert.equal(parseNetConf(base).stateDir, DEFAULT_STATE_DIR);
      assert.equal(parseNetConf({ ...base, stateDir: '/tmp/x' }).stateDir, '/tmp/x');
    });

    it('bad keys and state dirs are config errors (code 7)', () => {
      for (const bad of [{ args: { cni: { ipamKey: '-lead' } } }, { args: { cni: { ipamKey: 'a/b' } } }, { runtimeConfig: { ipamKey: '' } }, { runtimeConfig: { ipamKey: 'k'.repeat(129) } }, { stateDir: 'rel/dir' }, { stateDir: 3 }]) {
        assert.throws(
          () => parseNetConf({ ...base, ...bad }),
          (e: unknown) => e instanceof CniError && e.code === 7,
          JSON.stringify(bad),
        );
      }
      assert.equal(ipamKeyOf(parseNetConf({ ...base, args: { cni: { ipamKey: 'k'.repeat(128) } } })), 'k'.repeat(128));
    });

    it('requested addresses from all three inputs, compared without prefix lengths', () => {
      const conf = parseNetConf({ ...base, runtimeConfig: { ips: ['10.0.0.5/24'] }, args: { cni: { ips: ['10.0.0.6'] } } });
      assert.deepEqual(requestedIps(ctxWith({ IP: '10.0.0.7,10.0.0.8/24' }), conf), ['10.0.0.5', '10.0.0.6', '10.0.0.7', '10.0.0.8']);
      const result = { cniVersion: '1.0.0', ips: [{ address: '10.0.0.5/24' }, { address: '10.0.0.6/24' }] };
      assert.deepEqual(conflictingIps(['10.0.0.5', '10.0.0.6'], result), []);
      assert.deepEqual(conflictingIps(['10.0.0.5', '10.0.0.9'], result), ['10.0.0.9']);
      assert.deepEqual(conflictingIps([], undefined), []);
    });

    it('record paths: one per (network, key, ifname); GC tells the delegate the held keys', () => {
      assert.equal(recordPath('/s', 'net', 'vm-1', 'eth0'), '/s/ipam-owners/net/vm-1@eth0.json');
      assert.notEqual(recordPath('/s', 'net', 'vm-1', 'eth0'), recordPath('/s', 'net', 'vm-1', 'eth1'));
      assert.equal(recordPath('/s', 'net', 'k', 'a%b'), '/s/ipam-owners/net/k@a%25b.json');
      const raw = { name: 'n', 'cni.dev/attachments': [] };
      const att = [{ containerID: 'c1', ifname: 'eth0' }, { containerID: 'vm-1', ifname: 'eth0' }];
      assert.deepEqual(gcDelegateConfig(raw, att), { name: 'n', 'cni.dev/attachments': att, 'cni.dev/valid-attachments': att });
    });
  });

  describe('local mode', () => {
    it('a VM keeps one key: derived from its first pod, carried by every target manifest', () => {
      const manifest = `apiVersion: v1\nkind: Pod\nmetadata:\n  name: vm1\n  annotations:\n    vm.podvirt.io/spec: "cpus: 1"\n`;
      assert.equal(vmIpamKey({ name: 'vm1', annotations: {} }), 'podvirt-vm-vm1');
      const t1 = targetManifest(manifest, 'vm1', 'mig-0000abcd');
      const a1 = (parse(t1) as { metadata: { name: string; annotations: Record<string, string> } }).metadata;
      assert.equal(a1.annotations[IPAM_KEY_ANNOTATION], 'podvirt-vm-vm1');
      assert.equal(vmIpamKey(a1), 'podvirt-vm-vm1');
      const t2 = parse(targetManifest(t1, a1.name, 'mig-00001234')) as { metadata: { annotations: Record<string, string> } };
      assert.equal(t2.metadata.annotations[IPAM_KEY_ANNOTATION], 'podvirt-vm-vm1', 'the second migration keeps the first key');
    });

    it('selection cni-args are read from the JSON annotation; podvirt configs get a state dir by the IPAM store', async () => {
      const pod = { annotations: { 'k8s.v1.cni.cncf.io/networks': JSON.stringify([{ name: 'a', interface: 'net1', 'cni-args': { ipamKey: 'k1', x: 1 } }, { name: 'b' }]) } };
      assert.deepEqual(selectionCniArgs(pod, { name: 'a', namespace: undefined, interface: 'net1', mac: undefined, ips: undefined }), { ipamKey: 'k1', x: 1 });
      assert.equal(selectionCniArgs(pod, { name: 'a', namespace: undefined, interface: 'net2', mac: undefined, ips: undefined }), undefined);
      assert.equal(selectionCniArgs({ annotations: { 'k8s.v1.cni.cncf.io/networks': 'a@net1' } }, { name: 'a', namespace: undefined, interface: 'net1', mac: undefined, ips: undefined }), undefined);
      const conf = await resolveNetworkConfig('podvirt0', new Map(), '/nonexistent', '/state/ipam');
      assert.equal(conf.stateDir, '/state/cni');
      assert.equal((conf.ipam as { dataDir: string }).dataDir, '/state/ipam');
    });
  });

  describe('cluster mode: planTargetPod', () => {
    const spec = JSON.stringify({ cpus: 1, memory: '256Mi', interfaces: [{ name: 'nic0', network: 'vmnet' }, { name: 'nic1', network: 'other/vmnet2' }, { name: 'nic2', network: 'pod' }] });
    const pod = (networks: string, extra: Record<string, string> = {}): V1Pod => ({
      metadata: {
        name: 'vm-a',
        namespace: 'vms',
        uid: '1b4e28ba-2fa1-11d2-883f-0016d3cca427',
        annotations: {
          'vm.podvirt.io/spec': spec,
          'vm.podvirt.io/topology': '{}',
          'vm.podvirt.io/migration-network': 'mignet',
          'k8s.v1.cni.cncf.io/networks': networks,
          'k8s.v1.cni.cncf.io/network-status': JSON.stringify([
            { name: 'kindnet', interface: 'eth0', ips: ['10.244.1.5'], default: true },
            { name: 'vms/vmnet', interface: 'net1', ips: ['10.88.0.7'], mac: '02:00:00:00:00:01' },
            { name: 'other/vmnet2', interface: 'net2', ips: ['10.99.0.3', 'fd00::3'] },
            { name: 'vms/mignet', interface: 'mig0', ips: ['10.77.0.2'] },
            { name: 'vms/plain', interface: 'net4', ips: ['10.66.0.2'] },
          ]),
          ...extra,
        },
      },
      spec: { nodeName: 'node-1', containers: [] },
    });

    it('each tap network gets the VM key and its addresses; migration and other networks are left alone', () => {
      const t = planTargetPod(pod('vmnet@net1, other/vmnet2@net2, mignet@mig0, plain@net4'), { suffix: 'abcde' });
      const sels = JSON.parse(t.metadata!.annotations!['k8s.v1.cni.cncf.io/networks']!) as Array<Record<string, unknown>>;
      const key = 'podvirt-vm-1b4e28ba-2fa1-11d2-883f-0016d3cca427';
      assert.deepEqual(sels, [
        { name: 'vmnet', interface: 'net1', 'cni-args': { ipamKey: key, migrationTarget: true }, ips: ['10.88.0.7'] },
        { name: 'vmnet2', namespace: 'other', interface: 'net2', 'cni-args': { ipamKey: key, migrationTarget: true }, ips: ['10.99.0.3', 'fd00::3'] },
        { name: 'mignet', interface: 'mig0' },
        { name: 'plain', interface: 'net4' },
      ]);
      assert.equal(t.metadata!.annotations!['k8s.v1.cni.cncf.io/network-status'], undefined, "the source's status is not the target's");
    });

    it("the planned target's cni-args reach the plugin as a migration target (args.cni, as Multus passes them)", () => {
      const t = planTargetPod(pod('vmnet@net1, mignet@mig0'), { suffix: 'abcde' });
      const sels = JSON.parse(t.metadata!.annotations!['k8s.v1.cni.cncf.io/networks']!) as Array<{ 'cni-args'?: Record<string, unknown> }>;
      const conf = (cni?: Record<string, unknown>) => parseNetConf({ cniVersion: '1.0.0', name: 'vmnet', type: 'podvirt-cni', mode: 'tap', ...(cni ? { args: { cni } } : {}) });
      assert.equal(isMigrationTarget(ctxWith(), conf(sels[0]!['cni-args'])), true, 'tap network: silent tap, provisional hold');
      assert.equal(isMigrationTarget(ctxWith(), conf(sels[1]!['cni-args'])), false, 'migration network: a normal attachment');
      assert.throws(() => conf({ migrationTarget: 'maybe' }), /migrationTarget/);
    });

    it('a key and addresses already there are kept across successive migrations', () => {
      const sel = [{ name: 'vmnet', interface: 'net1', 'cni-args': { ipamKey: 'vm-first', other: 'x' }, ips: ['10.88.0.7/24'] }];
      const t = planTargetPod(pod(JSON.stringify(sel)), { suffix: 'abcde' });
      const again = planTargetPod({ ...t, metadata: { ...t.metadata!, uid: 'another-uid' }, spec: { ...t.spec!, nodeName: 'node-2' } }, { suffix: '12345' });
      const flagged = [{ ...sel[0], 'cni-args': { ...sel[0]!['cni-args'], migrationTarget: true } }];
      for (const p of [t, again]) assert.deepEqual(JSON.parse(p.metadata!.annotations!['k8s.v1.cni.cncf.io/networks']!), flagged);
    });

    it('without a usable VM spec or network annotation nothing changes; a broken annotation is an error', () => {
      assert.equal(stickyNetworks(pod('vmnet@net1', { 'vm.podvirt.io/spec': 'cpus: [' })), 'vmnet@net1');
      assert.equal(planTargetPod(pod('')).metadata!.annotations!['k8s.v1.cni.cncf.io/networks'], '');
      assert.throws(() => planTargetPod(pod('[{"name": ')), /not valid JSON/);
    });
  });
});
