import { strict as assert } from 'node:assert';
import { DEFAULT_MIGRATION_CONFIG, applyMigrationOverrides, parseByteQuantity, parseDuration, resolveMigrationConfig, type MigrationConfig } from '../../agent/migration/config.js';
import { GiB, UNCAPPED_BANDWIDTH, planMigration, sourceCleanupSteps, type MigrationPlanInput } from '../../agent/migration/plan.js';
import { decideNext, initialDecideState, type DecideLimits, type ProgressSample } from '../../agent/migration/decide.js';
import { InvalidArgument } from '../../lib/errors.js';
import { parseVmSpec } from '../../agent/spec/index.js';

const cfg = (o: Partial<MigrationConfig> = {}): MigrationConfig => ({ ...DEFAULT_MIGRATION_CONFIG, tls: false, ...o });
const input = (o: Partial<MigrationPlanInput> = {}): MigrationPlanInput => ({
  config: cfg(),
  migrationId: 'm1',
  memoryBytes: GiB,
  targetAddress: '10.99.0.5',
  disks: [],
  postCopySupported: true,
  ...o,
});
const cap = (p: ReturnType<typeof planMigration>, name: string) => p.capabilities.find((c) => c.capability === name)?.state;

describe('migration config', () => {
  for (const [v, want] of [
    ['512Mi', 512 * 2 ** 20],
    ['1Gi/s', GiB],
    ['10G', 10e9],
    ['0', 0],
    [1234, 1234],
    ['1.5Mi', 1.5 * 2 ** 20],
  ] as const) {
    it(`parses byte quantity ${JSON.stringify(v)}`, () => assert.equal(parseByteQuantity(v, 'x'), want));
  }
  for (const v of ['-1', 'lots', '5 parsecs', -3]) {
    it(`rejects byte quantity ${JSON.stringify(v)} naming the field`, () =>
      assert.throws(() => parseByteQuantity(v, 'migration.maxBandwidth'), (e: Error) => e instanceof InvalidArgument && /migration\.maxBandwidth/.test(e.message)));
  }
  for (const [v, unit, want] of [
    ['50ms', 'ms', 50],
    ['2s', 'ms', 2000],
    ['5m', 's', 300],
    [150, 's', 150],
    ['150', 's', 150],
    ['300', 'ms', 300],
  ] as const) {
    it(`parses duration ${JSON.stringify(v)} in ${unit}`, () => assert.equal(parseDuration(v, 'x', unit), want));
  }
  it('defaults lift the 128 MiB/s cap, bound the downtime, allow post-copy and auto-converge, TLS on', () => {
    const c = DEFAULT_MIGRATION_CONFIG;
    assert.equal(c.maxBandwidth, 0);
    assert.ok(c.downtimeLimitMs < 300);
    assert.equal(c.postCopy, true);
    assert.equal(c.autoConverge, true);
    assert.equal(c.tls, true);
    assert.equal(c.progressTimeoutS, 150);
    assert.equal(c.completionTimeoutPerGiBS, 150);
  });
  it("the VM spec's migration: block is validated with the spec and feeds a layer", () => {
    const spec = parseVmSpec('cpus: 1\nmemory: 128Mi\nkernel: /k\nmigration:\n  maxBandwidth: 2Gi\n  postCopy: false\n');
    const c = resolveMigrationConfig([{ where: 'spec.migration', value: spec.migration }]);
    assert.equal(c.maxBandwidth, 2 * GiB);
    assert.equal(c.postCopy, false);
    assert.throws(() => parseVmSpec('cpus: 1\nmemory: 128Mi\nkernel: /k\nmigration:\n  bandwidth: 2Gi\n'), (e: Error) => e instanceof InvalidArgument && /migration/.test(e.message));
  });
  it('layers apply in order: file, spec block, flags', () => {
    const c = resolveMigrationConfig([
      { where: 'file', value: { maxBandwidth: '1Gi', downtimeLimit: '80ms', postCopy: false } },
      { where: 'spec.migration', value: { downtimeLimit: 40 } },
      { where: 'flags', value: { postCopy: true, multifdChannels: 4 } },
    ]);
    assert.equal(c.maxBandwidth, GiB);
    assert.equal(c.downtimeLimitMs, 40);
    assert.equal(c.postCopy, true);
    assert.equal(c.multifdChannels, 4);
  });
  for (const [name, value, re] of [
    ['unknown key', { maxBandwith: '1Gi' }, /spec\.migration: unknown key\(s\) maxBandwith/],
    ['wrong type', { postCopy: 'yes' }, /spec\.migration\.postCopy/],
    ['too many channels', { multifdChannels: 1000 }, /spec\.migration\.multifdChannels/],
    ['zero downtime', { downtimeLimit: 0 }, /spec\.migration\.downtimeLimit/],
    ['bad duration', { progressTimeout: 'soon' }, /spec\.migration\.progressTimeout/],
  ] as const) {
    it(`rejects ${name} naming the field, base untouched`, () => {
      const base = cfg();
      const copy = { ...base };
      assert.throws(() => applyMigrationOverrides(base, value, 'spec.migration'), (e: Error) => e instanceof InvalidArgument && re.test(e.message));
      assert.deepEqual(base, copy);
    });
  }
});

describe('migration planner', () => {
  it('plain pre-copy: uncapped bandwidth, downtime limit, tcp to the migration address', () => {
    const p = planMigration(input());
    assert.equal(p.migrateUri, 'tcp:10.99.0.5:49152');
    assert.equal(p.sourceParameters['max-bandwidth'], UNCAPPED_BANDWIDTH);
    assert.equal(p.sourceParameters['downtime-limit'], 100);
    assert.equal(cap(p, 'postcopy-ram'), true);
    assert.equal(cap(p, 'auto-converge'), true);
    assert.equal(cap(p, 'multifd'), false);
    assert.equal(cap(p, 'pause-before-switchover'), false);
    assert.equal(cap(p, 'return-path'), true, 'post-copy needs the return path');
    assert.deepEqual(p.target.map((s) => s.execute), ['migrate-set-capabilities', 'migrate-set-parameters', 'migrate-incoming']);
    assert.deepEqual(p.sourceMigrate.map((s) => s.execute), ['migrate-set-capabilities', 'migrate-set-parameters', 'migrate']);
    assert.deepEqual(p.sourceMirror, []);
    assert.equal(p.nbd, undefined);
    assert.equal(p.sourceParameters['tls-creds'], '');
  });
  it('an explicit bandwidth is passed through', () => {
    assert.equal(planMigration(input({ config: cfg({ maxBandwidth: 64 * 2 ** 20 }) })).sourceParameters['max-bandwidth'], 64 * 2 ** 20);
  });
  it('IPv6 target addresses are bracketed', () => {
    assert.equal(planMigration(input({ targetAddress: 'fd00::5' })).migrateUri, 'tcp:[fd00::5]:49152');
  });
  it('multifd turns post-copy off (QEMU 7.2) and says so', () => {
    const p = planMigration(input({ config: cfg({ multifdChannels: 4 }) }));
    assert.equal(cap(p, 'multifd'), true);
    assert.equal(cap(p, 'postcopy-ram'), false);
    assert.equal(p.postCopyAllowed, false);
    assert.equal(cap(p, 'return-path'), false, 'no return path without post-copy: it lengthens the downtime');
    assert.equal(p.sourceParameters['multifd-channels'], 4);
    assert.equal(p.targetParameters['multifd-channels'], 4);
    assert.match(p.notes.join(), /multifd/);
  });
  it('no userfaultfd: no post-copy, with a note', () => {
    const p = planMigration(input({ postCopySupported: false }));
    assert.equal(cap(p, 'postcopy-ram'), false);
    assert.match(p.notes.join(), /userfaultfd/);
  });
  it('same capability list on both sides', () => {
    const p = planMigration(input());
    assert.deepEqual(p.target.find((s) => s.execute === 'migrate-set-capabilities')!.arguments, p.sourceMigrate[0]!.arguments);
  });
  it('TLS: x509 creds as server on the target, client with hostname on the source, NBD too', () => {
    const p = planMigration(
      input({ config: cfg({ tls: true }), disks: [{ sourceNode: 'disk0', targetNode: 'disk0', sizeBytes: GiB }], tls: { sourceDir: '/s', targetDir: '/t', hostname: 'vm1.migration.podvirt.io' } }),
    );
    const tObj = p.target[0]!;
    assert.equal(tObj.execute, 'object-add');
    assert.equal(tObj.arguments!.endpoint, 'server');
    assert.equal(tObj.arguments!.dir, '/t');
    assert.equal(tObj.arguments!['verify-peer'], true);
    const sObj = p.sourceMirror[0]!;
    assert.equal(sObj.arguments!.endpoint, 'client');
    assert.equal(p.sourceParameters['tls-creds'], tObj.arguments!.id);
    assert.equal(p.sourceParameters['tls-hostname'], 'vm1.migration.podvirt.io');
    assert.equal(p.targetParameters['tls-creds'], tObj.arguments!.id);
    const nbdStart = p.target.find((s) => s.execute === 'nbd-server-start')!;
    assert.equal(nbdStart.arguments!['tls-creds'], tObj.arguments!.id);
    const nbdClient = p.sourceMirror.find((s) => s.execute === 'blockdev-add')!;
    assert.equal(nbdClient.arguments!['tls-hostname'], 'vm1.migration.podvirt.io');
    assert.ok(p.targetFinish.some((s) => s.execute === 'object-del'));
    assert.ok(sourceCleanupSteps(p, true).some((s) => s.execute === 'object-del'));
  });
  it('TLS without credential dirs is refused', () => {
    assert.throws(() => planMigration(input({ config: cfg({ tls: true }) })), InvalidArgument);
  });
  it('node-local disks: NBD export on the target before listening, full mirror from the source, pause before switch-over', () => {
    const p = planMigration(input({ disks: [{ sourceNode: 'disk0', targetNode: 'disk0', sizeBytes: 2 * GiB }, { sourceNode: 'disk1', targetNode: 'disk1', sizeBytes: GiB }] }));
    assert.deepEqual(p.target.map((s) => s.execute), ['migrate-set-capabilities', 'migrate-set-parameters', 'nbd-server-start', 'block-export-add', 'block-export-add', 'migrate-incoming']);
    assert.deepEqual(p.nbd, { host: '10.99.0.5', port: 49153 });
    const exp = p.target.filter((s) => s.execute === 'block-export-add');
    assert.ok(exp.every((s) => s.arguments!.writable === true));
    const mirrors = p.sourceMirror.filter((s) => s.execute === 'blockdev-mirror');
    assert.equal(mirrors.length, 2);
    assert.ok(mirrors.every((s) => s.arguments!.sync === 'full'));
    assert.deepEqual(p.mirrorJobs, mirrors.map((m) => m.arguments!['job-id']));
    assert.equal(cap(p, 'pause-before-switchover'), true);
    assert.deepEqual(p.switchoverContinue, { execute: 'migrate-continue', arguments: { state: 'pre-switchover' } });
    assert.deepEqual(p.sourceAbort.map((s) => s.execute), ['migrate_cancel', 'block-job-cancel', 'block-job-cancel']);
    assert.ok(p.sourceAbort.slice(1).every((s) => s.arguments!.force === true));
    assert.deepEqual(p.targetDisksDone.map((s) => s.execute), ['block-export-del', 'block-export-del', 'nbd-server-stop']);
    assert.deepEqual(p.targetFinish, []);
    assert.deepEqual(sourceCleanupSteps(p, false).map((s) => s.execute), ['blockdev-del', 'blockdev-del']);
    // completion deadline counts memory and disk data: (1 + 3) GiB × 150 s
    assert.equal(p.completionDeadlineMs, 4 * 150_000);
  });
  it('small guests still get at least one GiB worth of deadline', () => {
    assert.equal(planMigration(input({ memoryBytes: 128 * 2 ** 20 })).completionDeadlineMs, 150_000);
  });
  it('bad input is refused', () => {
    assert.throws(() => planMigration(input({ targetAddress: '' })), InvalidArgument);
    assert.throws(() => planMigration(input({ memoryBytes: 0 })), InvalidArgument);
  });
});

describe('post-copy decision', () => {
  const lim: DecideLimits = { completionDeadlineMs: 60_000, progressTimeoutMs: 10_000, stallPasses: 3, postCopyAllowed: true };
  const run = (samples: Array<Partial<ProgressSample> & { atMs: number; remainingBytes: number }>, l: DecideLimits = lim) => {
    let st = initialDecideState(0);
    const out = [];
    for (const s of samples) {
      const r = decideNext(st, { status: 'active', pass: 1, transferredBytes: s.atMs * 10, ...s }, l);
      st = r.state;
      out.push(r.decision);
    }
    return out;
  };
  it('a converging migration just continues', () => {
    const d = run([
      { atMs: 400, remainingBytes: 900, pass: 1 },
      { atMs: 800, remainingBytes: 500, pass: 2 },
      { atMs: 1200, remainingBytes: 100, pass: 3 },
      { atMs: 1600, remainingBytes: 10, pass: 4 },
    ]);
    assert.ok(d.every((x) => x.action === 'continue'));
  });
  it('stalled passes switch to post-copy, once', () => {
    const d = run([
      { atMs: 400, remainingBytes: 1000, pass: 1 },
      { atMs: 800, remainingBytes: 300, pass: 2 },
      { atMs: 1200, remainingBytes: 310, pass: 3 },
      { atMs: 1600, remainingBytes: 305, pass: 4 },
      { atMs: 2000, remainingBytes: 300, pass: 5 },
      { atMs: 2400, remainingBytes: 299, pass: 6 },
    ]);
    assert.deepEqual(d.map((x) => x.action), ['continue', 'continue', 'continue', 'continue', 'start-postcopy', 'continue']);
  });
  it('a guest dirtying as fast as the link sends goes to post-copy from the third pass, not before', () => {
    const d = run([
      { atMs: 400, remainingBytes: 1000, pass: 1, dirtyBytesPerSec: 0, sendBytesPerSec: 100 },
      { atMs: 800, remainingBytes: 300, pass: 2, dirtyBytesPerSec: 95, sendBytesPerSec: 100 },
      { atMs: 1200, remainingBytes: 300, pass: 3, dirtyBytesPerSec: 50, sendBytesPerSec: 100 },
      { atMs: 1600, remainingBytes: 300, pass: 3, dirtyBytesPerSec: 92, sendBytesPerSec: 100 },
    ]);
    assert.deepEqual(d.map((x) => x.action), ['continue', 'continue', 'continue', 'start-postcopy']);
    assert.match((d[3] as { reason: string }).reason, /dirties memory as fast/);
  });
  it('stalled passes without post-copy keep going (auto-converge) until a deadline', () => {
    const d = run(
      [
        { atMs: 400, remainingBytes: 1000, pass: 1 },
        { atMs: 800, remainingBytes: 300, pass: 2 },
        { atMs: 1200, remainingBytes: 310, pass: 3 },
        { atMs: 1600, remainingBytes: 305, pass: 4 },
        { atMs: 2000, remainingBytes: 300, pass: 5 },
        { atMs: 13_000, remainingBytes: 300, pass: 6 },
      ],
      { ...lim, postCopyAllowed: false },
    );
    assert.deepEqual(d.map((x) => x.action), ['continue', 'continue', 'continue', 'continue', 'continue', 'cancel']);
    assert.match((d[5] as { reason: string }).reason, /no progress for 10 s/);
  });
  it('progress timeout resets whenever remaining drops', () => {
    const d = run(
      [
        { atMs: 1000, remainingBytes: 1000 },
        { atMs: 9000, remainingBytes: 900 },
        { atMs: 18_000, remainingBytes: 800 },
        { atMs: 27_000, remainingBytes: 700 },
      ],
      { ...lim, stallPasses: 100 },
    );
    assert.ok(d.every((x) => x.action === 'continue'));
  });
  it('completion deadline escalates to post-copy, or cancels without it', () => {
    const s = [
      { atMs: 1000, remainingBytes: 1000 },
      { atMs: 61_000, remainingBytes: 10 },
    ];
    assert.equal(run(s, { ...lim, stallPasses: 100 })[1]!.action, 'start-postcopy');
    const c = run(s, { ...lim, stallPasses: 100, postCopyAllowed: false })[1]!;
    assert.equal(c.action, 'cancel');
    assert.match((c as { reason: string }).reason, /not completed within 60 s/);
  });
  it('a dead link (nothing sent) is cancelled, never switched to post-copy', () => {
    const d = run([
      { atMs: 1000, remainingBytes: 1000, transferredBytes: 500 },
      { atMs: 4000, remainingBytes: 900, transferredBytes: 600 },
      { atMs: 9000, remainingBytes: 900, transferredBytes: 600 },
      { atMs: 15_000, remainingBytes: 900, transferredBytes: 600 },
    ]);
    assert.deepEqual(d.map((x) => x.action), ['continue', 'continue', 'continue', 'cancel']);
    assert.match((d[3] as { reason: string }).reason, /stream stalled/);
  });
  it('the completion deadline over a link that went quiet cancels instead of switching', () => {
    const d = run([
      { atMs: 1000, remainingBytes: 1000, transferredBytes: 500 },
      { atMs: 58_000, remainingBytes: 10, transferredBytes: 900 },
      { atMs: 65_000, remainingBytes: 10, transferredBytes: 900 },
    ]);
    assert.equal(d[2]!.action, 'cancel');
  });
  it('no progress while bytes still trickle into a dead socket: cancel, not post-copy', () => {
    const d = run([
      { atMs: 0, remainingBytes: 1000, transferredBytes: 100 },
      { atMs: 400, remainingBytes: 900, transferredBytes: 200 },
      { atMs: 9000, remainingBytes: 900, transferredBytes: 300 },
      { atMs: 11_000, remainingBytes: 900, transferredBytes: 300 },
    ]);
    assert.deepEqual(d.map((x) => x.action), ['continue', 'continue', 'continue', 'cancel']);
  });
  it('after post-copy was requested but QEMU is still in pre-copy, a stalled stream is still cancelled', () => {
    const d = run([
      { atMs: 400, remainingBytes: 1000, pass: 1, transferredBytes: 10 },
      { atMs: 800, remainingBytes: 300, pass: 2, transferredBytes: 20 },
      { atMs: 1200, remainingBytes: 300, pass: 3, dirtyBytesPerSec: 99, sendBytesPerSec: 100, transferredBytes: 30 },
      { atMs: 5000, remainingBytes: 300, pass: 3, transferredBytes: 30 },
      { atMs: 12_000, remainingBytes: 300, pass: 3, transferredBytes: 30 },
    ]);
    assert.deepEqual(d.map((x) => x.action), ['continue', 'continue', 'start-postcopy', 'continue', 'cancel']);
  });
  it('never acts while in post-copy or at the switch-over', () => {
    for (const status of ['postcopy-active', 'postcopy-paused', 'pre-switchover', 'device', 'setup']) {
      const d = run([{ atMs: 100_000, remainingBytes: 1000, status }]);
      assert.equal(d[0]!.action, 'continue', status);
    }
  });
});
