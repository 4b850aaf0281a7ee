/**
 * CSI driver benchmark: (1) create, snapshot and clone of 1 GiB and 10 GiB volumes through the
 * driver's gRPC socket (goal ≤ 0.2 s and flat in size); (2) sequential O_DIRECT write and read
 * through a published block volume ÷ the same on a raw file on the same disk (goal ≥ 0.9), for
 * the daemon opening its image with and without O_DIRECT. Run: npx tsx bench/csi.ts
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { CsiClient } from '../csi/client.js';
import { startCsiDriver } from '../csi/server.js';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
const IO_MIB = Number(process.env.CSI_BENCH_IO_MIB ?? 1024);
const REPS = 5;

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
async function timed(f: () => Promise<unknown>): Promise<number> {
  const t = process.hrtime.bigint();
  await f();
  return Number(process.hrtime.bigint() - t) / 1e9;
}

/** MB/s of one dd run (O_DIRECT, 1 MiB blocks); dd prints its own rate but we time it ourselves. */
function dd(args: string[], bytes: number): number {
  const t = process.hrtime.bigint();
  execFileSync('dd', [...args, 'bs=1M', `count=${bytes / MiB}`, 'status=none']);
  return bytes / MiB / (Number(process.hrtime.bigint() - t) / 1e9);
}
function dropCaches() {
  execFileSync('sync');
  execFileSync('sh', ['-c', 'echo 3 > /proc/sys/vm/drop_caches']);
}

const root = mkdtempSync('/tmp/pvt-csi-bench-');
const shm = mkdtempSync('/dev/shm/pvt-csi-bench-');

/** A file of random bytes in tmpfs, so the source of every dd costs no disk I/O. */
function randomSource(bytes: number): string {
  const f = path.join(shm, `rand-${bytes}`);
  if (!existsSync(f)) execFileSync('dd', ['if=/dev/urandom', `of=${f}`, 'bs=1M', `count=${bytes / MiB}`, 'status=none']);
  return f;
}
const rows: string[][] = [];
const block = { block: {}, access_mode: { mode: 'SINGLE_NODE_WRITER' as const } };

async function lifecycleBench(c: CsiClient) {
  for (const size of [GiB, 10 * GiB]) {
    const t = { create: [] as number[], snapshot: [] as number[], clone: [] as number[], restore: [] as number[] };
    for (let i = 0; i < REPS; i++) {
      let vol = '';
      let snap = '';
      const extra: string[] = [];
      t.create.push(await timed(async () => {
        vol = (await c.controller.CreateVolume({ name: `b-${size}-${i}`, volume_capabilities: [block], capacity_range: { required_bytes: size } })).volume!.volume_id;
      }));
      t.snapshot.push(await timed(async () => {
        snap = (await c.controller.CreateSnapshot({ name: `bs-${size}-${i}`, source_volume_id: vol })).snapshot!.snapshot_id;
      }));
      t.clone.push(await timed(async () => {
        extra.push((await c.controller.CreateVolume({ name: `bc-${size}-${i}`, volume_capabilities: [block], volume_content_source: { volume: { volume_id: vol } } })).volume!.volume_id);
      }));
      t.restore.push(await timed(async () => {
        extra.push((await c.controller.CreateVolume({ name: `br-${size}-${i}`, volume_capabilities: [block], volume_content_source: { snapshot: { snapshot_id: snap } } })).volume!.volume_id);
      }));
      for (const v of extra) await c.controller.DeleteVolume({ volume_id: v });
      await c.controller.DeleteSnapshot({ snapshot_id: snap });
      await c.controller.DeleteVolume({ volume_id: vol });
    }
    for (const [op, xs] of Object.entries(t)) rows.push([`${op} ${size / GiB} GiB`, `${median(xs).toFixed(3)} s`, `max ${Math.max(...xs).toFixed(3)} s`, '≤ 0.2 s', median(xs) <= 0.2 ? 'met' : 'MISSED']);
  }
}

async function ioBench(c: CsiClient, label: string) {
  const v = (await c.controller.CreateVolume({ name: `io-${label}`, volume_capabilities: [block], capacity_range: { required_bytes: 2 * IO_MIB * MiB } })).volume!.volume_id;
  const staging = path.join(root, `st-${label}`);
  const target = path.join(root, `pub-${label}`, 'dev');
  mkdirSync(staging, { recursive: true });
  mkdirSync(path.dirname(target), { recursive: true });
  await c.node.NodeStageVolume({ volume_id: v, staging_target_path: staging, volume_capability: block });
  await c.node.NodePublishVolume({ volume_id: v, staging_target_path: staging, target_path: target, volume_capability: block });
  const raw = path.join(root, 'raw.img');
  try {
    if (!process.env.CSI_BENCH_IO_ONLY) {
      // Snapshot and clone while the volume is published: the switch happens inside its daemon.
      const snaps: number[] = [];
      for (let i = 0; i < REPS; i++) {
        let id = '';
        snaps.push(await timed(async () => {
          id = (await c.controller.CreateSnapshot({ name: `online-${label}-${i}`, source_volume_id: v })).snapshot!.snapshot_id;
        }));
        await c.controller.DeleteSnapshot({ snapshot_id: id });
      }
      rows.push([`snapshot, volume published (${label})`, `${median(snaps).toFixed(3)} s`, `max ${Math.max(...snaps).toFixed(3)} s`, '≤ 0.2 s', median(snaps) <= 0.2 ? 'met' : 'MISSED']);
    }
    const bytes = IO_MIB * MiB;
    // Random data: the daemons turn zero writes into unallocated clusters, so /dev/zero would flatter them.
    const src = randomSource(bytes);
    // Raw baseline and volume interleaved, best of 2 each, so background load hits both alike.
    const res = { rawW: 0, volW: 0, rawR: 0, volR: 0 };
    for (let i = 0; i < 2; i++) {
      rmSync(raw, { force: true });
      // conv=fsync: a write counts once it is durable (the daemon may buffer in the host page cache).
      res.rawW = Math.max(res.rawW, dd([`if=${src}`, `of=${raw}`, 'oflag=direct', 'conv=notrunc,fsync'], bytes));
      res.volW = Math.max(res.volW, dd([`if=${src}`, `of=${target}`, 'oflag=direct', 'conv=fsync'], bytes));
      dropCaches();
      res.rawR = Math.max(res.rawR, dd([`if=${raw}`, 'of=/dev/null', 'iflag=direct'], bytes));
      res.volR = Math.max(res.volR, dd([`if=${target}`, 'of=/dev/null', 'iflag=direct'], bytes));
    }
    rows.push([`seq write ${IO_MIB} MiB (${label})`, `${res.volW.toFixed(0)} MB/s`, `raw ${res.rawW.toFixed(0)} MB/s`, 'ratio ≥ 0.9', `${(res.volW / res.rawW).toFixed(2)} ${res.volW / res.rawW >= 0.9 ? 'met' : 'MISSED'}`]);
    rows.push([`seq read ${IO_MIB} MiB (${label})`, `${res.volR.toFixed(0)} MB/s`, `raw ${res.rawR.toFixed(0)} MB/s`, 'ratio ≥ 0.9', `${(res.volR / res.rawR).toFixed(2)} ${res.volR / res.rawR >= 0.9 ? 'met' : 'MISSED'}`]);
  } finally {
    rmSync(raw, { force: true });
    await c.node.NodeUnpublishVolume({ volume_id: v, target_path: target });
    await c.node.NodeUnstageVolume({ volume_id: v, staging_target_path: staging });
    await c.controller.DeleteVolume({ volume_id: v });
  }
}

try {
  for (const cacheDirect of [true, false]) {
    const stateDir = path.join(root, `state-${cacheDirect}`);
    const drv = await startCsiDriver({ socketPath: path.join(root, `csi-${cacheDirect}.sock`), nodeId: 'bench', stateDir, cacheDirect });
    const c = new CsiClient(drv.socketPath);
    try {
      if (cacheDirect && !process.env.CSI_BENCH_IO_ONLY) await lifecycleBench(c);
      await ioBench(c, cacheDirect ? 'image O_DIRECT' : 'image buffered');
    } finally {
      c.close();
      await drv.stop();
    }
  }
} finally {
  rmSync(root, { recursive: true, force: true });
  rmSync(shm, { recursive: true, force: true });
}

const head = ['operation', 'result', 'detail / baseline', 'goal', 'verdict'];
const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
const line = (r: string[]) => '| ' + r.map((x, i) => x.padEnd(w[i]!)).join(' | ') + ' |';
console.log([line(head), '|' + w.map((n) => '-'.repeat(n + 2)).join('|') + '|', ...rows.map(line)].join('\n'));
