/**
 * QMP round trip on a live QEMU (q35, TCG, no guest OS), in one run:
 *   - baseline: a raw unix socket writing `{"execute":"query-status"}` and reading one line;
 *   - QmpClient.execute('query-status') (ids, pending map, timeout timer, JSON parse);
 *   - queryCpusFast + NSpid translation + Cpus_allowed_list read (what `status` does per call).
 * Rounds are interleaved so both see the same host load; median, p99, ratio to the baseline.
 *
 *   npx tsx bench/qmp.ts [iterations=2000]
 */
import * as net from 'node:net';
import { QmpClient } from '../agent/qmp/client.js';
import { queryCpusFast, queryStatus } from '../agent/qmp/commands.js';
import { listTasks, mapVcpuTids } from '../agent/pin/threads.js';
import { startBareQemu } from '../test/agent-core/qemu-fixture.js';

const N = Number(process.argv[2] ?? 2000);
const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((xs.length * p) / 100))]!;

/** Minimal QMP over a raw socket: no ids, no timers, newline framing only. */
async function rawSession(sockPath: string) {
  const sock = net.createConnection(sockPath);
  sock.setNoDelay(true);
  let buf = '';
  let waiter: ((line: string) => void) | undefined;
  sock.on('data', (b: Buffer) => {
    buf += b.toString('utf8');
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (line.includes('"event"')) continue;
      const w = waiter;
      waiter = undefined;
      w?.(line);
    }
  });
  let failed: Error | undefined;
  sock.on('error', (e) => (failed = e));
  const next = () => new Promise<string>((r, j) => (failed ? j(failed) : (waiter = r)));
  await Promise.race([next(), new Promise((_, j) => sock.once('error', j))]); // greeting
  const rt = async (cmd: string) => {
    const p = next();
    sock.write(cmd);
    return p;
  };
  await rt('{"execute":"qmp_capabilities"}\n');
  return { rt, close: () => sock.destroy() };
}

async function main(): Promise<void> {
  const vm = await startBareQemu(['-smp', '2']);
  try {
    (await QmpClient.connect(vm.qmpPath)).close(); // waits until QEMU listens
    // QEMU serves one QMP client at a time: the raw session and the client take turns, 200 calls each.
    const raw: number[] = [];
    const client: number[] = [];
    const status: number[] = [];
    const ROUND = 200;
    for (let done = 0; done < N; done += ROUND) {
      const r = await rawSession(vm.qmpPath);
      for (let i = 0; i < ROUND; i++) {
        const t = performance.now();
        await r.rt('{"execute":"query-status"}\n');
        raw.push(performance.now() - t);
      }
      r.close();
      const q = await QmpClient.connect(vm.qmpPath);
      for (let i = 0; i < ROUND; i++) {
        const t = performance.now();
        await queryStatus(q);
        client.push(performance.now() - t);
      }
      for (let i = 0; i < ROUND / 10; i++) {
        const t = performance.now();
        const cpus = await queryCpusFast(q);
        const tasks = await listTasks(vm.pid);
        mapVcpuTids(cpus.map((c) => ({ index: c['cpu-index'], nsTid: c['thread-id'] })), tasks);
        status.push(performance.now() - t);
      }
      q.close();
    }
    const base = pct(raw, 50);
    const rows = [
      ['raw socket query-status (baseline)', raw],
      ['QmpClient query-status', client],
      ['query-cpus-fast + NSpid map + affinity read', status],
    ] as const;
    console.log(`QMP round trip, ${N} iterations per row (q35/TCG, QEMU idle in SeaBIOS)\n`);
    console.log('| operation | n | median ms | p99 ms | median / baseline |');
    console.log('|---|---:|---:|---:|---:|');
    for (const [name, xs] of rows) {
      console.log(`| ${name} | ${xs.length} | ${pct(xs, 50).toFixed(3)} | ${pct(xs, 99).toFixed(3)} | ${(pct(xs, 50) / base).toFixed(2)} |`);
    }
  } finally {
    await vm.dispose();
  }
}

await main();
