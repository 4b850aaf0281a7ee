import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Context } from 'mocha';
import { parse } from 'yaml';
import { DEFAULT_MIGRATION_CONFIG } from '../../agent/migration/config.js';
import { LocalMigrations, MIGRATE_FROM_ANNOTATION, targetManifest, type LocalMigrationHost } from '../../agent/migration/local.js';
import type { MigrationProgress } from '../../agent/migration/progress.js';
import { flagOverrides, main } from '../../agent/migration/main.js';
import { fractionDone, formatBytes, progressWriter, renderBar } from '../../agent/migration/render.js';
import { queryStatus } from '../../agent/qmp/index.js';
import { activateTap } from '../../cni/activate.js';
import { defaultHostDeps } from '../../cni/host.js';
import { stderrLogger } from '../../cni/logger.js';
import { handleCniRequest } from '../../cni/skel.js';
import { exec } from '../../lib/exec.js';
import { skipBecause } from '../helpers/skip.js';
import { BareVm, guestAvailable } from './bare-qemu.js';
import { pingUntilReply } from '../helpers/ping.js';

const MiB = 2 ** 20;
const MANIFEST = `apiVersion: v1
kind: Pod
metadata:
  name: vm1
  annotations:
    vm.podvirt.io/spec: |
      cpus: 1
      memory: 256Mi
spec:
  containers:
    - name: compute
      image: example.org/podvirt-launcher:dev
`;

const progress = (o: Partial<MigrationProgress>): MigrationProgress => ({
  migrationId: 'm',
  phase: 'PreCopy',
  qemuStatus: 'active',
  bytesTransferred: 0,
  bytesRemaining: 0,
  bytesTotal: 0,
  dirtyRateBytesPerSec: 0,
  mbps: 0,
  pass: 1,
  postCopy: false,
  elapsedMs: 0,
  ...o,
});

describe('migration CLI rendering', () => {
  it('formats bytes', () => {
    assert.equal(formatBytes(512), '512 B');
    assert.equal(formatBytes(1536), '1.5 KiB');
    assert.equal(formatBytes(3 * 2 ** 30), '3.0 GiB');
    assert.equal(formatBytes(-1), '?');
  });
  it('fraction: disks while mirroring, RAM sent/(sent+left) after, 1 when completed', () => {
    assert.equal(fractionDone(progress({ phase: 'MirroringDisks', disks: { bytesCopied: 25, bytesTotal: 100 } })), 0.25);
    assert.equal(fractionDone(progress({ bytesTransferred: 300, bytesRemaining: 100 })), 0.75);
    assert.equal(fractionDone(progress({ phase: 'Completed' })), 1);
    assert.equal(fractionDone(progress({})), 0);
  });
  it('bar line shows phase, bytes, rates, pass and fits the width', () => {
    const line = renderBar(progress({ bytesTransferred: 512 * MiB, bytesRemaining: 512 * MiB, mbps: 800, dirtyRateBytesPerSec: 3 * MiB, pass: 2, expectedDowntimeMs: 30 }), 200);
    assert.equal(line, '[############------------]  50%  PreCopy  sent 512 MiB, left 512 MiB  95.4 MiB/s  dirty 3.0 MiB/s  pass 2  exp. downtime 30 ms');
    assert.ok(renderBar(progress({ bytesTransferred: 1, bytesRemaining: 1 }), 30).length <= 30);
    assert.match(renderBar(progress({ phase: 'Completed', downtimeMs: 12, totalTimeMs: 800 })), /downtime 12 ms, total 800 ms/);
    assert.ok(renderBar(progress({ phase: 'Failed', reason: 'target QEMU exited' })).endsWith('Failed  target QEMU exited'));
  });
  it('writer: JSON lines when not a terminal, an in-place bar on one', () => {
    const chunks: string[] = [];
    const sink = { write: (s: string) => chunks.push(s) } as unknown as NodeJS.WritableStream;
    const w = progressWriter(sink);
    w.update(progress({ bytesTransferred: 5 }));
    w.end();
    assert.deepEqual(JSON.parse(chunks[0]!).bytesTransferred, 5);
    assert.equal(chunks.length, 1);
    const tty: string[] = [];
    const t = progressWriter(Object.assign({ write: (s: string) => tty.push(s) }, { isTTY: true, columns: 80 }) as unknown as NodeJS.WritableStream);
    t.update(progress({ bytesTransferred: 5, bytesRemaining: 5 }));
    t.update(progress({ bytesTransferred: 5, bytesRemaining: 5 }));
    t.end();
    const forced: string[] = [];
    progressWriter(Object.assign({ write: (s: string) => forced.push(s) }, { isTTY: true }) as unknown as NodeJS.WritableStream, { json: true }).update(progress({}));
    assert.equal(JSON.parse(forced[0]!).phase, 'PreCopy', '--json on a terminal still writes JSON lines');
    assert.equal(tty.length, 2, 'unchanged line not redrawn; newline at the end');
    assert.ok(tty[0]!.startsWith('\r\u001b[2K['));
  });
  it('target manifest: claims renamed too, so the target gets fresh volumes', () => {
    const multi = [
      JSON.stringify({ apiVersion: 'v1', kind: 'PersistentVolumeClaim', metadata: { name: 'vm1-data' }, spec: {} }),
      JSON.stringify({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'vm1', annotations: {} }, spec: { volumes: [{ name: 'data', persistentVolumeClaim: { claimName: 'vm1-data' } }] } }),
    ].join('\n---\n');
    const docs = targetManifest(multi, 'vm1', 'mig-0000beef').split(/^---$/m).filter((d) => d.trim()).map((d) => parse(d) as { kind: string; metadata: { name: string }; spec: { volumes?: Array<{ persistentVolumeClaim: { claimName: string } }> } });
    assert.equal(docs[0]!.metadata.name, 'vm1-data-mbeef');
    assert.equal(docs[1]!.metadata.name, 'vm1-mbeef');
    assert.equal(docs[1]!.spec.volumes![0]!.persistentVolumeClaim.claimName, 'vm1-data-mbeef');
    assert.throws(() => targetManifest(docs.length ? '{"kind":"Service"}\n---\n{"kind":"Service"}' : '', 'x', 'mig-1'), /no Pod/);
  });
  it('flags become the top config layer; bad numbers are refused', () => {
    assert.deepEqual(flagOverrides({ tls: true, 'max-bandwidth': '1Gi', multifd: '4', 'no-post-copy': true, 'downtime-limit': '50ms' }), {
      tls: true,
      maxBandwidth: '1Gi',
      multifdChannels: 4,
      postCopy: false,
      downtimeLimit: '50ms',
    });
    assert.throws(() => flagOverrides({ multifd: 'many' }), /--multifd/);
  });
  it('target manifest: renamed, annotated with migrate-from, spec untouched', () => {
    const m = parse(targetManifest(MANIFEST, 'vm1', 'mig-0000abcd')) as { metadata: { name: string; annotations: Record<string, string> } };
    assert.equal(m.metadata.name, 'vm1-mabcd');
    assert.equal(m.metadata.annotations[MIGRATE_FROM_ANNOTATION], 'default/vm1');
    assert.match(m.metadata.annotations['vm.podvirt.io/spec']!, /memory: 256Mi/);
    // migrating the target again does not grow the name
    assert.equal((parse(targetManifest(MANIFEST.replace('name: vm1', 'name: vm1-mabcd'), 'vm1-mabcd', 'mig-00001234')) as { metadata: { name: string } }).metadata.name, 'vm1-m1234');
  });
});

/**
 * The local orchestrator against a host made of bare QEMUs, netns and the real CNI plugin (what
 * local mode's agent provides in the product): target pod creation, token hand-off through a
 * state file, migration network on both pods, loser removal.
 */
describe('local migration orchestrator (bare-QEMU host, real CNI plugin)', function () {
  this.timeout(180_000);
  let dir: string;
  let host: BareHost;
  before(function () {
    if (!guestAvailable()) skipBecause(this as unknown as Context, 'test guest not built (hack/setup.d/20-test-guest.sh)');
  });
  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'pvt-mig-'));
    host = new BareHost(dir);
    await host.init();
  });
  afterEach(async () => {
    await host.teardown();
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('moves the VM with its disk and NIC to a new pod, removes the source, cleans the state dir', async () => {
    await host.startSource('vm1');
    const src = host.pods.get('vm1')!;
    await src.vm.type('diskpattern write /dev/vda kept-across; echo DONE-W');
    await src.vm.waitSerial(/DONE-W/);
    const m = new LocalMigrations(host, path.join(dir, 'migrations'));
    const seen: string[] = [];
    const rec = await m.start('vm1', { ...DEFAULT_MIGRATION_CONFIG, tls: true, pollIntervalMs: 100 });
    const poll = setInterval(() => {
      try {
        const p = m.get('vm1').progress;
        if (p && !seen.includes(p.phase)) seen.push(p.phase);
      } catch {
        /* finished */
      }
    }, 20);
    // A client following by long poll sees every change in order and the end as soon as it is there.
    const revs: number[] = [];
    const follow = (async () => {
      let rev = rec.rev ?? -1;
      for (;;) {
        const r = await m.watch('vm1', rev, 10_000);
        if (r.result) return r;
        assert.ok((r.rev ?? 0) > rev, `watch answered without a change (rev ${r.rev} after ${rev})`);
        rev = r.rev!;
        revs.push(rev);
      }
    })();
    const done = await m.wait('vm1');
    clearInterval(poll);
    assert.equal((await follow).result?.outcome, done.result?.outcome);
    assert.ok(revs.length > 0);
    assert.equal(done.result?.outcome, 'completed', done.result?.reason);
    // Where the time went: each step once, in the order they happen.
    const steps = (done.steps ?? []).map((x) => x.step);
    const order = ['source facts read', 'token written', 'target pod running', 'target side listening', 'source: MigrationStarted', 'source side done', 'source pod removed'];
    assert.deepEqual(order.map((x) => steps.indexOf(x)), [...order.map((x) => steps.indexOf(x))].sort((a, b) => a - b), steps.join(', '));
    assert.ok(order.every((x) => steps.includes(x)), steps.join(', '));
    assert.ok(done.target && host.pods.has(done.target), 'target pod runs');
    assert.ok(!host.pods.has('vm1'), 'source pod removed');
    assert.ok(seen.includes('MirroringDisks') || seen.includes('PreCopy'), seen.join());
    const t = host.pods.get(done.target)!;
    assert.equal((await queryStatus(t.vm.qmp)).status, 'running');
    assert.match((await fs.readFile(t.img)).subarray(0, 512).toString('latin1'), /^PVPAT:kept-across:END/);
    await pingUntilReply(host.guestIp);
    assert.equal(existsSync(path.join(dir, 'migrations', rec.id)), false, 'token and credentials gone');
    assert.equal(host.migrationLinks(), 0, 'migration attachments removed');
  });

  it('cancel: the target pod is removed, the source keeps running', async () => {
    await host.startSource('vm2');
    const m = new LocalMigrations(host, path.join(dir, 'migrations'));
    await m.start('vm2', { ...DEFAULT_MIGRATION_CONFIG, tls: false, maxBandwidth: 2 * MiB, pollIntervalMs: 100 });
    for (let i = 0; i < 300 && !(m.get('vm2').progress?.bytesTransferred ?? 0); i++) await new Promise((r) => setTimeout(r, 50));
    m.cancel('vm2');
    const done = await m.wait('vm2');
    assert.equal(done.result?.outcome, 'cancelled');
    assert.deepEqual([...host.pods.keys()], ['vm2']);
    const s = host.pods.get('vm2')!;
    assert.equal((await queryStatus(s.vm.qmp)).status, 'running');
    const last = (await s.vm.lastTick())!;
    await s.vm.waitSerial(new RegExp(`tick ${last.n + 1} `), 10_000);
    await pingUntilReply(host.guestIp);
  });
});

interface BarePod {
  vm: BareVm;
  netns: string;
  img: string;
  manifest: string;
  cni: Array<() => Promise<void>>;
}

/** LocalMigrationHost over bare QEMUs: one bridge for the VM NIC, one for migration, a netns per pod. */
class BareHost implements LocalMigrationHost {
  readonly pods = new Map<string, BarePod>();
  readonly postCopySupported = true;
  private readonly r = randomBytes(2).toString('hex');
  private readonly sub = 100 + (randomBytes(1)[0]! % 100);
  private readonly br = `pvt-mig-b${this.r}`;
  private readonly migBr = `pvt-mig-m${this.r}`;
  private readonly mac = `52:54:00:9b:${this.r.slice(0, 2)}:${this.r.slice(2, 4)}`;
  readonly guestIp = `10.216.${this.sub}.2`;
  private nextMigIp = 2;
  private liveMigLinks = 0;
  constructor(private readonly dir: string) {}

  async init(): Promise<void> {}

  migrationLinks(): number {
    return this.liveMigLinks;
  }

  private async cni(command: 'ADD' | 'DEL', netns: string, ifname: string, config: Record<string, unknown>, id: string): Promise<void> {
    const res = await handleCniRequest(
      { env: { CNI_COMMAND: command, CNI_CONTAINERID: id, CNI_NETNS: netns, CNI_IFNAME: ifname, CNI_PATH: '/usr/lib/cni:/opt/cni/bin' }, stdin: Buffer.from(JSON.stringify({ cniVersion: '1.1.0', type: 'podvirt', ...config })) },
      { logger: stderrLogger('error'), deps: { ...defaultHostDeps, delegateVersions: new Map() }, baseEnv: { PATH: process.env.PATH } },
    );
    if (res.exitCode !== 0) throw new Error(`CNI ${command} ${ifname}: ${res.stdout}`);
  }

  private async pod(name: string, manifest: string, target: boolean): Promise<BarePod> {
    const ns = `pvt-mig-${name.slice(-6)}${this.r}`;
    await exec('ip', ['netns', 'add', ns]);
    const netns = `/run/netns/${ns}`;
    const p: BarePod = { vm: undefined as unknown as BareVm, netns, img: path.join(this.dir, `${name}.img`), manifest, cni: [] };
    p.cni.push(async () => {
      await exec('ip', ['netns', 'del', ns], { allowFailure: true });
    });
    const tapConf = { name: `pvt-mig-net${this.r}`, mode: 'tap', bridge: this.br, ipam: { type: 'static', addresses: [{ address: `${this.guestIp}/24` }] }, runtimeConfig: { mac: this.mac, migrationTarget: target } };
    await this.cni('ADD', netns, 'tap0', tapConf, `pvt-mig-${name}`);
    p.cni.push(() => this.cni('DEL', netns, 'tap0', tapConf, `pvt-mig-${name}`));
    await fs.writeFile(p.img, '');
    await fs.truncate(p.img, 16 * MiB);
    p.vm = await BareVm.launch({ dir: this.dir, name, netns: ns, incoming: target, disk: p.img, nic: { tap: 'tap0', mac: this.mac } });
    this.pods.set(name, p);
    return p;
  }

  async startSource(name: string): Promise<void> {
    const p = await this.pod(name, MANIFEST.replace('name: vm1', `name: ${name}`), false);
    await exec('ip', ['addr', 'add', `10.216.${this.sub}.1/24`, 'dev', this.br], { allowFailure: true });
    await exec('ip', ['link', 'set', this.br, 'up']);
    await p.vm.waitSerial(/PODVIRT-GUEST-READY/, 60_000);
    await p.vm.type(`ip addr add ${this.guestIp}/24 dev eth0; ip link set eth0 up; echo NET-UP`);
    await p.vm.waitSerial(/NET-UP/);
    await pingUntilReply(this.guestIp);
  }

  async source(name: string) {
    const p = this.pods.get(name);
    if (!p) throw new Error(`no pod ${name}`);
    return { manifest: p.manifest, qmp: p.vm.qmp, netns: p.netns, memoryBytes: 256 * MiB, disks: [{ node: 'disk0', sizeBytes: 16 * MiB }] };
  }

  async startTarget(manifest: string) {
    const m = parse(manifest) as { metadata: { name: string; annotations: Record<string, string> } };
    assert.ok(m.metadata.annotations[MIGRATE_FROM_ANNOTATION]);
    const p = await this.pod(m.metadata.name, manifest, true);
    return { name: m.metadata.name, qmp: p.vm.qmp, netns: p.netns, taps: ['tap0'], diskNodes: ['disk0'] };
  }

  async addMigrationNetwork(pod: string, netns: string) {
    const ip = `10.217.${this.sub}.${this.nextMigIp++}`;
    const conf = { name: `pvt-mig-mig${this.r}`, mode: 'migration', bridge: this.migBr, ipam: { type: 'static', addresses: [{ address: `${ip}/24` }] } };
    await this.cni('ADD', netns, 'mig0', conf, `pvt-mig-m-${pod}`);
    await exec('ip', ['link', 'set', this.migBr, 'up']);
    this.liveMigLinks++;
    return {
      ip,
      remove: async () => {
        await this.cni('DEL', netns, 'mig0', conf, `pvt-mig-m-${pod}`);
        this.liveMigLinks--;
      },
    };
  }

  activateTap(netns: string, ifname: string): Promise<void> {
    return activateTap({ netns, ifname });
  }

  async stopPod(name: string): Promise<void> {
    const p = this.pods.get(name);
    if (!p) return;
    this.pods.delete(name);
    await p.vm.kill();
    for (const u of p.cni.reverse()) await u().catch(() => undefined);
    await fs.rm(p.img, { force: true });
  }

  async teardown(): Promise<void> {
    for (const name of [...this.pods.keys()]) await this.stopPod(name);
    for (const l of [this.br, this.migBr]) await exec('ip', ['link', 'del', l], { allowFailure: true });
  }
}


describe('podvirt migrate: argument checks before any agent is contacted', () => {
  it('needs exactly one NAME, and --to can only name this node', async () => {
    await assert.rejects(main([]), (e: Error & { kind?: string }) => e.kind === 'InvalidArgument' && /usage: podvirt migrate NAME/.test(e.message));
    await assert.rejects(main(['vm1', '--to', 'some-other-node']), (e: Error & { kind?: string }) => e.kind === 'InvalidArgument' && /local mode has one node/.test(e.message));
    await assert.rejects(main(['vm1', '--bogus']), (e: Error & { kind?: string }) => e.kind === 'InvalidArgument');
  });
});
