import { strict as assert } from 'node:assert';
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { activateTap } from '../../cni/activate.js';
import { PROJECT_ROOT } from '../../lib/project-root.js';
import { CniHarness, type Transport } from './harness.js';

const ARP_HELPER = path.join(PROJECT_ROOT, 'test/cni/fixtures/tap-arp.py');

interface Result {
  cniVersion: string;
  interfaces: { name: string; mac?: string; mtu?: number; sandbox?: string }[];
  ips: { address: string; gateway?: string; interface?: number; version?: string }[];
}

/** Sends ARP requests for `target` from the tap (as the VM would) and returns the MAC that answered. */
function arpFromTap(ns: string, tap: string, mac: string, src: string, target: string, mq: boolean, timeoutS: number): string | undefined {
  const r = spawnSync('ip', ['netns', 'exec', ns, 'python3', ARP_HELPER, tap, mac, src, target, mq ? '1' : '0', String(timeoutS)], { encoding: 'utf8' });
  if (r.status === 0) return r.stdout.trim();
  if (r.status === 1 && !r.stderr.trim()) return undefined;
  throw new Error(`ARP helper failed: ${r.stderr}`);
}

function fdbHas(bridge: string, mac: string): boolean {
  return execFileSync('bridge', ['fdb', 'show', 'br', bridge]).toString().toLowerCase().includes(mac.toLowerCase());
}

describe('podvirt-cni on real netns, veth, bridges and taps (host-local IPAM)', function () {
  this.timeout(120_000);
  const h = new CniHarness();
  before(async () => {
    await h.start();
  });
  after(async () => {
    await h.cleanup();
  });

  for (const transport of ['shim+server', 'bundle'] as Transport[]) {
    describe(`via ${transport === 'bundle' ? 'the shim falling back to the standalone bundle' : 'the shim and the CNI server'}`, () => {
      for (const version of ['0.3.1', '0.4.0', '1.0.0', '1.1.0']) {
        it(`ADD/CHECK/DEL/DEL with result version ${version}`, async () => {
          const ns = h.netns();
          const netns = `/run/netns/${ns}`;
          const mac = '02:00:5e:10:00:0a';
          const conf = h.config({ mtu: 1400, multiQueue: true, owner: 107, group: 108, runtimeConfig: { mac } }, version);
          const base = { config: conf, containerId: `c-${version}`, netns, ifname: 'net1' };
          const add = await h.invoke(transport, { ...base, command: 'ADD' });
          assert.equal(add.exitCode, 0, add.stdout + add.stderr);
          const res = add.result as unknown as Result;
          assert.equal(res.cniVersion, version);
          const tapIdx = res.interfaces.findIndex((i) => i.sandbox === netns);
          assert.deepEqual(res.interfaces[tapIdx]?.name, 'net1');
          assert.equal(res.interfaces[tapIdx]?.mac, mac);
          assert.equal(res.ips.length, 1);
          assert.equal(res.ips[0]?.interface, tapIdx);
          assert.ok(res.ips[0]?.address.startsWith(`${h.subnetBase}.`));
          assert.equal(res.ips[0]?.version, version.startsWith('0.') ? '4' : undefined);
          assert.equal(res.interfaces[tapIdx]?.mtu, version === '1.1.0' ? 1400 : undefined);
          // The tap as QEMU will find it: multi-queue, owned by 107:108, VM MAC, no address on it.
          const tap = JSON.parse(execFileSync('ip', ['-n', ns, '-j', '-d', 'addr', 'show', 'dev', 'net1']).toString())[0];
          assert.equal(tap.linkinfo.info_kind, 'tun');
          assert.equal(tap.linkinfo.info_data.type, 'tap');
          assert.equal(tap.linkinfo.info_data.multi_queue, true);
          assert.equal(tap.linkinfo.info_data.user, 107);
          assert.equal(tap.linkinfo.info_data.group, 108);
          assert.equal(tap.address, mac);
          assert.equal(tap.mtu, 1400);
          assert.deepEqual(tap.addr_info, []);
          assert.equal(readFileSync(`/sys/class/net/${res.interfaces[1]?.name}/master/uevent`, 'utf8').includes(`INTERFACE=${h.bridge}`), true);
          assert.equal(h.reservations().length >= 1, true);

          const prevResult = add.result;
          const check = await h.invoke(transport, { ...base, config: { ...conf, prevResult }, command: 'CHECK' });
          if (version === '0.3.1') {
            assert.equal(check.exitCode, 1);
            assert.equal(check.error?.code, 1);
          } else {
            assert.equal(check.exitCode, 0, check.stdout + check.stderr);
          }
          if (version === '1.1.0') {
            // CHECK notices a broken datapath: the redirect from the tap to the veth removed.
            execFileSync('tc', ['-n', ns, 'qdisc', 'del', 'dev', 'net1', 'ingress']);
            const broken = await h.invoke(transport, { ...base, config: { ...conf, prevResult }, command: 'CHECK' });
            assert.equal(broken.error?.code, 100, broken.stdout);
            assert.match(broken.error?.msg ?? '', /redirect from net1/);
          }
          for (let i = 0; i < 2; i++) {
            const del = await h.invoke(transport, { ...base, config: { ...conf, prevResult }, command: 'DEL' });
            assert.equal(del.exitCode, 0, del.stdout + del.stderr);
            assert.equal(del.stdout, '');
          }
          assert.deepEqual(h.nsLinks(ns), []);
          assert.equal(h.reservations().includes(res.ips[0]?.address.split('/')[0] ?? ''), false);
          if (version !== '0.3.1') {
            const after = await h.invoke(transport, { ...base, config: { ...conf, prevResult }, command: 'CHECK' });
            assert.notEqual(after.exitCode, 0);
          }
          h.dropNetns(ns);
        });
      }
    });
  }

  it('L2: a frame the VM sends on the tap reaches the host bridge and the ARP reply comes back', async () => {
    const ns = h.netns();
    const bridgeIp = `${h.subnetBase}.254`;
    const mac = '02:00:5e:10:00:0b';
    const add = await h.invoke('shim+server', { config: h.config({ runtimeConfig: { mac } }), command: 'ADD', containerId: 'l2', netns: `/run/netns/${ns}`, ifname: 'eth1' });
    assert.equal(add.exitCode, 0, add.stdout);
    execFileSync('ip', ['addr', 'replace', `${bridgeIp}/24`, 'dev', h.bridge]);
    const guestIp = (add.result as unknown as Result).ips[0]?.address.split('/')[0] as string;
    const replier = arpFromTap(ns, 'eth1', mac, guestIp, bridgeIp, false, 5);
    assert.equal(replier, readFileSync(`/sys/class/net/${h.bridge}/address`, 'utf8').trim());
    assert.equal(fdbHas(h.bridge, mac), true);
    const del = await h.invoke('shim+server', { config: h.config(), command: 'DEL', containerId: 'l2', netns: `/run/netns/${ns}`, ifname: 'eth1' });
    assert.equal(del.exitCode, 0);
    h.dropNetns(ns);
  });

  it('a migration target stays silent until activated (no frame with its MAC reaches the bridge)', async () => {
    const ns = h.netns();
    const netns = `/run/netns/${ns}`;
    const bridgeIp = `${h.subnetBase}.254`;
    execFileSync('ip', ['addr', 'replace', `${bridgeIp}/24`, 'dev', h.bridge]);
    const mac = '02:00:5e:10:00:0c';
    const base = { command: 'ADD' as const, containerId: 'mig-target', netns, ifname: 'net1', args: 'IgnoreUnknown=1;MIGRATION_TARGET=true' };
    const add = await h.invoke('shim+server', { ...base, config: h.config({ runtimeConfig: { mac, ips: [`${h.subnetBase}.77/24`] }, multiQueue: true }) });
    assert.equal(add.exitCode, 0, add.stdout);
    assert.equal((add.result as unknown as Result).ips[0]?.address, `${h.subnetBase}.77/24`, 'runtimeConfig.ips honoured');
    const hostVeth = (add.result as unknown as Result).interfaces[1]?.name as string;
    const rxBefore = Number(readFileSync(`/sys/class/net/${hostVeth}/statistics/rx_packets`, 'utf8'));
    assert.equal(arpFromTap(ns, 'net1', mac, `${h.subnetBase}.77`, bridgeIp, true, 1.2), undefined);
    assert.equal(fdbHas(h.bridge, mac), false);
    assert.equal(Number(readFileSync(`/sys/class/net/${hostVeth}/statistics/rx_packets`, 'utf8')), rxBefore);

    // Switch-over: the CLI the agent's local mode uses.
    const cli = spawnSync(process.execPath, ['--import', 'tsx', path.join(PROJECT_ROOT, 'bin/podvirt.ts'), 'cni-activate', '--netns', netns, '--ifname', 'net1'], {
      encoding: 'utf8',
      cwd: PROJECT_ROOT,
    });
    assert.equal(cli.status, 0, cli.stderr);
    await activateTap({ netns, ifname: 'net1' }); // idempotent
    assert.equal(arpFromTap(ns, 'net1', mac, `${h.subnetBase}.77`, bridgeIp, true, 5), readFileSync(`/sys/class/net/${h.bridge}/address`, 'utf8').trim());
    assert.equal(fdbHas(h.bridge, mac), true);
    await assert.rejects(activateTap({ netns, ifname: 'nope0' }), /no podvirt tap/);
    const del = await h.invoke('shim+server', { ...base, command: 'DEL', config: h.config() });
    assert.equal(del.exitCode, 0);
    assert.equal(h.reservations().includes(`${h.subnetBase}.77`), false);
    h.dropNetns(ns);
  });

  it('migration mode: a veth with the IPAM address and routes, a bandwidth cap, reachable over the bridge', async () => {
    const ns = h.netns();
    const netns = `/run/netns/${ns}`;
    const bridgeIp = `${h.subnetBase}.254`;
    execFileSync('ip', ['addr', 'replace', `${bridgeIp}/24`, 'dev', h.bridge]);
    const conf = h.config({
      mode: 'migration',
      bandwidth: { rate: 100_000_000 },
      ipam: { type: 'host-local', dataDir: h.dataDir, ranges: [[{ subnet: h.subnet }]], routes: [{ dst: '192.0.2.0/24', gw: bridgeIp }] },
    });
    const base = { containerId: 'mig-net', netns, ifname: 'mig0' };
    const add = await h.invoke('shim+server', { ...base, config: conf, command: 'ADD' });
    assert.equal(add.exitCode, 0, add.stdout);
    const res = add.result as unknown as Result & { routes: unknown[] };
    const addr = JSON.parse(execFileSync('ip', ['-n', ns, '-j', '-d', 'addr', 'show', 'dev', 'mig0']).toString())[0];
    assert.equal(addr.linkinfo.info_kind, 'veth');
    assert.equal(`${addr.addr_info[0].local}/${addr.addr_info[0].prefixlen}`, res.ips[0]?.address);
    assert.match(execFileSync('ip', ['-n', ns, 'route', 'show', '192.0.2.0/24']).toString(), new RegExp(`via ${bridgeIp.replace(/\./g, '\\.')}`));
    assert.match(execFileSync('tc', ['-n', ns, 'qdisc', 'show', 'dev', 'mig0']).toString(), /tbf .*rate 100Mbit/);
    assert.match(execFileSync('tc', ['qdisc', 'show', 'dev', res.interfaces[1]?.name as string]).toString(), /tbf .*rate 100Mbit/);
    execFileSync('ip', ['netns', 'exec', ns, 'ping', '-c', '1', '-W', '5', bridgeIp]);
    const check = await h.invoke('shim+server', { ...base, config: { ...conf, prevResult: add.result }, command: 'CHECK' });
    assert.equal(check.exitCode, 0, check.stdout);
    execFileSync('ip', ['-n', ns, 'addr', 'flush', 'dev', 'mig0']);
    const broken = await h.invoke('shim+server', { ...base, config: { ...conf, prevResult: add.result }, command: 'CHECK' });
    assert.equal(broken.error?.code, 100);
    const del = await h.invoke('shim+server', { ...base, config: conf, command: 'DEL' });
    assert.equal(del.exitCode, 0);
    assert.deepEqual(h.nsLinks(ns), []);
    h.dropNetns(ns);
  });

  for (const transport of ['shim+server', 'bundle'] as Transport[]) {
    it(`DEL after the netns is gone releases the address (${transport})`, async () => {
      const ns = h.netns();
      const base = { config: h.config(), containerId: `gone-${transport.length}`, netns: `/run/netns/${ns}`, ifname: 'net1' };
      const add = await h.invoke(transport, { ...base, command: 'ADD' });
      assert.equal(add.exitCode, 0, add.stdout);
      const ip = (add.result as unknown as Result).ips[0]?.address.split('/')[0] as string;
      const hostVeth = (add.result as unknown as Result).interfaces[1]?.name as string;
      assert.equal(h.reservations().includes(ip), true);
      h.dropNetns(ns);
      const del = await h.invoke(transport, { ...base, command: 'DEL' });
      assert.equal(del.exitCode, 0, del.stdout);
      const del2 = await h.invoke(transport, { ...base, netns: undefined, command: 'DEL' });
      assert.equal(del2.exitCode, 0, del2.stdout);
      assert.equal(h.reservations().includes(ip), false);
      assert.equal(h.hostVeths().includes(hostVeth), false);
    });
  }

  for (const transport of ['shim+server', 'bundle'] as Transport[]) {
    it(`a netns bind-mounted outside /run/netns works (${transport})`, async () => {
      const ns = h.netns();
      const file = path.join(h.dir, `ns-${transport === 'bundle' ? 'b' : 's'}`);
      writeFileSync(file, '');
      execFileSync('mount', ['--bind', `/run/netns/${ns}`, file]);
      try {
        const base = { config: h.config(), containerId: `bind-${transport.length}`, netns: file, ifname: 'net1' };
        const add = await h.invoke(transport, { ...base, command: 'ADD' });
        assert.equal(add.exitCode, 0, add.stdout);
        assert.deepEqual(h.nsLinks(ns).sort(), ['net1', (add.result as unknown as Result).interfaces[3]?.name].sort());
        const check = await h.invoke(transport, { ...base, config: { ...h.config(), prevResult: add.result }, command: 'CHECK' });
        assert.equal(check.exitCode, 0, check.stdout);
        const del = await h.invoke(transport, { ...base, command: 'DEL' });
        assert.equal(del.exitCode, 0, del.stdout);
        assert.deepEqual(h.nsLinks(ns), []);
      } finally {
        execFileSync('umount', [file]);
      }
      h.dropNetns(ns);
    });
  }

  it('20 parallel ADDs into different namespaces get distinct addresses; parallel DELs clean up', async () => {
    const nss = Array.from({ length: 20 }, () => h.netns());
    const before = h.reservations().length;
    const adds = await Promise.all(
      nss.map((ns, i) => h.invoke('shim+server', { config: h.config(), command: 'ADD', containerId: `par-${i}`, netns: `/run/netns/${ns}`, ifname: 'net1' })),
    );
    for (const a of adds) assert.equal(a.exitCode, 0, a.stdout);
    const ips = adds.map((a) => (a.result as unknown as Result).ips[0]?.address);
    assert.equal(new Set(ips).size, 20);
    assert.equal(h.reservations().length, before + 20);
    const dels = await Promise.all(
      nss.map((ns, i) => h.invoke('shim+server', { config: h.config(), command: 'DEL', containerId: `par-${i}`, netns: `/run/netns/${ns}`, ifname: 'net1' })),
    );
    for (const d of dels) assert.equal(d.exitCode, 0, d.stdout);
    assert.equal(h.reservations().length, before);
    for (const ns of nss) {
      assert.deepEqual(h.nsLinks(ns), []);
      h.dropNetns(ns);
    }
  });

  it('a failed ADD rolls back: existing interface name, IPAM failure', async () => {
    const ns = h.netns();
    const netns = `/run/netns/${ns}`;
    execFileSync('ip', ['-n', ns, 'tuntap', 'add', 'dev', 'net1', 'mode', 'tap']);
    const ports = h.hostVeths().length;
    const reserved = h.reservations().length;
    const taken = await h.invoke('shim+server', { config: h.config(), command: 'ADD', containerId: 'rb1', netns, ifname: 'net1' });
    assert.equal(taken.exitCode, 1);
    assert.deepEqual(h.nsLinks(ns), ['net1'], 'the pre-existing device is untouched and nothing else is left');
    assert.equal(h.reservations().length, reserved);
    assert.equal(h.hostVeths().length, ports);
    const noIpam = await h.invoke('shim+server', {
      config: h.config({ ipam: { type: 'host-local', dataDir: h.dataDir, ranges: [[{ subnet: 'not-a-subnet' }]] } }),
      command: 'ADD',
      containerId: 'rb2',
      netns,
      ifname: 'net2',
    });
    assert.equal(noIpam.exitCode, 1);
    assert.ok(noIpam.error && noIpam.error.code !== 0);
    assert.deepEqual(h.nsLinks(ns), ['net1']);
    assert.equal(h.hostVeths().length, ports);
    h.dropNetns(ns);
  });

  describe('bad input gives the spec error JSON and leaves nothing behind', () => {
    const big = Buffer.alloc(1024 * 1024 + 10, 0x20);
    big.write('{"cniVersion":"1.0.0","name":"x","type":"podvirt"');
    const cases: { name: string; config?: unknown; env?: Record<string, string | undefined>; ifname?: string; command?: 'ADD' | 'CHECK'; code: number; msg?: RegExp }[] = [
      { name: 'malformed JSON', config: '{"cniVersion": "1.0.0", "name": ', code: 6 },
      { name: 'huge JSON (> 1 MiB)', config: big, code: 6, msg: /decode/ },
      { name: 'wrong type (mtu as a string)', config: { mtu: '1500' }, code: 7, msg: /mtu/ },
      { name: 'wrong type (multiQueue as a number)', config: { multiQueue: 1 }, code: 7 },
      { name: 'unknown key', config: { bridgeName: 'x' }, code: 2, msg: /bridgeName/ },
      { name: 'missing network name', config: { name: '' }, code: 7, msg: /missing network name/ },
      { name: 'unsupported version', config: { cniVersion: '0.2.0' }, code: 1 },
      { name: 'bad mode', config: { mode: 'bridge' }, code: 7 },
      { name: 'multicast MAC', config: { runtimeConfig: { mac: '01:00:5e:00:00:01' } }, code: 7 },
      { name: 'missing CNI_CONTAINERID', env: { CNI_CONTAINERID: undefined }, code: 4, msg: /CNI_CONTAINERID/ },
      { name: 'missing CNI_PATH', env: { CNI_PATH: '' }, code: 4, msg: /CNI_PATH/ },
      { name: '16-character ifname', ifname: 'abcdefghijklmnop', code: 4, msg: /15/ },
      { name: 'unknown CNI_ARGS key', env: { CNI_ARGS: 'FOO=bar' }, code: 4, msg: /FOO/ },
      { name: 'unknown CNI_COMMAND', env: { CNI_COMMAND: 'FROB' }, code: 4, msg: /FROB/ },
      { name: 'CHECK with a 0.3.1 config', config: { cniVersion: '0.3.1' }, command: 'CHECK', code: 1 },
      { name: 'netns that does not exist', env: { CNI_NETNS: '/run/netns/pvt-cni-does-not-exist' }, code: 3 },
      { name: "the plugin's own netns", env: { CNI_NETNS: '/proc/self/ns/net' }, code: 8 },
      { name: 'netns path with a space', env: { CNI_NETNS: '/run/netns/a b' }, code: 4 },
    ];
    let ns = '';
    before(() => {
      ns = h.netns();
    });
    for (const transport of ['shim+server', 'bundle'] as Transport[]) {
      for (const tc of cases) {
        it(`${tc.name} (${transport}) -> code ${tc.code}`, async () => {
          const reserved = h.reservations().length;
          const config =
            typeof tc.config === 'string' || Buffer.isBuffer(tc.config) ? tc.config : h.config(tc.config as Record<string, unknown> | undefined);
          const out = await h.invoke(transport, {
            config,
            command: tc.command ?? 'ADD',
            containerId: 'bad-input',
            netns: `/run/netns/${ns}`,
            ifname: tc.ifname ?? 'net1',
            ...(tc.env ? { env: tc.env } : {}),
          });
          assert.equal(out.exitCode, 1, out.stdout);
          assert.equal(out.error?.code, tc.code, out.stdout);
          if (tc.msg) assert.match(`${out.error?.msg} ${out.error?.details ?? ''}`, tc.msg);
          assert.deepEqual(h.nsLinks(ns), []);
          assert.equal(h.reservations().length, reserved);
        });
      }
    }
  });

  it('VERSION, STATUS and GC', async () => {
    const v = await h.invoke('shim+server', { config: { cniVersion: '1.0.0' }, command: 'VERSION' });
    assert.deepEqual(v.result, { cniVersion: '1.1.0', supportedVersions: ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] });
    const st = await h.invoke('shim+server', { config: h.config(), command: 'STATUS' });
    assert.equal(st.exitCode, 0, st.stdout);
    const old = await h.invoke('shim+server', { config: h.config({}, '1.0.0'), command: 'STATUS' });
    assert.equal(old.error?.code, 1);

    const keep = h.netns();
    const drop = h.netns();
    for (const [id, ns] of [['gc-keep', keep], ['gc-drop', drop]] as const) {
      const a = await h.invoke('shim+server', { config: h.config(), command: 'ADD', containerId: id, netns: `/run/netns/${ns}`, ifname: 'net1' });
      assert.equal(a.exitCode, 0, a.stdout);
    }
    const ports = h.hostVeths().length;
    const gc = await h.invoke('shim+server', {
      config: { ...h.config(), 'cni.dev/valid-attachments': [{ containerID: 'gc-keep', ifname: 'net1' }] },
      command: 'GC',
    });
    assert.equal(gc.exitCode, 0, gc.stdout);
    assert.equal(h.hostVeths().length, ports - 1);
    for (const [id, ns] of [['gc-keep', keep], ['gc-drop', drop]] as const) {
      const d = await h.invoke('shim+server', { config: h.config(), command: 'DEL', containerId: id, netns: `/run/netns/${ns}`, ifname: 'net1' });
      assert.equal(d.exitCode, 0);
      h.dropNetns(ns);
    }
  });

  it('the shim reports an unreachable server with no fallback as CNI error 11', async () => {
    const out = await h.invoke('bundle', { config: h.config(), command: 'ADD', containerId: 'x', netns: '/run/netns/none', ifname: 'net1', env: { PODVIRT_CNI_FALLBACK: path.join(h.dir, 'missing.cjs') } });
    assert.equal(out.exitCode, 1);
    assert.equal(out.error?.code, 11);
    assert.match(out.error?.details ?? '', /missing\.cjs/);
    writeFileSync(path.join(h.dir, 'not-a-socket'), '');
    const notSock = await h.invoke('shim+server', {
      config: h.config({ agentSocket: path.join(h.dir, 'not-a-socket') }),
      command: 'ADD',
      containerId: 'x',
      netns: '/run/netns/none',
      ifname: 'net1',
      env: { PODVIRT_CNI_FALLBACK: path.join(h.dir, 'missing.cjs') },
    });
    assert.equal(notSock.error?.code, 11);
  });
});
