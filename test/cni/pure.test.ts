import { strict as assert } from 'node:assert';
import { parseCniArgs, stripPodvirtArgs } from '../../cni/cni-args.js';
import { CniError } from '../../cni/cni-error.js';
import { invokeEnv } from '../../cni/invoke.js';
import { stderrLogger } from '../../cni/logger.js';
import { MAX_CONFIG_BYTES, parseNetConf } from '../../cni/netconf.js';
import { attachmentNames, planActivate, planBandwidth, planDelPod, planMigrationAdd, planTapAdd, stableMac } from '../../cni/plan.js';
import { formatResult, parseResult, type CniResult } from '../../cni/result.js';
import { compareVersions, highestCommon } from '../../cni/versions.js';
import { encodeRequest, encodeResponse, RequestDecoder } from '../../cni/wire.js';

const codeOf = (f: () => unknown): number => {
  try {
    f();
  } catch (e) {
    if (e instanceof CniError) return e.code;
    throw e;
  }
  return 0;
};

describe('cni pure layers', () => {
  describe('results', () => {
    const r: CniResult = {
      cniVersion: '1.1.0',
      interfaces: [{ name: 'br' }, { name: 'net1', mac: '02:00:00:00:00:01', mtu: 1400, sandbox: '/run/netns/x' }],
      ips: [{ address: '10.0.0.5/24', gateway: '10.0.0.1', interface: 1 }, { address: 'fd00::5/64', interface: 1 }],
      routes: [{ dst: '0.0.0.0/0', gw: '10.0.0.1', priority: 5 }],
    };
    const cases: { v: string; ipVersion: string | undefined; mtu: number | undefined; priority: number | undefined }[] = [
      { v: '0.3.1', ipVersion: '4', mtu: undefined, priority: undefined },
      { v: '0.4.0', ipVersion: '4', mtu: undefined, priority: undefined },
      { v: '1.0.0', ipVersion: undefined, mtu: undefined, priority: undefined },
      { v: '1.1.0', ipVersion: undefined, mtu: 1400, priority: 5 },
    ];
    for (const tc of cases) {
      it(`prints version ${tc.v}`, () => {
        const out = formatResult(r, tc.v) as { cniVersion: string; ips: { version?: string }[]; interfaces: { mtu?: number }[]; routes: { priority?: number }[]; dns: object };
        assert.equal(out.cniVersion, tc.v);
        assert.equal(out.ips[0]?.version, tc.ipVersion);
        assert.equal(out.ips[1]?.version, tc.ipVersion ? '6' : undefined);
        assert.equal(out.interfaces[1]?.mtu, tc.mtu);
        assert.equal(out.routes[0]?.priority, tc.priority);
        assert.deepEqual(out.dns, {});
      });
    }
    it('reads a 0.4.0 IPAM result and rejects malformed ones with code 6', () => {
      const p = parseResult({ cniVersion: '0.4.0', ips: [{ version: '4', address: '10.1.0.2/16', gateway: '10.1.0.1' }], dns: {} });
      assert.deepEqual(p.ips, [{ address: '10.1.0.2/16', gateway: '10.1.0.1' }]);
      assert.equal(codeOf(() => parseResult({ cniVersion: '1.0.0', ips: [{ address: 5 }] })), 6);
      assert.equal(codeOf(() => parseResult({ cniVersion: '0.2.0' })), 6);
      assert.equal(codeOf(() => parseResult([])), 6);
    });
    it('orders versions and finds the highest common one', () => {
      assert.ok(compareVersions('0.10.0', '0.4.0') > 0);
      assert.equal(highestCommon(['0.4.0', '1.0.0', '1.1.0'], ['0.3.1', '1.0.0', '0.4.0']), '1.0.0');
      assert.equal(highestCommon(['1.1.0'], ['0.3.1']), undefined);
    });
  });

  describe('CNI_ARGS', () => {
    it('parses pairs, keeps "=" inside values, ignores unknown keys only with IgnoreUnknown', () => {
      const a = parseCniArgs('IgnoreUnknown=1;K8S_POD_NAME=vm1;FOO=a=b;MAC=02:00:00:00:00:01');
      assert.equal(a.get('FOO'), 'a=b');
      assert.equal(a.get('MAC'), '02:00:00:00:00:01');
      assert.equal(codeOf(() => parseCniArgs('FOO=1')), 4);
      assert.equal(codeOf(() => parseCniArgs('novalue')), 4);
      assert.equal(codeOf(() => parseCniArgs('IgnoreUnknown=maybe')), 4);
      assert.equal(stripPodvirtArgs('IgnoreUnknown=1;MIGRATION_TARGET=true;IP=10.0.0.1'), 'IgnoreUnknown=1;IP=10.0.0.1');
    });
  });

  describe('network config', () => {
    const base = { cniVersion: '1.1.0', name: 'n', type: 'podvirt', ipam: { type: 'host-local' } };
    it('defaults: tap mode on bridge podvirt0, no MTU, single queue', () => {
      const c = parseNetConf(base);
      assert.equal(c.mode, 'tap');
      assert.equal(c.bridge, 'podvirt0');
      assert.equal(c.mtu, undefined);
      assert.equal(c.multiQueue, false);
      assert.equal(c.ipamType, 'host-local');
    });
    it('matches keys case-insensitively (as Go does) and normalises MACs', () => {
      const c = parseNetConf({ ...base, MultiQueue: true, MTU: 9000, RuntimeConfig: { MAC: '02:AA:BB:CC:DD:EE' }, 'cni.dev/foo': 1 });
      assert.equal(c.multiQueue, true);
      assert.equal(c.mtu, 9000);
      assert.equal(c.runtimeConfig.mac, '02:aa:bb:cc:dd:ee');
    });
    const bad: [string, Record<string, unknown>, number][] = [
      ['unknown key', { foo: 1 }, 2],
      ['ipMasq true', { ipMasq: true }, 2],
      ['bandwidth in tap mode', { bandwidth: { rate: 1000 } }, 2],
      ['unknown bandwidth key', { mode: 'migration', bandwidth: { speed: 1 } }, 2],
      ['mtu too small', { mtu: 10 }, 7],
      ['owner negative', { owner: -1 }, 7],
      ['owner not an integer', { owner: 1.5 }, 7],
      ['bridge name too long', { bridge: 'abcdefghijklmnop' }, 7],
      ['migration mode without ipam', { mode: 'migration', ipam: undefined }, 7],
      ['bad args.cni.mac', { args: { cni: { mac: 'zz' } } }, 7],
      ['bad network name', { name: '-x' }, 7],
      ['runtimeConfig.ips not a list', { runtimeConfig: { ips: '10.0.0.1/24' } }, 7],
      ['unsupported version', { cniVersion: '2.0.0' }, 1],
    ];
    for (const [name, extra, code] of bad) {
      it(`rejects ${name} with code ${code}`, () => {
        assert.equal(codeOf(() => parseNetConf({ ...base, ...extra })), code);
      });
    }
    it('bandwidth: rate applies both ways, runtimeConfig names are accepted', () => {
      const c = parseNetConf({ ...base, mode: 'migration', bandwidth: { rate: 1e9 }, runtimeConfig: { bandwidth: { egressRate: 5e8 } } });
      assert.deepEqual(c.bandwidth, { ingressRate: 1e9, egressRate: 1e9 });
      assert.deepEqual(c.runtimeConfig.bandwidth, { egressRate: 5e8 });
    });
  });

  describe('plan', () => {
    const names = attachmentNames('net', 'abc', 'net1');
    it('names fit in 15 characters, depend on what they must, groups stay in [2^30, 2^31)', () => {
      for (const n of [names.hostVeth, names.podVeth]) assert.ok(n.length <= 15, n);
      assert.notEqual(attachmentNames('net', 'abd', 'net1').hostVeth, names.hostVeth);
      assert.notEqual(attachmentNames('net2', 'abc', 'net1').hostVeth, names.hostVeth);
      assert.equal(attachmentNames('other', 'x', 'net1').podVeth, names.podVeth);
      for (const g of [names.podGroup, names.hostGroup]) assert.ok(g >= 2 ** 30 && g < 2 ** 31);
      assert.equal(stableMac('x'), stableMac('x'));
      assert.match(stableMac('x'), /^[0-9a-f][26ae]:/);
    });
    const veth = { netns: '/run/netns/p', mtu: 1400, names, hostVethMac: '02:00:00:00:00:02', hostNetns: '/proc/1/ns/net', bridgeIndex: 7 };
    it('tap mode: temp tap renamed to CNI_IFNAME, veth placed from the pod into the host, redirects both ways', () => {
      const p = planTapAdd({ ...veth, ifname: 'net1', mac: '02:00:00:00:00:01', multiQueue: true, owner: 107, group: 108, migrationTarget: false, podVethMac: '02:00:00:00:00:03', tmpTap: 'pvttmp' });
      assert.equal(p.pod[0]?.line, 'tuntap add dev pvttmp mode tap multi_queue user 107 group 108');
      assert.match(p.pod[1]?.line ?? '', /^link set dev pvttmp name net1 address 02:00:00:00:00:01 mtu 1400 addrgenmode none group \d+ up$/);
      assert.match(p.pod[2]?.line ?? '', new RegExp(`^link add ${names.hostVeth} netns /proc/1/ns/net .* master if7 group ${names.hostGroup} up type veth peer name ${names.podVeth} `));
      assert.match(p.pod[3]?.line ?? '', / up$/);
      assert.equal(p.podTc.filter((l) => l.includes('mirred egress redirect')).length, 2);
      const target = planTapAdd({ ...veth, ifname: 'net1', mac: '02:00:00:00:00:01', multiQueue: false, owner: undefined, group: undefined, migrationTarget: true, podVethMac: '02:00:00:00:00:03', tmpTap: 'pvttmp' });
      assert.equal(target.pod[0]?.line, 'tuntap add dev pvttmp mode tap');
      assert.doesNotMatch(target.pod[3]?.line ?? '', / up$/);
      assert.deepEqual(planActivate('net1'), ['link set dev net1 up', `link set dev ${names.podVeth} up`]);
      assert.deepEqual(planDelPod(names), [`link del group ${names.podGroup}`]);
    });
    it('migration mode: addresses, routes with the family gateway, tbf both ways', () => {
      const ops = planMigrationAdd({
        ...veth,
        ifname: 'mig0',
        mac: '02:00:00:00:00:01',
        ips: [{ address: '10.0.0.5/24', gateway: '10.0.0.1' }, { address: 'fd00::5/64' }],
        routes: [{ dst: '0.0.0.0/0' }, { dst: '192.0.2.0/24', gw: '10.0.0.9', priority: 10 }],
      }).map((o) => o.line);
      assert.ok(ops.includes('addr add 10.0.0.5/24 dev mig0'));
      assert.ok(ops.includes('addr add fd00::5/64 dev mig0 nodad'));
      assert.ok(ops.includes('route add 0.0.0.0/0 via 10.0.0.1 dev mig0'));
      assert.ok(ops.includes('route add 192.0.2.0/24 via 10.0.0.9 dev mig0 metric 10'));
      const bw = planBandwidth('mig0', 'pvhx', { ingressRate: 8e6, egressRate: 1e9, egressBurst: 8e6 });
      assert.deepEqual(bw.pod, ['qdisc add dev mig0 root tbf rate 1000000000bit burst 1000000 latency 25ms']);
      assert.deepEqual(bw.host, ['qdisc add dev pvhx root tbf rate 8000000bit burst 65536 latency 25ms']);
    });
  });

  describe('shim wire format', () => {
    it('passes only CNI_* variables and caps the config at one byte past the limit', () => {
      const req = encodeRequest({ CNI_COMMAND: 'ADD', PATH: '/evil', LD_PRELOAD: 'x', CNI_ARGS: 'A=b=c' }, Buffer.alloc(MAX_CONFIG_BYTES + 100, 0x61));
      const d = new RequestDecoder();
      for (let i = 0; i < req.length; i += 65536) d.push(req.subarray(i, i + 65536));
      const out = d.finish();
      assert.deepEqual(out?.env, { CNI_COMMAND: 'ADD', CNI_ARGS: 'A=b=c' });
      assert.equal(out?.stdin.length, MAX_CONFIG_BYTES + 1);
    });
    it('rejects a bad magic and an incomplete header', () => {
      const d = new RequestDecoder();
      d.push(Buffer.from('HELLO\n\0\0'));
      assert.equal(d.finish(), undefined);
      const e = new RequestDecoder();
      e.push(Buffer.from('PVCNI1\nCNI_COMMAND=ADD'));
      assert.equal(e.finish(), undefined);
    });
    it('encodes a response header the shim parses', () => {
      assert.equal(encodeResponse(1, '{"a":"é"}', 'x').toString(), 'PVCNI1 1 10 1\n{"a":"é"}x');
    });
  });

  it('invokeEnv gives a runtime-like minimal environment', () => {
    const env = invokeEnv({ plugin: '/x', command: 'ADD', config: {}, containerId: 'c', netns: '/n', ifname: 'i', args: { IgnoreUnknown: '1', MAC: 'm' }, path: ['/a', '/b'], env: { EXTRA: '1' } });
    assert.deepEqual(env, { PATH: env.PATH, CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c', CNI_NETNS: '/n', CNI_IFNAME: 'i', CNI_ARGS: 'IgnoreUnknown=1;MAC=m', CNI_PATH: '/a:/b', EXTRA: '1' });
    assert.equal('NODE_EXTRA_CA_CERTS' in env, false);
  });

  it('stderrLogger writes JSON lines at or above its level', () => {
    const lines: string[] = [];
    const log = stderrLogger('info', (s) => lines.push(s));
    log.debug({ a: 1 }, 'hidden');
    log.warn({ a: 2 }, 'shown');
    assert.equal(lines.length, 1);
    assert.deepEqual({ ...JSON.parse(lines[0] as string), time: 0 }, { level: 'warn', time: 0, component: 'podvirt-cni', a: 2, msg: 'shown' });
  });
});
