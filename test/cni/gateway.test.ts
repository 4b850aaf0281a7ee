import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { DhcpServer } from '../../agent/dhcp/server.js';
import { CniError } from '../../cni/cni-error.js';
import { defaultHostDeps } from '../../cni/host.js';
import { stderrLogger } from '../../cni/logger.js';
import { parseNetConf } from '../../cni/netconf.js';
import { bridgeGatewayAddrs, planBridgeGateway } from '../../cni/plan.js';
import { handleCniRequest, type CniResponse } from '../../cni/skel.js';
import { exec } from '../../lib/exec.js';

const codeAndMsg = (f: () => unknown): [number, string] => {
  try {
    f();
  } catch (e) {
    if (e instanceof CniError) return [e.code, e.message];
    throw e;
  }
  return [0, ''];
};

interface AddrInfo {
  family: string;
  local: string;
  prefixlen: number;
  tentative?: boolean;
}

describe('podvirt-cni isGateway: the host bridge carries the IPAM gateway', function () {
  describe('plan (pure)', () => {
    it('wants each address\'s gateway with the address\'s prefix, IPv4 and IPv6, once', () => {
      const want = bridgeGatewayAddrs([
        { address: '10.88.3.7/16', gateway: '10.88.0.1' },
        { address: 'fd00:0:0:1::9/64', gateway: 'FD00:0000:0:1::1' },
        { address: '10.88.3.8/16', gateway: '10.88.0.1' },
      ]);
      assert.deepEqual(want, [
        { ip: '10.88.0.1', prefix: 16 },
        { ip: 'fd00:0:0:1::1', prefix: 64 },
      ]);
      assert.deepEqual(planBridgeGateway('br0', want, []), ['addr add 10.88.0.1/16 dev br0', 'addr add fd00:0:0:1::1/64 dev br0 nodad']);
      // Already there (iproute2 prints IPv6 compressed): nothing to do; other addresses are left alone.
      assert.deepEqual(planBridgeGateway('br0', want, [{ ip: '192.168.1.1', prefix: 24 }, { ip: '10.88.0.1', prefix: 16 }, { ip: 'fd00::1:0:0:0:1', prefix: 64 }]), []);
    });

    it('refuses a result without a usable gateway, and a bridge holding the gateway with another prefix, with code 7', () => {
      const cases: [Parameters<typeof bridgeGatewayAddrs>[0], RegExp][] = [
        [[{ address: '10.88.3.7/16' }], /isGateway: the IPAM result has no gateway for 10\.88\.3\.7\/16/],
        [[], /no address/],
        [[{ address: '10.88.3.7/24', gateway: '10.88.4.1' }], /gateway 10\.88\.4\.1 is outside the subnet of 10\.88\.3\.7\/24/],
        [[{ address: '10.88.3.7/24', gateway: 'fd00::1' }], /not an IPv4 address/],
        [[{ address: '10.88.3.7/24', gateway: '10.88.3.7' }], /is the address IPAM gave the guest/],
        [[{ address: 'fd00::5/64', gateway: 'fd00::1%eth0' }], /is not an IPv6 address/],
      ];
      for (const [ips, re] of cases) {
        const [code, msg] = codeAndMsg(() => bridgeGatewayAddrs(ips));
        assert.equal(code, 7, JSON.stringify(ips));
        assert.match(msg, re);
      }
      const [code, msg] = codeAndMsg(() => planBridgeGateway('br0', [{ ip: '10.88.0.1', prefix: 16 }], [{ ip: '10.88.0.1', prefix: 24 }]));
      assert.equal(code, 7);
      assert.match(msg, /bridge br0 already has 10\.88\.0\.1\/24, IPAM's subnet wants 10\.88\.0\.1\/16/);
    });

    it('config: isGateway is a boolean, false by default, matched case-insensitively, and needs ipam', () => {
      const base = { cniVersion: '1.1.0', name: 'n', type: 'podvirt', ipam: { type: 'host-local' } };
      assert.equal(parseNetConf(base).isGateway, false);
      assert.equal(parseNetConf({ ...base, IsGateway: true }).isGateway, true);
      assert.equal(parseNetConf({ ...base, mode: 'migration', isGateway: true }).isGateway, true);
      assert.equal(codeAndMsg(() => parseNetConf({ ...base, isGateway: 'yes' }))[0], 7);
      const [code, msg] = codeAndMsg(() => parseNetConf({ cniVersion: '1.1.0', name: 'n', type: 'podvirt', isGateway: true }));
      assert.equal(code, 7);
      assert.match(msg, /isGateway needs an ipam plugin/);
    });
  });

  describe('on a real bridge and netns (host-local, through handleCniRequest)', function () {
    this.timeout(60_000);
    const tag = randomBytes(3).toString('hex').slice(0, 5);
    const bridge = `pvt-cni-g${tag}`;
    const network = `pvt-cni-gw-${tag}`;
    const r = randomBytes(4);
    const v4Base = `10.${150 + ((r[0] ?? 0) % 50)}.${r[1] ?? 0}`;
    // Groups without leading zeros: iproute2 prints addresses in canonical form.
    const group = (hex: string) => Number.parseInt(hex, 16).toString(16);
    const v6Prefix = `fd7e:${group(r.subarray(2, 4).toString('hex'))}:${group(tag.slice(0, 4))}::`;
    const netnses: string[] = [];
    let dir = '';

    before(() => {
      dir = mkdtempSync(path.join(tmpdir(), 'pvt-cni-gw-'));
      // An IPAM plugin answering like host-local but without gateways (static without "gateway"
      // does the same, but keeps no reservation whose release the rollback test could check).
      const wrapper = path.join(dir, 'bin', 'pvt-nogw-ipam');
      execFileSync('mkdir', ['-p', path.dirname(wrapper)]);
      writeFileSync(
        wrapper,
        [
          '#!/bin/sh',
          'out=$(/usr/lib/cni/host-local); rc=$?',
          'if [ $rc -ne 0 ] || [ "$CNI_COMMAND" != ADD ]; then printf "%s" "$out"; exit $rc; fi',
          `printf "%s" "$out" | python3 -c 'import json,sys; r=json.load(sys.stdin); [i.pop("gateway", None) for i in r.get("ips", [])]; print(json.dumps(r))'`,
          '',
        ].join('\n'),
      );
      chmodSync(wrapper, 0o755);
    });
    after(() => {
      for (const ns of netnses) execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
      try {
        execFileSync('ip', ['link', 'del', bridge], { stdio: 'ignore' });
      } catch {
        /* never made */
      }
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    const netns = (): string => {
      const name = `pvt-cni-g${tag}-${netnses.length}`;
      execFileSync('ip', ['netns', 'add', name]);
      netnses.push(name);
      return `/run/netns/${name}`;
    };
    const config = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({
      cniVersion: '1.1.0',
      name: network,
      type: 'podvirt',
      bridge,
      isGateway: true,
      stateDir: path.join(dir, 'state'),
      ipam: { type: 'host-local', dataDir: path.join(dir, 'ipam'), ranges: [[{ subnet: `${v4Base}.0/24` }], [{ subnet: `${v6Prefix}/64` }]] },
      ...extra,
    });
    const cni = (command: string, containerId: string, ns: string, conf: Record<string, unknown>): Promise<CniResponse> =>
      handleCniRequest(
        { env: { CNI_COMMAND: command, CNI_CONTAINERID: containerId, CNI_NETNS: ns, CNI_IFNAME: 'net1', CNI_PATH: `${path.join(dir, 'bin')}:/usr/lib/cni` }, stdin: Buffer.from(JSON.stringify(conf)) },
        { logger: stderrLogger('error'), deps: { ...defaultHostDeps, delegateVersions: new Map() }, baseEnv: { PATH: process.env.PATH } },
      );
    const bridgeAddrs = (): AddrInfo[] => {
      const out = JSON.parse(execFileSync('ip', ['-j', 'addr', 'show', 'dev', bridge]).toString()) as { addr_info: AddrInfo[] }[];
      return (out[0]?.addr_info ?? []).filter((a) => !a.local.startsWith('fe80:'));
    };
    const reservations = (): string[] => {
      const d = path.join(dir, 'ipam', network);
      return existsSync(d) ? readdirSync(d).filter((f) => /^[0-9a-f.:]+$/.test(f) && /[.:]/.test(f)) : [];
    };
    const gateways = [`${v4Base}.1/24`, `${v6Prefix}1/64`];

    it('two parallel ADDs on a new bridge both succeed and leave it with each gateway once; CHECK sees it; DEL leaves it', async () => {
      assert.equal(existsSync(`/sys/class/net/${bridge}`), false);
      const [nsA, nsB] = [netns(), netns()];
      const [a, b] = await Promise.all([cni('ADD', 'gw-a', nsA, config()), cni('ADD', 'gw-b', nsB, config())]);
      assert.equal(a.exitCode, 0, a.stdout);
      assert.equal(b.exitCode, 0, b.stdout);
      const addrs = bridgeAddrs();
      assert.deepEqual(addrs.map((x) => `${x.local}/${x.prefixlen}`).sort(), [...gateways].sort());
      assert.ok(!addrs.some((x) => x.tentative), 'the IPv6 gateway is usable at once (nodad)');
      const resA = JSON.parse(a.stdout) as { ips: { address: string; gateway?: string }[] };
      assert.deepEqual(resA.ips.map((i) => i.gateway), [`${v4Base}.1`, `${v6Prefix}1`], 'the guest is told the same gateway');

      const check = await cni('CHECK', 'gw-a', nsA, { ...config(), prevResult: JSON.parse(a.stdout) as unknown });
      assert.equal(check.exitCode, 0, check.stdout);
      execFileSync('ip', ['addr', 'del', gateways[0] as string, 'dev', bridge]);
      const broken = await cni('CHECK', 'gw-a', nsA, { ...config(), prevResult: JSON.parse(a.stdout) as unknown });
      assert.equal(broken.exitCode, 1);
      assert.match(broken.stdout, /"code":100.*lacks its gateway address/);
      // The next ADD puts it back, and a repeated one changes nothing.
      for (const id of ['gw-c', 'gw-d']) {
        const ns = netns();
        const c = await cni('ADD', id, ns, config());
        assert.equal(c.exitCode, 0, c.stdout);
        assert.deepEqual(bridgeAddrs().map((x) => `${x.local}/${x.prefixlen}`).sort(), [...gateways].sort());
        assert.equal((await cni('DEL', id, ns, config())).exitCode, 0);
      }

      for (const [id, ns] of [['gw-a', nsA], ['gw-b', nsB]] as const) {
        const del = await cni('DEL', id, ns, config());
        assert.equal(del.exitCode, 0, del.stdout);
      }
      assert.deepEqual(bridgeAddrs().map((x) => `${x.local}/${x.prefixlen}`).sort(), [...gateways].sort(), 'other pods may still use the gateway');
      assert.deepEqual(reservations(), []);
    });

    it("the agent's DHCP server answers on a new bridge whose only address isGateway gave it", async () => {
      try {
        execFileSync('ip', ['link', 'del', bridge], { stdio: 'ignore' });
      } catch {
        /* not made yet */
      }
      const ns = netns();
      const add = await cni('ADD', 'gw-dhcp', ns, config());
      assert.equal(add.exitCode, 0, add.stdout);
      const v4 = (JSON.parse(add.stdout) as { ips: { address: string; gateway: string }[] }).ips.find((i) => i.address.includes('.'));
      const ip = (v4?.address ?? '').split('/')[0] as string;
      assert.deepEqual(bridgeAddrs().filter((a) => a.family === 'inet').map((a) => `${a.local}/${a.prefixlen}`), [gateways[0]]);
      const guestMac = `02:00:5e:${r.subarray(0, 3).toString('hex').match(/../g)?.join(':')}`;
      const dhcp = new DhcpServer();
      await dhcp.start();
      // A client with the guest's MAC on the bridge (the guest's own frames would come through the tap).
      const probe = path.basename(netns());
      const hostEnd = `pvt-cni-gp${tag}`;
      try {
        dhcp.add({ mac: guestMac, ip, prefixLength: 24, gateway: v4?.gateway, bridge, owner: 'gw-dhcp' });
        execFileSync('ip', ['link', 'add', hostEnd, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', probe]);
        execFileSync('ip', ['link', 'set', hostEnd, 'master', bridge, 'up']);
        execFileSync('ip', ['-n', probe, 'link', 'set', 'eth0', 'address', guestMac, 'up']);
        const script = path.join(dir, 'udhcpc-event');
        writeFileSync(script, '#!/bin/sh\n[ "$1" = bound ] && echo "LEASE $ip/$mask router=$router serverid=$serverid"\nexit 0\n', { mode: 0o755 });
        // Asynchronously: the server answers from this process's event loop.
        const out = await exec('ip', ['netns', 'exec', probe, 'busybox', 'udhcpc', '-f', '-q', '-n', '-i', 'eth0', '-t', '5', '-T', '1', '-s', script], { timeoutMs: 20_000, allowFailure: true });
        assert.equal(dhcp.replies >= 2, true, out.stderr);
        assert.match(out.stdout, new RegExp(`LEASE ${ip.replace(/\./g, '\\.')}/24 router=${v4Base.replace(/\./g, '\\.')}\\.1 serverid=${v4Base.replace(/\./g, '\\.')}\\.1\\b`));
      } finally {
        await dhcp.stop();
        execFileSync('ip', ['link', 'del', hostEnd], { stdio: 'ignore' });
      }
      assert.equal((await cni('DEL', 'gw-dhcp', ns, config())).exitCode, 0);
    });

    it('migration mode: the bridge gets the gateway, the pod end the address', async () => {
      const ns = netns();
      const ipam = { type: 'static', addresses: [{ address: `${v4Base}.130/25`, gateway: `${v4Base}.129` }] };
      const add = await cni('ADD', 'gw-mig', ns, config({ mode: 'migration', ipam }));
      assert.equal(add.exitCode, 0, add.stdout);
      assert.ok(bridgeAddrs().some((x) => x.local === `${v4Base}.129` && x.prefixlen === 25));
      const pod = execFileSync('ip', ['-n', path.basename(ns), '-j', 'addr', 'show', 'dev', 'net1']).toString();
      assert.match(pod, new RegExp(`"local":"${v4Base.replace(/\./g, '\\.')}\\.130","prefixlen":25`));
      assert.equal((await cni('DEL', 'gw-mig', ns, config({ mode: 'migration', ipam }))).exitCode, 0);
    });

    it('an IPAM result without a gateway fails with code 7 and leaves no link and no reservation', async () => {
      const ns = netns();
      const addrsBefore = bridgeAddrs().length;
      const conf = config({ ipam: { type: 'pvt-nogw-ipam', dataDir: path.join(dir, 'ipam'), ranges: [[{ subnet: `${v4Base}.0/24` }]] } });
      const add = await cni('ADD', 'gw-none', ns, conf);
      assert.equal(add.exitCode, 1, add.stdout);
      const err = JSON.parse(add.stdout) as { code: number; msg: string; details: string };
      assert.equal(err.code, 7);
      assert.match(err.msg, new RegExp(`isGateway: the IPAM result has no gateway for ${v4Base.replace(/\./g, '\\.')}\\.\\d+/24`));
      assert.match(err.details, /name one in the IPAM config/);
      const links = JSON.parse(execFileSync('ip', ['-n', path.basename(ns), '-j', 'link', 'show']).toString()) as { ifname: string }[];
      assert.deepEqual(links.map((l) => l.ifname), ['lo']);
      const ports = JSON.parse(execFileSync('ip', ['-j', 'link', 'show', 'master', bridge]).toString() || '[]') as unknown[];
      assert.deepEqual(ports, []);
      assert.deepEqual(reservations(), [], 'the rollback released what host-local reserved');
      assert.equal(bridgeAddrs().length, addrsBefore);
    });
  });
});
