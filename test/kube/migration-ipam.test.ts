/**
 * The cluster agent's part in moving a VM's IPAM reservation between nodes (cni/ipam-owner.ts):
 * KubeMigration marks the pods' keyed holds, found in the CNI attachment records, at the
 * migration's outcome. The driver halves are replaced (no QEMU); records and marks are real.
 */
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { V1Pod } from '@kubernetes/client-node';
import { writeAttachmentEvent, type TapAttachment } from '../../cni/attachment-events.js';
import { readOwnerRecord, recordPath, type OwnerRecord } from '../../cni/ipam-owner.js';
import { KubeMigration, podIpamHolds, type MigrationSides } from '../../agent/kube/kube-migration.js';
import type { VmCoreRuntime } from '../../agent/kube/vm-core-runtime.js';
import type { DiscoveredSandbox } from '../../agent/kube/pod-discovery.js';
import type { MigrationRequest } from '../../agent/kube/vm-runtime.js';
import type { TargetSide } from '../../agent/migration/target.js';
import { execFileSync } from 'node:child_process';
import { writeJsonAtomic } from '../../lib/fs-atomic.js';
import { CniHarness } from '../cni/harness.js';
import { createLogger } from '../../lib/log.js';

const log = createLogger('test-kube-mig-ipam', process.env.PODVIRT_TEST_LOG ?? 'silent');
const SPEC = 'cpus: 1\nmemory: 64Mi\nkernel: /k\n';

describe('cluster migration: the IPAM holds follow the outcome', () => {
  let dir = '';
  let attDir = '';
  let stateDir = '';
  let knob = '';
  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'pvt-kmig-ipam-'));
    attDir = path.join(dir, 'cni-attachments');
    stateDir = path.join(dir, 'cni-state');
    knob = path.join(dir, 'unprivileged_userfaultfd');
    await fs.writeFile(knob, '0\n');
  });
  afterEach(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  const pod = (name: string, uid: string): V1Pod => ({
    metadata: { name, namespace: 'vms', uid, annotations: { 'vm.podvirt.io/spec': SPEC } },
    spec: { containers: [{ name: 'compute', image: 'x' }] },
    status: { podIP: '127.0.0.1' },
  });
  /** What a keyed tap ADD leaves: the attachment record and the key's owner record on the node. */
  async function held(p: V1Pod, containerId: string, key: string, o: { owner?: string | null; ipamType?: string; network?: string; ifname?: string } = {}): Promise<void> {
    const network = o.network ?? 'vm-net';
    const ifname = o.ifname ?? 'net1';
    const ipamType = o.ipamType ?? 'whereabouts';
    const scope = ipamType === 'host-local' ? 'node' : 'cluster';
    const attachment: TapAttachment = {
      containerId,
      ifname,
      netns: '',
      netnsId: undefined,
      network,
      pod: { namespace: 'vms', name: p.metadata!.name!, uid: p.metadata!.uid! },
      bridge: 'br0',
      mac: '02:00:00:00:00:01',
      mtu: undefined,
      migrationTarget: false,
      ips: [{ address: '10.9.0.5/24' }],
      routes: [],
      dns: undefined,
      ipamKey: key,
      stateDir,
      ipamScope: scope,
      addedAt: new Date().toISOString(),
    };
    writeAttachmentEvent(attDir, { kind: 'add', attachment });
    const rec: OwnerRecord = { network, key, ifname, ipamType, scope, owner: o.owner === undefined ? containerId : o.owner, holders: [containerId], result: { cniVersion: '1.1.0', ips: [{ address: '10.9.0.5/24' }] }, updatedAt: new Date().toISOString() };
    await writeJsonAtomic(recordPath(stateDir, network, key, ifname), rec);
  }
  const owner = async (key: string, network = 'vm-net', ifname = 'net1') => (await readOwnerRecord(stateDir, network, key, ifname))?.owner;

  function sourceAgent(outcome: 'completed' | 'failed'): { m: KubeMigration; ran: () => number } {
    let runs = 0;
    const runtime = {
      controller: () => ({ qmp: {}, topology: { memoryBytes: 64 << 20 }, stateSnapshot: { runDir: path.join(dir, 'run'), sandbox: { uid: 107, gid: 107 } }, agentPath: (p: string) => p }),
    } as unknown as VmCoreRuntime;
    const sides: MigrationSides = {
      source: () => {
        const side = new EventEmitter() as EventEmitter & { run(): Promise<unknown> };
        side.run = () => {
          runs++;
          return Promise.resolve({ outcome, ...(outcome === 'failed' ? { reason: 'test: target went away' } : {}), progress: {}, postCopy: false, notes: [] });
        };
        return side as unknown as ReturnType<MigrationSides['source']>;
      },
      target: () => {
        throw new Error('not used');
      },
    };
    return { m: new KubeMigration({ runtime, controlAddress: '127.0.0.1', log, attachmentDir: attDir, sides, userfaultfdSysctl: knob }), ran: () => runs };
  }

  const request: MigrationRequest = { migrationId: 'm1', target: 'vms/vm-t', control: { host: '127.0.0.1', port: 1 }, token: 't', tlsHostname: 'm1.migration.podvirt.io' };

  it("source: a completed migration hands the pod's cluster-scope holds over; node-scope holds and other pods' are left alone", async () => {
    const src = pod('vm', 'uid-src');
    await held(src, 'sandbox-src', 'vm-key');
    await held(src, 'sandbox-src', 'vm-key', { network: 'hl-net', ipamType: 'host-local', ifname: 'net2' });
    await held(pod('other', 'uid-other'), 'sandbox-other', 'other-key');
    const { m, ran } = sourceAgent('completed');
    const r = await m.migrateOut('vms/vm', request, () => undefined, src);
    assert.equal(r.outcome, 'completed');
    assert.equal(ran(), 1);
    assert.equal(await owner('vm-key'), null);
    assert.ok((await readOwnerRecord(stateDir, 'vm-net', 'vm-key', 'net1'))?.handedOverAt);
    assert.equal(await owner('vm-key', 'hl-net', 'net2'), 'sandbox-src', 'host-local: each node frees its own store');
    assert.equal(await owner('other-key'), 'sandbox-other');
  });

  it('source: a failed migration changes nothing (the VM and its reservation stay)', async () => {
    const src = pod('vm', 'uid-src');
    await held(src, 'sandbox-src', 'vm-key');
    const { m } = sourceAgent('failed');
    assert.equal((await m.migrateOut('vms/vm', request, () => undefined, src)).outcome, 'failed');
    assert.equal(await owner('vm-key'), 'sandbox-src');
  });

  for (const outcome of ['resumed', 'failed'] as const) {
    it(`target: the hold is provisional before QEMU starts, then ${outcome === 'resumed' ? 'promoted when the VM runs here' : 'left provisional when the migration fails'}`, async () => {
      const tgtPod = pod('vm-t', 'uid-tgt');
      // An ADD that was not flagged as a migration target's: the node owns its fresh hold.
      await held(tgtPod, 'sandbox-tgt', 'vm-key');
      const seenAtStart: Array<string | null | undefined> = [];
      const stopped: string[] = [];
      const runtime = {
        runAs: () => ({ uid: 107, gid: 107 }),
        runDirOf: () => path.join(dir, 'run'),
        startIncoming: async () => {
          seenAtStart.push(await owner('vm-key'));
          return { qmp: new EventEmitter(), stateSnapshot: { runDir: path.join(dir, 'run') }, agentPath: (p: string) => p };
        },
        report: () => Promise.resolve({ phase: 'Running', qemuPid: 42, vcpuThreads: [], topology: {} }),
        stop: (key: string) => {
          stopped.push(key);
          return Promise.resolve();
        },
      } as unknown as VmCoreRuntime;
      const side = Object.assign(new EventEmitter(), { server: new EventEmitter(), listen: () => Promise.resolve(4711), close: () => Promise.resolve() });
      const sides: MigrationSides = { source: () => { throw new Error('not used'); }, target: () => side as unknown as TargetSide };
      const m = new KubeMigration({ runtime, controlAddress: '127.0.0.1', log, attachmentDir: attDir, sides, userfaultfdSysctl: knob });
      const target = { key: 'vms/vm-t', pod: tgtPod, specText: SPEC, sandbox: { netns: path.join(dir, 'no-netns'), cgroup: { display: '/kubepods/t' } } as unknown as DiscoveredSandbox, topology: {} };
      const ask = async () => {
        // The source agent's answer, as the driver reports it.
        setImmediate(() => (outcome === 'resumed' ? side.emit('resumed') : side.emit('failed', 'test: source cancelled')));
      };
      if (outcome === 'resumed') {
        const report = await m.migrateInto(target, 'vms/vm', ask, () => undefined);
        assert.equal(report.qemuPid, 42);
        assert.equal(await owner('vm-key'), 'sandbox-tgt', 'promoted');
      } else {
        await assert.rejects(m.migrateInto(target, 'vms/vm', ask, () => undefined), /source cancelled/);
        assert.equal(await owner('vm-key'), null, 'its DEL will release nothing');
        assert.deepEqual(stopped, ['vms/vm-t']);
      }
      assert.deepEqual(seenAtStart, [null]);
    });
  }

  it('holds of a pod: by pod identity and netns; a record contradicting either, or matching neither, is not its', () => {
    const base = { ifname: 'net1', netns: '', network: 'n', bridge: 'b', mac: undefined, mtu: undefined, migrationTarget: false, ips: [], routes: [], dns: undefined, ipamKey: 'k', stateDir: '/s', addedAt: '' };
    const p = pod('vm', 'uid-1');
    const ns = { ino: 7, dev: 1 };
    const atts: TapAttachment[] = [
      { ...base, containerId: 'a', netnsId: ns, pod: { namespace: 'vms', name: 'vm', uid: 'uid-1' } },
      { ...base, containerId: 'b', netnsId: undefined, pod: { namespace: 'vms', name: 'vm' } },
      { ...base, containerId: 'c', netnsId: ns, pod: undefined },
      { ...base, containerId: 'd', netnsId: undefined, pod: undefined },
      { ...base, containerId: 'e', netnsId: ns, pod: { namespace: 'vms', name: 'vm', uid: 'uid-old' } },
      { ...base, containerId: 'f', netnsId: { ino: 8, dev: 1 }, pod: { namespace: 'vms', name: 'vm', uid: 'uid-1' } },
      { ...base, containerId: 'g', netnsId: ns, pod: { namespace: 'vms', name: 'vm', uid: 'uid-1' }, ipamKey: undefined },
    ];
    assert.deepEqual(podIpamHolds(atts, p, ns).map((h) => h.containerId), ['a', 'b', 'c']);
    assert.deepEqual(podIpamHolds(atts, p).map((h) => h.containerId), ['a', 'b', 'f']);
    assert.deepEqual(podIpamHolds(atts, p, ns)[0], { stateDir: '/s', network: 'n', key: 'k', ifname: 'net1', containerId: 'a' });
  });
});

describe('cluster migration: a target\'s silent taps open at switch-over', function () {
  this.timeout(60_000);
  const h = new CniHarness();
  before(async () => h.start());
  after(async () => h.cleanup());

  /** Device name -> is it up, in a netns. */
  const upIn = (ns: string): Record<string, boolean> =>
    Object.fromEntries((JSON.parse(execFileSync('ip', ['-n', ns, '-j', 'link', 'show']).toString()) as Array<{ ifname: string; flags: string[] }>).filter((l) => l.ifname !== 'lo').map((l) => [l.ifname, l.flags.includes('UP')]));

  it('the taps the CNI made silent for the target pod (migrationTarget) are opened by the resume hook, not before', async () => {
    const ns = h.netns();
    const req = { containerId: 'sandbox-tgt', netns: `/run/netns/${ns}`, ifname: 'net1', args: { IgnoreUnknown: '1', K8S_POD_NAMESPACE: 'vms', K8S_POD_NAME: 'vm-t', K8S_POD_UID: 'uid-tgt' }, config: h.config({ runtimeConfig: { migrationTarget: true } }) };
    const add = await h.invoke('shim+server', { ...req, command: 'ADD' });
    assert.equal(add.exitCode, 0, add.stdout + add.stderr);
    const podVeth = Object.keys(upIn(ns)).find((n) => n.startsWith('pvp'))!;
    assert.equal(upIn(ns)[podVeth], false, 'silent until the switch-over');

    let opts: Parameters<MigrationSides['target']>[0] | undefined;
    let upAtResume: boolean | undefined;
    const side = Object.assign(new EventEmitter(), { server: new EventEmitter(), listen: () => Promise.resolve(4711), close: () => Promise.resolve() });
    const sides: MigrationSides = {
      source: () => {
        throw new Error('not used');
      },
      target: (o) => {
        opts = o;
        return side as unknown as TargetSide;
      },
    };
    const runtime = {
      runAs: () => ({ uid: 107, gid: 107 }),
      runDirOf: () => path.join(h.dir, 'run'),
      startIncoming: () => Promise.resolve({ qmp: new EventEmitter(), stateSnapshot: { runDir: path.join(h.dir, 'run') }, agentPath: (p: string) => p }),
      report: () => Promise.resolve({ phase: 'Running', qemuPid: 42, vcpuThreads: [], topology: {} }),
      stop: () => Promise.resolve(),
    } as unknown as VmCoreRuntime;
    const knob = path.join(h.dir, 'uffd');
    await fs.writeFile(knob, '0\n');
    const m = new KubeMigration({ runtime, controlAddress: '127.0.0.1', log, attachmentDir: path.join(h.dir, 'cni-attachments'), sides, userfaultfdSysctl: knob });
    const tgtPod: V1Pod = { metadata: { name: 'vm-t', namespace: 'vms', uid: 'uid-tgt' }, spec: { containers: [{ name: 'compute', image: 'x' }] }, status: { podIP: '127.0.0.1' } };
    const target = { key: 'vms/vm-t', pod: tgtPod, specText: SPEC, sandbox: { netns: `/run/netns/${ns}`, cgroup: { display: '/kubepods/t' } } as unknown as DiscoveredSandbox, topology: {} };
    const ask = async () => {
      // What the driver does at the switch-over: the hook, then the VM runs here.
      setImmediate(() => {
        upAtResume = upIn(ns)[podVeth];
        void opts!.onResume!().then(() => side.emit('resumed'));
      });
    };
    await m.migrateInto(target, 'vms/vm', ask, () => undefined);
    assert.equal(upAtResume, false);
    assert.deepEqual(upIn(ns), { net1: true, [podVeth]: true });
    const del = await h.invoke('shim+server', { ...req, command: 'DEL' });
    assert.equal(del.exitCode, 0, del.stdout);
    h.dropNetns(ns);
  });
});
