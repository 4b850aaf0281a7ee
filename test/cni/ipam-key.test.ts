import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { recordPath, type OwnerRecord } from '../../cni/ipam-owner.js';
import { CniHarness, type Transport } from './harness.js';

interface Result {
  interfaces: { name: string; mac?: string; sandbox?: string }[];
  ips: { address: string }[];
}
const ipOf = (r: Record<string, unknown> | undefined): string => (r as unknown as Result).ips[0]!.address.split('/')[0]!;

/**
 * Sticky IPs across live migration: an IPAM reservation owned by `ipamKey`, shared by the source
 * and target pods on one node, released by the last DEL only. Real netns, taps and host-local.
 */
describe('podvirt-cni IPAM owner keys (host-local, real netns)', function () {
  this.timeout(120_000);
  const h = new CniHarness();
  let stateDir = '';
  before(async () => {
    await h.start();
    stateDir = path.join(h.dir, 'state');
  });
  after(async () => {
    await h.cleanup();
  });

  const net = () => `pvt-cni-net-${h.tag}`;
  const conf = (extra: Record<string, unknown> = {}) => h.config({ stateDir, ...extra });
  /** Who host-local says holds `ip` (its store file: "<containerID>\r\n<ifname>"). */
  const holderOf = (ip: string, dataDir = h.dataDir): string | undefined => {
    const f = path.join(dataDir, net(), ip);
    return existsSync(f) ? readFileSync(f, 'utf8').split(/\r?\n/)[0] : undefined;
  };
  const record = (key: string, ifname = 'net1', dir = stateDir): OwnerRecord | undefined => {
    const f = recordPath(dir, net(), key, ifname);
    return existsSync(f) ? (JSON.parse(readFileSync(f, 'utf8')) as OwnerRecord) : undefined;
  };

  for (const transport of ['shim+server', 'bundle'] as Transport[]) {
    it(`source and target share the key's IP; the source's DEL keeps it, the last DEL releases it (${transport})`, async () => {
      const key = `vm-${transport === 'bundle' ? 'b' : 's'}-${h.tag}`;
      const [nsS, nsT, nsO] = [h.netns(), h.netns(), h.netns()];
      const mac = '02:00:5e:10:00:2a';
      const src = { containerId: `src-${key}`, netns: `/run/netns/${nsS}`, ifname: 'net1', config: conf({ runtimeConfig: { mac }, args: { cni: { ipamKey: key } } }) };
      const addS = await h.invoke(transport, { ...src, command: 'ADD' });
      assert.equal(addS.exitCode, 0, addS.stdout + addS.stderr);
      const ip = ipOf(addS.result);
      assert.equal(holderOf(ip), key, 'host-local holds the address for the key, not the pod');

      // The migration target: same key, same MAC, silent tap; the IP comes from the record.
      const tgt = { containerId: `tgt-${key}`, netns: `/run/netns/${nsT}`, ifname: 'net1', config: conf({ runtimeConfig: { mac, migrationTarget: true, ipamKey: key, ips: [ip] } }) };
      const addT = await h.invoke(transport, { ...tgt, command: 'ADD' });
      assert.equal(addT.exitCode, 0, addT.stdout + addT.stderr);
      assert.equal(ipOf(addT.result), ip);
      assert.deepEqual(record(key)?.holders, [src.containerId, tgt.containerId]);
      const checkT = await h.invoke(transport, { ...tgt, config: { ...tgt.config, prevResult: addT.result }, command: 'CHECK' });
      assert.equal(checkT.exitCode, 0, checkT.stdout);

      // Switch-over done: the source pod goes; the guest's address stays reserved.
      const delS = await h.invoke(transport, { ...src, command: 'DEL' });
      assert.equal(delS.exitCode, 0, delS.stdout);
      assert.equal(holderOf(ip), key);
      assert.deepEqual(record(key)?.holders, [tgt.containerId]);
      assert.deepEqual(h.nsLinks(nsS), []);
      // A replayed DEL of the source must not count down the target's hold.
      assert.equal((await h.invoke(transport, { ...src, netns: undefined, command: 'DEL' })).exitCode, 0);
      assert.equal(holderOf(ip), key);
      // The source's CHECK now fails: it holds nothing (its links are gone too, but IPAM is checked first).
      const checkS = await h.invoke(transport, { ...src, config: { ...src.config, prevResult: addS.result }, command: 'CHECK' });
      assert.equal(checkS.error?.code, 100, checkS.stdout);
      assert.match(checkS.error?.msg ?? '', /holds no reservation under IPAM key/);
      const addO = await h.invoke(transport, { containerId: `other-${key}`, netns: `/run/netns/${nsO}`, ifname: 'net1', config: conf(), command: 'ADD' });
      assert.equal(addO.exitCode, 0, addO.stdout);
      assert.notEqual(ipOf(addO.result), ip, 'an unrelated pod does not get the VM address');

      const delT = await h.invoke(transport, { ...tgt, command: 'DEL' });
      assert.equal(delT.exitCode, 0, delT.stdout);
      assert.equal(holderOf(ip), undefined, 'the last holder released it');
      assert.equal(record(key), undefined);
      assert.equal((await h.invoke(transport, { ...tgt, command: 'DEL' })).exitCode, 0, 'repeated DEL');
      assert.equal((await h.invoke(transport, { containerId: `other-${key}`, netns: `/run/netns/${nsO}`, ifname: 'net1', config: conf(), command: 'DEL' })).exitCode, 0);
      for (const ns of [nsS, nsT, nsO]) {
        assert.deepEqual(h.nsLinks(ns), []);
        h.dropNetns(ns);
      }
    });
  }

  it('bad keys, conflicting requests and a repeated ADD give CNI errors and leave state intact', async () => {
    const ns = h.netns();
    const netns = `/run/netns/${ns}`;
    const before = h.reservations().sort();
    for (const [where, cfg] of [
      ['args.cni.ipamKey', { args: { cni: { ipamKey: 'bad key!' } } }],
      ['runtimeConfig.ipamKey', { runtimeConfig: { ipamKey: 'x'.repeat(129) } }],
      ['args.cni.ipamKey', { args: { cni: { ipamKey: 42 } } }],
    ] as const) {
      const r = await h.invoke('shim+server', { containerId: 'bad1', netns, ifname: 'net1', config: conf(cfg), command: 'ADD' });
      assert.equal(r.exitCode, 1);
      assert.equal(r.error?.code, 7, r.stdout);
      assert.match(r.error?.msg ?? '', new RegExp(where.replace('.', '\\.')));
    }
    assert.deepEqual(h.nsLinks(ns), []);
    assert.deepEqual(h.reservations().sort(), before);
    assert.equal(existsSync(path.join(stateDir, 'ipam-owners', net())) ? readdirSync(path.join(stateDir, 'ipam-owners', net())).filter((f) => f.startsWith('bad')).length : 0, 0);

    // A key already holding X cannot serve a request for another address.
    const key = `vm-c-${h.tag}`;
    const a = await h.invoke('shim+server', { containerId: 'c1', netns, ifname: 'net1', config: conf({ args: { cni: { ipamKey: key } } }), command: 'ADD' });
    assert.equal(a.exitCode, 0, a.stdout);
    const ns2 = h.netns();
    const other = `${h.subnetBase}.250`;
    const c = await h.invoke('shim+server', { containerId: 'c2', netns: `/run/netns/${ns2}`, ifname: 'net1', config: conf({ runtimeConfig: { ipamKey: key, ips: [`${other}/24`] } }), command: 'ADD' });
    assert.equal(c.exitCode, 1);
    assert.equal(c.error?.code, 101, c.stdout);
    assert.match(c.error?.msg ?? '', new RegExp(`IPAM key ${key} holds .* not the requested ${other.replace(/\./g, '\\.')}`));
    assert.deepEqual(h.nsLinks(ns2), [], 'the failed ADD rolled its links back');
    assert.deepEqual(record(key)?.holders, ['c1'], 'and did not join or drop the key');
    assert.equal(holderOf(ipOf(a.result)), key);
    // A repeated ADD of the live attachment fails (its tap exists) without releasing what the first holds.
    const again = await h.invoke('shim+server', { containerId: 'c1', netns, ifname: 'net1', config: conf({ args: { cni: { ipamKey: key } } }), command: 'ADD' });
    assert.equal(again.exitCode, 1, again.stdout);
    assert.deepEqual(record(key)?.holders, ['c1']);
    assert.equal(holderOf(ipOf(a.result)), key);
    assert.equal(h.nsLinks(ns).length, 2, "the first ADD's tap and veth are untouched");
    const d = await h.invoke('shim+server', { containerId: 'c1', netns, ifname: 'net1', config: conf({ args: { cni: { ipamKey: key } } }), command: 'DEL' });
    assert.equal(d.exitCode, 0, d.stdout);
    assert.deepEqual(h.reservations().sort(), before);
    h.dropNetns(ns);
    h.dropNetns(ns2);
  });

  it('another node (its own stores) gives the target the same IP when asked for it under the key', async () => {
    const key = `vm-x-${h.tag}`;
    const nodeB = { dataDir: path.join(h.dir, 'ipam-b'), stateDir: path.join(h.dir, 'state-b') };
    const ipamB = { type: 'host-local', dataDir: nodeB.dataDir, ranges: [[{ subnet: h.subnet }]] };
    const [nsS, nsT] = [h.netns(), h.netns()];
    const src = { containerId: 'xs', netns: `/run/netns/${nsS}`, ifname: 'net1', config: conf({ args: { cni: { ipamKey: key } } }) };
    const addS = await h.invoke('shim+server', { ...src, command: 'ADD' });
    assert.equal(addS.exitCode, 0, addS.stdout);
    const ip = ipOf(addS.result);
    // Node B's first ADD of the key: count 0 there, so its IPAM is asked for the source's address.
    const tgt = { containerId: 'xt', netns: `/run/netns/${nsT}`, ifname: 'net1', config: conf({ stateDir: nodeB.stateDir, ipam: ipamB, args: { cni: { ipamKey: key, ips: [ip] } } }) };
    const addT = await h.invoke('shim+server', { ...tgt, command: 'ADD' });
    assert.equal(addT.exitCode, 0, addT.stdout);
    assert.equal(ipOf(addT.result), ip);
    assert.equal(holderOf(ip, nodeB.dataDir), key);
    // The source node's last DEL releases node A's reservation only.
    assert.equal((await h.invoke('shim+server', { ...src, command: 'DEL' })).exitCode, 0);
    assert.equal(holderOf(ip), undefined);
    assert.equal(holderOf(ip, nodeB.dataDir), key);
    assert.equal((await h.invoke('shim+server', { ...tgt, command: 'DEL' })).exitCode, 0);
    assert.equal(holderOf(ip, nodeB.dataDir), undefined);
    h.dropNetns(nsS);
    h.dropNetns(nsT);
  });

  it('parallel ADDs and DELs of one key: one reservation, released once by the last DEL', async () => {
    const key = `vm-p-${h.tag}`;
    const nss = Array.from({ length: 6 }, () => h.netns());
    const before = h.reservations().length;
    const req = (i: number) => ({ containerId: `p${i}`, netns: `/run/netns/${nss[i]}`, ifname: 'net1', config: conf({ args: { cni: { ipamKey: key } } }) });
    const adds = await Promise.all(nss.map((_, i) => h.invoke(i % 2 ? 'bundle' : 'shim+server', { ...req(i), command: 'ADD' })));
    for (const a of adds) assert.equal(a.exitCode, 0, a.stdout + a.stderr);
    assert.equal(new Set(adds.map((a) => ipOf(a.result))).size, 1);
    assert.equal(h.reservations().length, before + 1);
    assert.equal(record(key)?.holders.length, 6);
    const dels = await Promise.all(nss.map((_, i) => h.invoke(i % 2 ? 'shim+server' : 'bundle', { ...req(i), command: 'DEL' })));
    for (const d of dels) assert.equal(d.exitCode, 0, d.stdout + d.stderr);
    assert.equal(h.reservations().length, before);
    assert.equal(record(key), undefined);
    for (const ns of nss) h.dropNetns(ns);
  });

  it('crash leftovers: an interrupted release is finished by the next DEL; a dead process lock is broken', async () => {
    const key = `vm-r-${h.tag}`;
    const ns = h.netns();
    const req = { containerId: 'r1', netns: `/run/netns/${ns}`, ifname: 'net1', config: conf({ args: { cni: { ipamKey: key } } }) };
    // A lock left by a process that died (same pid namespace): ADD must not wait for it.
    const file = recordPath(stateDir, net(), key, 'net1');
    mkdirSync(path.dirname(file), { recursive: true });
    const dead = spawnSync('true').pid;
    writeFileSync(`${file}.lock`, JSON.stringify({ pid: dead, pidNs: readlinkPidNs(), token: 'x' }));
    const add = await h.invoke('shim+server', { ...req, command: 'ADD' });
    assert.equal(add.exitCode, 0, add.stdout);
    assert.equal(existsSync(`${file}.lock`), false);
    const ip = ipOf(add.result);
    // A DEL that wrote "no holders" and then died before the delegate's DEL: host-local still holds it.
    const rec = record(key)!;
    writeFileSync(file, JSON.stringify({ ...rec, holders: [] }));
    assert.equal(holderOf(ip), key);
    const del = await h.invoke('shim+server', { ...req, netns: undefined, command: 'DEL' });
    assert.equal(del.exitCode, 0, del.stdout);
    assert.equal(holderOf(ip), undefined);
    assert.equal(record(key), undefined);
    h.dropNetns(ns);
  });

  it('GC releases keys no valid attachment holds and keeps the others', async () => {
    const [k1, k2] = [`vm-g1-${h.tag}`, `vm-g2-${h.tag}`];
    const [ns1, ns2] = [h.netns(), h.netns()];
    const r1 = { containerId: 'g1', netns: `/run/netns/${ns1}`, ifname: 'net1', config: conf({ args: { cni: { ipamKey: k1 } } }) };
    const r2 = { containerId: 'g2', netns: `/run/netns/${ns2}`, ifname: 'net1', config: conf({ args: { cni: { ipamKey: k2 } } }) };
    const a1 = await h.invoke('shim+server', { ...r1, command: 'ADD' });
    const a2 = await h.invoke('shim+server', { ...r2, command: 'ADD' });
    assert.deepEqual([a1.exitCode, a2.exitCode], [0, 0], a1.stdout + a2.stdout);
    // The runtime says only g1/net1 is valid (g2's pod vanished without a DEL).
    const gc = await h.invoke('shim+server', { config: conf({ 'cni.dev/valid-attachments': [{ containerID: 'g1', ifname: 'net1' }] }), command: 'GC' });
    assert.equal(gc.exitCode, 0, gc.stdout);
    assert.equal(holderOf(ipOf(a1.result)), k1);
    assert.equal(holderOf(ipOf(a2.result)), undefined);
    assert.equal(record(k2), undefined);
    assert.deepEqual(record(k1)?.holders, ['g1']);
    assert.equal((await h.invoke('shim+server', { ...r1, command: 'DEL' })).exitCode, 0);
    assert.equal((await h.invoke('shim+server', { ...r2, command: 'DEL' })).exitCode, 0);
    assert.equal(holderOf(ipOf(a1.result)), undefined);
    h.dropNetns(ns1);
    h.dropNetns(ns2);
  });
});

function readlinkPidNs(): string {
  return spawnSync('readlink', ['/proc/self/ns/pid'], { encoding: 'utf8' }).stdout.trim();
}
