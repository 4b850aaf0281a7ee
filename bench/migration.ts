/**
 * Live-migration benchmark, one run on this host (TCG, test guest, loopback TCP):
 *   1. 1 GiB idle guest: podvirt's migration driver (both agents' halves, authenticated control
 *      channel, planned capabilities/parameters, monitor, confirmation) against a bare QEMU
 *      migration tuned by hand (events, max-bandwidth lifted, same downtime limit), interleaved
 *      ping-pong so both see the same guest and load. Total = command issued → VM running on the
 *      target. Also with TLS (per-migration x509 credentials).
 *   2. downtime: QEMU's figure on the source, and source STOP → target RESUME from event timestamps.
 *   3. a guest rewriting 48 MiB of memory: default config, and over a 6 MiB/s link it cannot keep up with.
 *
 *   4. `podvirt migrate` end to end in local mode (1 GiB guest, NIC; the wall time of the built CLI:
 *      target pod with sandbox, CNI tap and migration network, QEMU start, migration, source pod
 *      removal) against the same job by hand: spawn the target QEMU with -incoming, migrate with the
 *      same capabilities and parameters, until the guest runs there; A unpinned, B placed like the
 *      pods (every thread of each QEMU on one CPU of its own), each also with the source quit.
 *      The agent's record of each migration (`steps`) gives where the time goes, printed as a
 *      second table.
 *
 *   npx tsx bench/migration.ts [rounds=3] [--only=idle,dirty,local] [--src]
 *   (--src drives the CLI and agent from sources through tsx instead of a fresh dist/ build)
 */
import { promises as fs } from 'node:fs';
import { execFile as execFileCb, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { DEFAULT_MIGRATION_CONFIG, type MigrationConfig } from '../agent/migration/config.js';
import { newMigrationToken } from '../agent/migration/control.js';
import { SourceSide, type MigrationResult } from '../agent/migration/source.js';
import { TargetSide } from '../agent/migration/target.js';
import { eventMs, type MigrateInfo } from '../agent/migration/progress.js';
import { UNCAPPED_BANDWIDTH } from '../agent/migration/plan.js';
import { BareVm, guestAvailable } from '../test/migration/bare-qemu.js';
import { LocalEnv } from '../test/agent-local/harness.js';
import { callControl } from '../agent/local/control.js';
import type { LocalMigrationRecord } from '../agent/migration/local.js';
import { PROJECT_ROOT } from '../lib/project-root.js';
import { setThreadAffinity } from '../agent/pin/affinity.js';

const execFile = promisify(execFileCb);
const argv = process.argv.slice(2);
const ROUNDS = Number(argv.find((a) => /^\d+$/.test(a)) ?? 3);
/** `--only idle,dirty,local` runs those sections; default all. `--src` drives the CLI from sources (tsx) instead of dist/. */
const ONLY = new Set((argv.find((a) => a.startsWith('--only='))?.slice(7) ?? 'idle,dirty,local').split(','));
const FROM_SOURCES = argv.includes('--src');
const MiB = 2 ** 20;
const median = (xs: number[]) => (xs.length ? [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]! : NaN);

interface Sample {
  totalMs: number;
  qemuDowntimeMs: number;
  observedDowntimeMs: number;
  /** QEMU's own `total-time` of the migration (source side). */
  qemuTotalMs?: number;
  postCopy?: boolean;
}

let seq = 0;
let dir = '';

async function launch(name: string, memMiB: number, incoming: boolean, append = ''): Promise<BareVm> {
  return BareVm.launch({ dir, name: `${name}${seq++}`, memMiB, incoming, append });
}

/** By hand: what an operator who knows QEMU's defaults would type. */
async function bareMigration(src: BareVm, dst: BareVm, port: number): Promise<Sample> {
  let stopAt = 0;
  src.qmp.on('STOP', (ev) => (stopAt = eventMs(ev.timestamp)));
  const resumed = dst.qmp.waitEvent('RESUME', { timeoutMs: 120_000 });
  // Explicit, because a VM that was migrated before keeps the capabilities it was given then.
  const caps = { capabilities: ['events', 'postcopy-ram', 'multifd', 'auto-converge', 'return-path', 'pause-before-switchover'].map((c) => ({ capability: c, state: c === 'events' })) };
  await dst.qmp.execute('migrate-set-capabilities', caps);
  await dst.qmp.execute('migrate-incoming', { uri: `tcp:127.0.0.1:${port}` });
  const t0 = performance.now();
  await src.qmp.execute('migrate-set-capabilities', caps);
  await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': UNCAPPED_BANDWIDTH, 'downtime-limit': DEFAULT_MIGRATION_CONFIG.downtimeLimitMs, 'tls-creds': '' });
  await src.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${port}` });
  const resumeAt = eventMs((await resumed.promise).timestamp);
  const totalMs = performance.now() - t0;
  let info: MigrateInfo = {};
  for (let i = 0; i < 50; i++) {
    info = await src.qmp.execute<MigrateInfo>('query-migrate');
    if (info.status === 'completed' && (info['total-time'] ?? 0) > 0) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  return { totalMs, qemuDowntimeMs: info.downtime ?? NaN, observedDowntimeMs: resumeAt - stopAt, qemuTotalMs: info['total-time'] ?? NaN };
}

async function driverMigration(src: BareVm, dst: BareVm, config: MigrationConfig, memMiB: number): Promise<Sample & { result: MigrationResult }> {
  const migrationId = `pvt-mig-bench-${randomBytes(3).toString('hex')}`;
  const token = newMigrationToken();
  const target = new TargetSide({
    migrationId,
    token,
    qmp: dst.qmp,
    migrationAddress: '127.0.0.1',
    localDiskNodes: [],
    postCopySupported: true,
    tlsWorkDir: path.join(dir, `${migrationId}-ca`),
    tlsQemuDir: path.join(dir, `${migrationId}-t`),
  });
  const port = await target.listen('127.0.0.1', 0);
  try {
    const t0 = performance.now();
    const result = await new SourceSide({
      migrationId,
      token,
      control: { host: '127.0.0.1', port },
      qmp: src.qmp,
      config,
      memoryBytes: memMiB * MiB,
      disks: [],
      postCopySupported: true,
      tlsHostname: 'vm.migration.podvirt.io',
      tlsQemuDir: path.join(dir, `${migrationId}-s`),
    }).run();
    const totalMs = performance.now() - t0;
    if (result.outcome !== 'completed') throw new Error(`driver migration ${result.outcome}: ${result.reason}`);
    return { totalMs, qemuDowntimeMs: result.downtimeMs ?? NaN, observedDowntimeMs: result.observedDowntimeMs ?? NaN, postCopy: result.postCopy, result };
  } finally {
    await target.close();
  }
}

/** Every thread of a bare QEMU on `cpus` (threads made later, like the migration thread, inherit the main thread's). */
async function pinAll(vm: BareVm, cpus: number[]): Promise<void> {
  for (const t of await fs.readdir(`/proc/${vm.proc.pid}/task`)) setThreadAffinity(Number(t), cpus);
}

async function main(): Promise<void> {
  if (!guestAvailable()) throw new Error('test guest not built: bash hack/setup.d/20-test-guest.sh');
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'pvt-mig-bench-'));
  const live: BareVm[] = [];
  const cfg: MigrationConfig = { ...DEFAULT_MIGRATION_CONFIG, tls: false };
  const rows: Row[] = [];
  const breakdown: Row[] = [];
  let port = 49300 + Math.floor(Math.random() * 500);
  try {
    if (ONLY.has('idle')) await idleSection(live, cfg, rows, () => port++);
    if (ONLY.has('dirty')) await dirtySection(live, cfg, rows, () => port++);
    if (ONLY.has('local')) await localSection(live, rows, breakdown, () => port++);
  } finally {
    for (const v of live) await v.kill();
    await fs.rm(dir, { recursive: true, force: true });
  }
  process.stdout.write(`\nmigration benchmark (QEMU TCG, loopback TCP, ${ROUNDS} rounds, ${os.cpus().length} host CPUs)\n\n`);
  printTable(['measure', 'value', 'note'], rows);
  if (breakdown.length) {
    process.stdout.write(`\nwhere podvirt migrate's time goes (local mode, median over ${ROUNDS} rounds; ms since the CLI was started)\n\n`);
    printTable(['step', 'ends at', 'took', 'note'], breakdown);
  }
}

type Row = string[];

function printTable(head: string[], rows: Row[]): void {
  const all = [head, ...rows];
  const w = head.map((_h, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  const line = (r: Row) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(w[i]!))).join('  ').trimEnd() + '\n';
  process.stdout.write(line(head) + '-'.repeat(w.reduce((a, b) => a + b + 2, 0)) + '\n');
  for (const r of rows) process.stdout.write(line(r));
}

/** 1 + 2: ping-pong one 1 GiB guest through fresh targets: bare, driver, driver+TLS, bare, ... */
async function idleSection(live: BareVm[], cfg: MigrationConfig, rows: Row[], nextPort: () => number): Promise<void> {
  let vm = await launch('idle', 1024, false);
  live.push(vm);
  await vm.waitSerial(/tick 2 /, 120_000);
  const bare: Sample[] = [];
  const drv: Sample[] = [];
  const drvTls: Sample[] = [];
  const hop = async (kind: 'bare' | 'driver' | 'tls') => {
    const dst = await launch('idle', 1024, true);
    live.push(dst);
    const s = await (kind === 'bare' ? bareMigration(vm, dst, nextPort()) : driverMigration(vm, dst, kind === 'tls' ? { ...cfg, tls: true, port: nextPort() } : { ...cfg, port: nextPort() }, 1024)).catch((e: unknown) => {
      throw new Error(`${kind} hop ${vm.name} -> ${dst.name}: ${(e as Error).message}; source stderr: ${vm.stderr.slice(-500)}; target stderr: ${dst.stderr.slice(-500)}`);
    });
    (kind === 'bare' ? bare : kind === 'driver' ? drv : drvTls).push(s);
    await vm.kill();
    live.splice(live.indexOf(vm), 1);
    vm = dst;
    await vm.waitSerial(/tick \d+ /, 30_000, 0);
  };
  for (let r = 0; r < ROUNDS; r++) for (const k of r % 2 ? (['driver', 'tls', 'bare'] as const) : (['bare', 'driver', 'tls'] as const)) await hop(k);
  const lastTick = await vm.lastTick();
  const ratio = median(drv.map((s) => s.totalMs)) / median(bare.map((s) => s.totalMs));
  rows.push(['1 GiB idle: bare QEMU tuned by hand, total (median)', `${median(bare.map((s) => s.totalMs)).toFixed(0)} ms`, '']);
  rows.push(['1 GiB idle: podvirt driver, total (median)', `${median(drv.map((s) => s.totalMs)).toFixed(0)} ms`, '']);
  rows.push(['  ratio driver / bare', ratio.toFixed(2), ratio <= 1.1 ? 'goal ≤ 1.1: met' : 'goal ≤ 1.1: MISSED']);
  rows.push(['1 GiB idle: podvirt driver with TLS, total (median)', `${median(drvTls.map((s) => s.totalMs)).toFixed(0)} ms`, `${(median(drvTls.map((s) => s.totalMs)) / median(bare.map((s) => s.totalMs))).toFixed(2)} × bare`]);
  const dq = median(drv.map((s) => s.qemuDowntimeMs));
  const dobs = median(drv.map((s) => s.observedDowntimeMs));
  rows.push(['downtime, driver: QEMU (source stop → last byte)', `${dq} ms`, dq <= 50 ? 'goal ≤ 50 ms: met' : 'goal ≤ 50 ms: MISSED']);
  rows.push(['downtime, driver: source STOP → target resumed', `${dobs.toFixed(0)} ms`, 'guest-visible pause (incl. confirmation)']);
  rows.push(['downtime, bare: QEMU / STOP → RESUME', `${median(bare.map((s) => s.qemuDowntimeMs))} / ${median(bare.map((s) => s.observedDowntimeMs)).toFixed(0)} ms`, '']);
  rows.push(['downtime, driver+TLS: QEMU', `${median(drvTls.map((s) => s.qemuDowntimeMs))} ms`, '']);
  rows.push(['guest after all hops', lastTick ? `tick ${lastTick.n}, uptime ${lastTick.uptime} s` : '?', `${ROUNDS * 3} migrations, no reboot`]);
  await vm.kill();
  live.splice(live.indexOf(vm), 1);
}

/** 3: a guest rewriting 48 MiB. */
async function dirtySection(live: BareVm[], cfg: MigrationConfig, rows: Row[], nextPort: () => number): Promise<void> {
  for (const [label, c, mem] of [
    ['dirtying guest (48 MiB rewritten), 1 GiB, default config', cfg, 1024],
    ['dirtying guest (48 MiB rewritten), 128 MiB, 6 MiB/s link', { ...cfg, maxBandwidth: 6 * MiB }, 128],
  ] as const) {
    const src = await launch('dirty', mem, false, 'podvirt.dirty=48');
    live.push(src);
    await src.waitSerial(/PODVIRT-DIRTY/, 120_000);
    await src.waitSerial(/tick 3 /, 30_000);
    const dst = await launch('dirty', mem, true, 'podvirt.dirty=48');
    live.push(dst);
    const s = await driverMigration(src, dst, { ...c, port: nextPort() }, mem);
    rows.push([label, `completed in ${s.totalMs.toFixed(0)} ms`, s.postCopy ? 'via post-copy' : `pre-copy, QEMU downtime ${s.qemuDowntimeMs} ms`]);
  }
}

/**
 * 4: `podvirt migrate` (local mode, the CLI's wall time) against the same job by hand: spawn the
 * target QEMU with -incoming, migrate with the same capabilities, until the guest runs there.
 * Interleaved so both see the same load. The agent's record of the migration gives the breakdown.
 */
async function localSection(live: BareVm[], rows: Row[], breakdown: Row[], nextPort: () => number): Promise<void> {
  if (!FROM_SOURCES) execFileSync(process.execPath, [path.join(PROJECT_ROOT, 'hack/build.mjs')], { stdio: 'inherit' });
  const env = new LocalEnv();
  env.useDist = !FROM_SOURCES;
  await env.init();
  process.env.PODVIRT_MIGRATION_BRIDGE = `pvt-mig-bb${randomBytes(2).toString('hex')}`;
  process.env.PODVIRT_MIGRATION_SUBNET = `10.219.${randomBytes(1)[0]! % 250}.0/24`;
  try {
    let name = 'bmig';
    const st = await env.run({ name, memory: '1Gi', cmdline: 'console=ttyS0 panic=-1' });
    await env.waitSerial(st.serialLog, /tick 2 /);
    let bvm = await launch('lbare', 1024, false);
    live.push(bvm);
    // The same by hand, placed like podvirt's pods: every thread of each QEMU on one CPU of its own.
    let pvm = await launch('lpin', 1024, false);
    live.push(pvm);
    let pcpu = 0;
    await pinAll(pvm, [pcpu]);
    await bvm.waitSerial(/tick 2 /, 120_000);
    await pvm.waitSerial(/tick 2 /, 120_000);
    const cli: number[] = [];
    const phase: number[] = [];
    const downtimes: number[] = [];
    const bareFull: number[] = [];
    const bareQuit: number[] = [];
    const bareSpawn: number[] = [];
    const pinFull: number[] = [];
    const pinQuit: number[] = [];
    const cliStart: number[] = [];
    const qemuTotal: number[] = [];
    const bareQemuTotal: number[] = [];
    const pinQemuTotal: number[] = [];
    const cliEnd: number[] = [];
    const steps = new Map<string, number[]>();
    for (let r = 0; r < ROUNDS; r++) {
      const e0 = Date.now();
      const t0 = performance.now();
      const out = await env.cli(['migrate', name, '--json']);
      const cliMs = performance.now() - t0;
      cli.push(cliMs);
      const last = JSON.parse(out.stdout.trim().split('\n').at(-1)!) as { elapsedMs: number; downtimeMs?: number; totalTimeMs?: number };
      phase.push(last.elapsedMs);
      qemuTotal.push(last.totalTimeMs ?? NaN);
      if (last.downtimeMs !== undefined) downtimes.push(last.downtimeMs);
      const rec = await callControl<LocalMigrationRecord>(path.join(env.runDir, 'agent.sock'), 'GET', `/pods/${encodeURIComponent(name)}/migration`);
      // The agent's clock and ours are the same host clock: the record's start splits CLI start-up from the agent's work.
      const startOffset = Date.parse(rec.startedAt) - e0;
      cliStart.push(startOffset);
      const lastStep = rec.steps?.at(-1)?.ms ?? 0;
      cliEnd.push(cliMs - startOffset - lastStep);
      for (const s of rec.steps ?? []) steps.set(s.step, [...(steps.get(s.step) ?? []), startOffset + s.ms]);
      name = /now runs in pod (\S+)/.exec(out.stderr)![1]!;
      const t1 = performance.now();
      const dst = await launch('lbare', 1024, true);
      live.push(dst);
      bareSpawn.push(performance.now() - t1);
      bareQemuTotal.push((await bareMigration(bvm, dst, nextPort())).qemuTotalMs ?? NaN);
      bareFull.push(performance.now() - t1);
      await bvm.qmp.execute('quit').catch(() => undefined);
      await bvm.exited;
      bareQuit.push(performance.now() - t1);
      await bvm.kill();
      live.splice(live.indexOf(bvm), 1);
      bvm = dst;

      const t2 = performance.now();
      const pdst = await launch('lpin', 1024, true);
      live.push(pdst);
      await pinAll(pdst, [1 - pcpu]);
      pinQemuTotal.push((await bareMigration(pvm, pdst, nextPort())).qemuTotalMs ?? NaN);
      pinFull.push(performance.now() - t2);
      await pvm.qmp.execute('quit').catch(() => undefined);
      await pvm.exited;
      pinQuit.push(performance.now() - t2);
      await pvm.kill();
      live.splice(live.indexOf(pvm), 1);
      pvm = pdst;
      pcpu = 1 - pcpu;
    }
    const goal = (x: number) => (x <= 1.1 ? 'goal ≤ 1.1: met' : 'goal ≤ 1.1: MISSED');
    const agentMs = cli.map((c, i) => c - cliStart[i]! - cliEnd[i]!);
    rows.push([`podvirt migrate (local mode, CLI wall, ${env.useDist ? 'dist/' : 'sources via tsx'}), 1 GiB + NIC`, `${median(cli).toFixed(0)} ms`, 'target pod created, migrated, source pod removed']);
    rows.push(['  of which the agent (request received → result)', `${median(agentMs).toFixed(0)} ms`, 'the rest is the CLI process starting, and exiting']);
    rows.push(['  of which the migration itself (SourceSide run)', `${median(phase).toFixed(0)} ms`, `QEMU: total-time ${median(qemuTotal)} ms, downtime ${median(downtimes)} ms`]);
    rows.push(['bare A (unpinned): spawn target QEMU + migrate, 1 GiB', `${median(bareFull).toFixed(0)} ms`, `until the guest runs on the target (RESUME); spawn → QMP ready ${median(bareSpawn).toFixed(0)} ms`]);
    rows.push(['bare A (unpinned): … + quit source', `${median(bareQuit).toFixed(0)} ms`, 'the same job including the source going away']);
    rows.push(['bare B (placed like podvirt): spawn + migrate', `${median(pinFull).toFixed(0)} ms`, 'each QEMU (all its threads) on one CPU of its own, as the pods are']);
    rows.push(['bare B (placed like podvirt): … + quit source', `${median(pinQuit).toFixed(0)} ms`, '']);
    rows.push(['QEMU total-time of the migration: bare A / bare B / podvirt', `${median(bareQemuTotal)} / ${median(pinQemuTotal)} / ${median(qemuTotal)} ms`, 'setup → completed, as QEMU measured it on the source']);
    rows.push(['per round (ms): podvirt CLI', cli.map((x) => x.toFixed(0)).join(' '), `bare A ${bareFull.map((x) => x.toFixed(0)).join(' ')}; bare B ${pinFull.map((x) => x.toFixed(0)).join(' ')}`]);
    for (const [label, base] of [
      ['A', bareFull],
      ['A + quit', bareQuit],
      ['B', pinFull],
      ['B + quit', pinQuit],
    ] as const) {
      const r = median(cli) / median(base);
      rows.push([`  ratio podvirt migrate (CLI) / bare ${label}`, r.toFixed(2), goal(r)]);
    }
    const ra = median(agentMs) / median(pinQuit);
    rows.push(['  ratio agent part / bare B + quit', ra.toFixed(2), `${goal(ra)} (no process start on either side)`]);
    breakdown.push(['CLI start-up (process start → agent received the request)', `${median(cliStart).toFixed(0)} ms`, `${median(cliStart).toFixed(0)} ms`, '']);
    const ordered = [...steps.entries()].map(([k, v]) => [k, median(v)] as const).sort((a, b) => a[1] - b[1]);
    let prev = median(cliStart);
    for (const [k, at] of ordered) {
      breakdown.push([k, `${at.toFixed(0)} ms`, `${(at - prev).toFixed(0)} ms`, steps.get(k)!.length < ROUNDS ? `(${steps.get(k)!.length} of ${ROUNDS} rounds)` : '']);
      prev = at;
    }
    breakdown.push(['CLI sees the result and exits', `${median(cli).toFixed(0)} ms`, `${median(cliEnd).toFixed(0)} ms`, '']);
  } finally {
    await env.dispose().catch((e: unknown) => process.stderr.write(`local env clean-up: ${(e as Error).message}\n`));
    await execFile('ip', ['link', 'del', process.env.PODVIRT_MIGRATION_BRIDGE!]).catch(() => undefined);
  }
}

process.on('unhandledRejection', (e) => {
  process.stderr.write(`unhandled rejection: ${(e as Error)?.stack ?? String(e)}\n`);
});
await main();
