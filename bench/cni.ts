/**
 * CNI latency: median ADD+DEL of podvirt-cni (C shim + running CNI server) against Debian's Go
 * `bridge` plugin with host-local on the same subnet, interleaved in one run; plus the
 * standalone Node bundle (the shim's fallback) with the minimal environment a runtime passes,
 * and with NODE_EXTRA_CA_CERTS set as in these machines' shells.
 *
 *   npx tsx bench/cni.ts [iterations=30]
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { invokeCniOrThrow, type InvokeOptions } from '../cni/invoke.js';
import { waitFor } from '../lib/backoff.js';

const N = Number(process.argv[2] ?? 30);
const root = path.join(path.dirname(new URL(import.meta.url).pathname), '..');
const tmp = mkdtempSync(path.join(tmpdir(), 'pvt-cni-bench-'));
const tag = randomBytes(2).toString('hex');
const subnet = '10.239.0.0/16';
const bridge = `pvt-cni-bb${tag}`;
const ns = (k: string) => `pvt-cni-bench-${tag}-${k}`;
const sh = (cmd: string, args: string[]) => execFileSync(cmd, args, { stdio: ['ignore', 'ignore', 'inherit'] });

interface Variant {
  name: string;
  plugin: string;
  type: string;
  extra: Record<string, unknown>;
  env?: Record<string, string>;
  ms: number[];
  add: number[];
  del: number[];
}

async function main(): Promise<void> {
  sh(process.execPath, [path.join(root, 'hack/build-cni.mjs'), path.join(tmp, 'bin')]);
  const socketPath = path.join(tmp, 'cni.sock');
  // The server in its own process, as `podvirt cni-server` (or the agent) runs it.
  const server = spawn(process.execPath, ['--import', 'tsx', path.join(root, 'bin/podvirt.ts'), 'cni-server', '--socket', socketPath], {
    stdio: ['ignore', 'ignore', 'inherit'],
    env: { ...process.env, PODVIRT_LOG_LEVEL: 'warn' },
  });
  await waitFor(() => (existsSync(socketPath) ? true : undefined), { timeoutMs: 30_000, what: 'CNI server socket' });
  const bin = path.join(tmp, 'bin');
  const ipam = { type: 'host-local', dataDir: path.join(tmp, 'ipam'), ranges: [[{ subnet }]] };
  const variants: Variant[] = [
    { name: 'bridge (Go) + host-local', plugin: '/usr/lib/cni/bridge', type: 'bridge', extra: {}, ms: [], add: [], del: [] },
    { name: 'podvirt-cni shim + server', plugin: path.join(bin, 'podvirt'), type: 'podvirt', extra: { agentSocket: socketPath }, ms: [], add: [], del: [] },
    { name: 'podvirt-cni bundle, minimal env', plugin: path.join(bin, 'podvirt-cni.cjs'), type: 'podvirt', extra: {}, ms: [], add: [], del: [] },
  ];
  if (process.env.NODE_EXTRA_CA_CERTS) {
    variants.push({
      name: 'podvirt-cni bundle, NODE_EXTRA_CA_CERTS set',
      plugin: path.join(bin, 'podvirt-cni.cjs'),
      type: 'podvirt',
      extra: {},
      env: { NODE_EXTRA_CA_CERTS: process.env.NODE_EXTRA_CA_CERTS },
      ms: [],
      add: [],
      del: [],
    });
  }
  const made: string[] = [];
  try {
    for (const [i] of variants.entries()) {
      sh('ip', ['netns', 'add', ns(String(i))]);
      made.push(ns(String(i)));
    }
    for (let it = -2; it < N; it++) {
      // Rotate who goes first: each variant sees the same share of "right after X" conditions.
      for (let k = 0; k < variants.length; k++) {
        const i = (k + it + 2) % variants.length;
        const v = variants[i] as Variant;
        const base: InvokeOptions = {
          plugin: v.plugin,
          command: 'ADD',
          config: { cniVersion: '1.0.0', name: 'pvt-cni-bench', type: v.type, bridge, ipam, ...v.extra },
          containerId: `bench-${i}-${it + 2}`,
          netns: `/run/netns/${ns(String(i))}`,
          ifname: 'net1',
          path: [bin, '/usr/lib/cni'],
          ...(v.env ? { env: v.env } : {}),
        };
        const t0 = process.hrtime.bigint();
        await invokeCniOrThrow(base);
        const t1 = process.hrtime.bigint();
        await invokeCniOrThrow({ ...base, command: 'DEL' });
        const t2 = process.hrtime.bigint();
        if (it >= 0) {
          // two warm-up rounds first
          v.ms.push(Number(t2 - t0) / 1e6);
          v.add.push(Number(t1 - t0) / 1e6);
          v.del.push(Number(t2 - t1) / 1e6);
        }
      }
    }
  } finally {
    for (const n of made) sh('ip', ['netns', 'del', n]);
    try {
      sh('ip', ['link', 'del', bridge]);
    } catch {
      /* never created */
    }
    server.kill('SIGTERM');
    rmSync(tmp, { recursive: true, force: true });
  }
  const median = (xs: number[]) => {
    const s = [...xs].sort((a, b) => a - b);
    const m = s.length >> 1;
    return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
  };
  const baseline = median(variants[0]?.ms ?? []);
  const rows = variants.map((v) => [
    v.name,
    median(v.add).toFixed(1),
    median(v.del).toFixed(1),
    median(v.ms).toFixed(1),
    Math.min(...v.ms).toFixed(1),
    (median(v.ms) / baseline).toFixed(2),
  ]);
  const header = ['variant', 'ADD median ms', 'DEL median ms', 'ADD+DEL median ms', 'ADD+DEL min ms', 'ratio'];
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => (r[c] as string).length)));
  const line = (r: string[]) => '| ' + r.map((x, c) => x.padEnd(widths[c] as number)).join(' | ') + ' |';
  console.log(`CNI ADD+DEL latency, ${N} iterations each, interleaved, same subnet ${subnet}`);
  console.log(line(header));
  console.log('|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|');
  for (const r of rows) console.log(line(r));
  console.log(`goal: podvirt-cni shim + server ratio <= 1.0 -> ${((median(variants[1]?.ms ?? []) / baseline) <= 1 ? 'met' : 'NOT met')}`);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
