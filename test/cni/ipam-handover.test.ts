import { strict as assert } from 'node:assert';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { handOverHold, ipamScopeOf, promoteHold, provisionalHold, readOwnerRecord, recordPath, type HoldRef, type OwnerRecord } from '../../cni/ipam-owner.js';
import { parseNetConf } from '../../cni/netconf.js';
import { CniError } from '../../cni/cni-error.js';
import { CniHarness } from './harness.js';

const ipOf = (r: Record<string, unknown> | undefined): string => (r as { ips: { address: string }[] }).ips[0]!.address.split('/')[0]!;

/**
 * A stand-in for a cluster-wide IPAM (whereabouts and the like): one store for every node, one
 * reservation per CNI_CONTAINERID (an ADD of a known ID answers its reservation again, a DEL
 * frees it), so two "nodes" (two podvirt state dirs) share it as two real nodes would.
 */
function fakeClusterIpam(dir: string, subnetBase: string): { bin: string; store: string; reserved(id: string): string | undefined } {
  const bin = path.join(dir, 'fakebin');
  mkdirSync(bin, { recursive: true });
  const store = path.join(dir, 'cluster-store');
  writeFileSync(store, '');
  writeFileSync(path.join(dir, 'cluster-counter'), '10\n');
  const script = `#!/bin/sh
store='${store}'
counter='${path.join(dir, 'cluster-counter')}'
if [ "$CNI_COMMAND" = VERSION ]; then echo '{"cniVersion":"1.1.0","supportedVersions":["0.3.1","0.4.0","1.0.0","1.1.0"]}'; exit 0; fi
conf=$(cat)
exec 9>"$store.lock"
flock 9
id="$CNI_CONTAINERID"
have=$(awk -v id="$id" '$1 == id { print $2 }' "$store")
case "$CNI_COMMAND" in
ADD)
  case "$conf" in *'"failAdd":true'*) echo '{"cniVersion":"1.1.0","code":11,"msg":"fake cluster IPAM: told to fail"}'; exit 1;; esac
  if [ -z "$have" ]; then
    n=$(cat "$counter"); echo $((n + 1)) > "$counter"
    have="${subnetBase}.$n"
    echo "$id $have" >> "$store"
  fi
  echo "{\\"cniVersion\\":\\"1.1.0\\",\\"ips\\":[{\\"address\\":\\"$have/24\\"}]}";;
DEL)
  awk -v id="$id" '$1 != id' "$store" > "$store.tmp" && mv "$store.tmp" "$store";;
CHECK)
  if [ -z "$have" ]; then echo '{"cniVersion":"1.1.0","code":11,"msg":"fake cluster IPAM: no reservation"}'; exit 1; fi;;
esac
exit 0
`;
  writeFileSync(path.join(bin, 'pvt-cluster-ipam'), script, { mode: 0o755 });
  return {
    bin,
    store,
    reserved: (id) => readFileSync(store, 'utf8').split('\n').find((l) => l.startsWith(`${id} `))?.split(' ')[1],
  };
}

/**
 * Hand-over of an IPAM owner key's reservation between nodes after a migration: with a
 * cluster-wide IPAM the node that lost the VM releases nothing; with host-local each node frees
 * its own store. Two nodes are two podvirt state dirs (and, for host-local, two stores); the
 * agent's marks are the calls it makes (agent/kube/kube-migration.ts). Real netns, taps, server.
 */
describe('podvirt-cni IPAM hand-over between nodes', function () {
  this.timeout(120_000);
  const h = new CniHarness();
  let cluster: ReturnType<typeof fakeClusterIpam>;
  let nodeA = '';
  let nodeB = '';
  before(async () => {
    await h.start();
    cluster = fakeClusterIpam(h.dir, h.subnetBase);
    nodeA = path.join(h.dir, 'state-a');
    nodeB = path.join(h.dir, 'state-b');
  });
  after(async () => {
    await h.cleanup();
  });

  const net = () => `pvt-cni-net-${h.tag}`;
  const clusterIpam = (extra: Record<string, unknown> = {}) => ({ type: 'pvt-cluster-ipam', ...extra });
  const ref = (stateDir: string, key: string, containerId: string): HoldRef => ({ stateDir, network: net(), key, ifname: 'net1', containerId });
  /** One attachment of `key` on a node; `target` flags the ADD as a migration target's. */
  function attachment(stateDir: string, key: string, containerId: string, o: { target?: boolean; ipam?: Record<string, unknown> } = {}) {
    const ns = h.netns();
    return {
      ns,
      req: {
        containerId,
        netns: `/run/netns/${ns}`,
        ifname: 'net1',
        path: [cluster.bin, h.bin, '/usr/lib/cni'],
        config: h.config({ stateDir, ipam: o.ipam ?? clusterIpam(), runtimeConfig: { ipamKey: key, ...(o.target ? { migrationTarget: true } : {}) } }),
      },
    };
  }
  const run = async (command: 'ADD' | 'DEL', a: ReturnType<typeof attachment>, netns = true) => {
    const r = await h.invoke('shim+server', { ...a.req, ...(netns ? {} : { netns: undefined }), command });
    assert.equal(r.exitCode, 0, `${command} ${a.req.containerId}: ${r.stdout}${r.stderr}`);
    return r;
  };

  it('ipamScope: node for host-local and static, cluster for other plugins, the config wins; a bad value is code 7', () => {
    const base = { cniVersion: '1.1.0', name: 'n', type: 'podvirt' };
    assert.equal(ipamScopeOf(parseNetConf({ ...base, ipam: { type: 'host-local' } })), 'node');
    assert.equal(ipamScopeOf(parseNetConf({ ...base, ipam: { type: 'static' } })), 'node');
    assert.equal(ipamScopeOf(parseNetConf({ ...base, ipam: { type: 'whereabouts' } })), 'cluster');
    assert.equal(ipamScopeOf(parseNetConf({ ...base, ipamScope: 'node', ipam: { type: 'whereabouts' } })), 'node');
    assert.equal(ipamScopeOf(parseNetConf({ ...base, IPAMScope: 'cluster', ipam: { type: 'host-local' } })), 'cluster');
    assert.throws(() => parseNetConf({ ...base, ipamScope: 'global', ipam: { type: 'host-local' } }), (e: unknown) => e instanceof CniError && e.code === 7 && /ipamScope must be "node" or "cluster"/.test(e.message));
  });

  it('cluster IPAM, migration succeeded: the source node hands over and releases nothing; the promoted target releases at its DEL', async () => {
    const key = `vm-ok-${h.tag}`;
    const src = attachment(nodeA, key, 'ok-src');
    const ip = ipOf((await run('ADD', src)).result);
    assert.equal(cluster.reserved(key), ip);
    const tgt = attachment(nodeB, key, 'ok-tgt', { target: true });
    assert.equal(ipOf((await run('ADD', tgt)).result), ip, 'the cluster IPAM answers the key with the same address');
    assert.equal((await readOwnerRecord(nodeB, net(), key, 'net1'))?.owner, null, "the target's hold is provisional");
    assert.equal((await readOwnerRecord(nodeA, net(), key, 'net1'))?.owner, 'ok-src');

    // The agents at success: the target node promotes, the source node hands over (replays change nothing).
    assert.equal(await promoteHold(ref(nodeB, key, 'ok-tgt')), 'marked');
    assert.equal(await handOverHold(ref(nodeA, key, 'ok-src')), 'marked');
    assert.equal(await handOverHold(ref(nodeA, key, 'ok-src')), 'unchanged');
    assert.equal(await handOverHold(ref(nodeA, key, 'someone-else')), 'not-a-holder');
    assert.equal(await promoteHold(ref(nodeA, 'no-such-key', 'ok-src')), 'no-record');

    await run('DEL', src);
    assert.equal(cluster.reserved(key), ip, "the source node's last DEL left the VM's reservation alone");
    assert.equal(await readOwnerRecord(nodeA, net(), key, 'net1'), undefined);
    await run('DEL', src, false);
    assert.equal(cluster.reserved(key), ip, 'a replayed DEL (no record on the node) releases nothing either');

    await run('DEL', tgt);
    assert.equal(cluster.reserved(key), undefined, "the VM's last pod released it");
    assert.equal(await readOwnerRecord(nodeB, net(), key, 'net1'), undefined);
    for (const a of [src, tgt]) h.dropNetns(a.ns);
  });

  it("cluster IPAM, migration failed: the target's DEL keeps the source's reservation (flagged ADD, agent-marked ADD, failed ADD)", async () => {
    const key = `vm-fail-${h.tag}`;
    const src = attachment(nodeA, key, 'f-src');
    const ip = ipOf((await run('ADD', src)).result);
    // A target flagged as one at ADD: provisional from the start.
    const t1 = attachment(nodeB, key, 'f-t1', { target: true });
    await run('ADD', t1);
    await run('DEL', t1);
    await run('DEL', t1, false);
    assert.equal(cluster.reserved(key), ip);
    // A target the ADD did not know as one: the agent makes it provisional when the migration starts.
    const t2 = attachment(nodeB, key, 'f-t2');
    await run('ADD', t2);
    assert.equal((await readOwnerRecord(nodeB, net(), key, 'net1'))?.owner, 'f-t2');
    assert.equal(await provisionalHold(ref(nodeB, key, 'f-t2')), 'marked');
    await run('DEL', t2);
    assert.equal(cluster.reserved(key), ip);
    // A target whose IPAM ADD failed: no record on its node, so the runtime's DEL releases nothing.
    const t3 = attachment(nodeB, key, 'f-t3', { target: true, ipam: clusterIpam({ failAdd: true }) });
    const add3 = await h.invoke('shim+server', { ...t3.req, command: 'ADD' });
    assert.equal(add3.exitCode, 1, add3.stdout);
    assert.match(add3.error?.msg ?? '', /told to fail/);
    assert.equal(await readOwnerRecord(nodeB, net(), key, 'net1'), undefined);
    await run('DEL', t3);
    assert.equal(cluster.reserved(key), ip, "the source's reservation survived three failed targets");
    assert.deepEqual(h.nsLinks(t3.ns), [], 'the failed ADD rolled its links back');

    await run('DEL', src);
    assert.equal(cluster.reserved(key), undefined, 'the source, still the owner, releases at its last DEL');
    for (const a of [src, t1, t2, t3]) h.dropNetns(a.ns);
  });

  it('cluster IPAM, same node: the promoted target keeps the shared reservation whatever order the marks come in', async () => {
    const key = `vm-same-${h.tag}`;
    const src = attachment(nodeA, key, 's-src');
    const ip = ipOf((await run('ADD', src)).result);
    const tgt = attachment(nodeA, key, 's-tgt', { target: true });
    await run('ADD', tgt);
    assert.equal((await readOwnerRecord(nodeA, net(), key, 'net1'))?.owner, 's-src', 'joining a held record is not provisional');
    assert.equal(await promoteHold(ref(nodeA, key, 's-tgt')), 'marked');
    assert.equal(await handOverHold(ref(nodeA, key, 's-src')), 'unchanged', 'owned through the target now');
    await run('DEL', src);
    assert.equal(cluster.reserved(key), ip);
    await run('DEL', tgt);
    assert.equal(cluster.reserved(key), undefined);
    for (const a of [src, tgt]) h.dropNetns(a.ns);
  });

  it('cluster IPAM, crash leftovers and GC: a pending record is finished by the next ADD; GC of a handed-over key releases nothing', async () => {
    const key = `vm-crash-${h.tag}`;
    const src = attachment(nodeA, key, 'c-src');
    const ip = ipOf((await run('ADD', src)).result);
    // Node B's target ADD died between its pending record and IPAM's answer.
    const file = recordPath(nodeB, net(), key, 'net1');
    mkdirSync(path.dirname(file), { recursive: true });
    const pending: OwnerRecord = { network: net(), key, ifname: 'net1', ipamType: 'pvt-cluster-ipam', scope: 'cluster', owner: null, holders: ['c-dead'], result: undefined, pending: true, updatedAt: new Date().toISOString() };
    writeFileSync(file, JSON.stringify(pending));
    const tgt = attachment(nodeB, key, 'c-tgt', { target: true });
    assert.equal(ipOf((await run('ADD', tgt)).result), ip, 'asked IPAM again instead of answering from an empty record');
    const rec = await readOwnerRecord(nodeB, net(), key, 'net1');
    assert.deepEqual([rec?.holders, rec?.owner, rec?.pending], [['c-dead', 'c-tgt'], null, undefined]);
    // The runtime's DEL for the dead ADD, then the migration succeeds.
    await run('DEL', { ns: '', req: { ...tgt.req, containerId: 'c-dead' } }, false);
    assert.deepEqual((await readOwnerRecord(nodeB, net(), key, 'net1'))?.holders, ['c-tgt']);
    assert.equal(await promoteHold(ref(nodeB, key, 'c-tgt')), 'marked');
    assert.equal(await handOverHold(ref(nodeA, key, 'c-src')), 'marked');
    // The source pod vanishes without a DEL; node A's GC drops the key without releasing it.
    const gc = await h.invoke('shim+server', { path: src.req.path, config: { ...src.req.config, 'cni.dev/valid-attachments': [] }, command: 'GC' });
    assert.equal(gc.exitCode, 0, gc.stdout);
    assert.equal(await readOwnerRecord(nodeA, net(), key, 'net1'), undefined);
    assert.equal(cluster.reserved(key), ip);
    await run('DEL', tgt);
    assert.equal(cluster.reserved(key), undefined);
    for (const a of [src, tgt]) h.dropNetns(a.ns);
  });

  it("host-local (node scope): marks do not apply; the losing node's DEL frees its own store's entry", async () => {
    const hostLocal = (node: string) => ({ type: 'host-local', dataDir: path.join(h.dir, `ipam-${node}`), ranges: [[{ subnet: h.subnet }]] });
    const holder = (node: string, ip: string) => {
      const f = path.join(h.dir, `ipam-${node}`, net(), ip);
      return existsSync(f) ? readFileSync(f, 'utf8').split(/\r?\n/)[0] : undefined;
    };
    for (const outcome of ['completed', 'failed'] as const) {
      const key = `vm-hl-${outcome}-${h.tag}`;
      const src = attachment(nodeA, key, `hl-src-${outcome}`, { ipam: hostLocal('a') });
      const ip = ipOf((await run('ADD', src)).result);
      const tgt = attachment(nodeB, key, `hl-tgt-${outcome}`, { target: true, ipam: hostLocal('b') });
      tgt.req.config = { ...tgt.req.config, runtimeConfig: { ipamKey: key, migrationTarget: true, ips: [ip] } };
      assert.equal(ipOf((await run('ADD', tgt)).result), ip);
      assert.deepEqual([holder('a', ip), holder('b', ip)], [key, key]);
      if (outcome === 'completed') {
        assert.equal(await promoteHold(ref(nodeB, key, tgt.req.containerId)), 'node-scope');
        assert.equal(await handOverHold(ref(nodeA, key, src.req.containerId)), 'node-scope');
        await run('DEL', src);
        assert.deepEqual([holder('a', ip), holder('b', ip)], [undefined, key], "node A's entry is freed; B's is the VM's now");
        await run('DEL', tgt);
      } else {
        await run('DEL', tgt);
        assert.deepEqual([holder('a', ip), holder('b', ip)], [key, undefined], "the failed target's node frees its own entry");
        await run('DEL', src);
      }
      assert.deepEqual([holder('a', ip), holder('b', ip)], [undefined, undefined]);
      for (const a of [src, tgt]) h.dropNetns(a.ns);
    }
  });
});
