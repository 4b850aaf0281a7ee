/**
 * Device plugin latencies against the kubelet emulator (real UDS gRPC, fake /dev in a temp dir):
 *  - device node removed / created -> the ListAndWatch snapshot showing Unhealthy / Healthy (goal <= 200 ms)
 *  - kubelet restart (sockets removed, kubelet.sock re-created) -> every resource re-registered and
 *    streaming again (goal <= 1 s)
 * Baselines in the same process: a bare fs.watch event for the same file operation, and one
 * Register round trip to an already running kubelet. Run: npx tsx bench/device-plugin.ts [runs]
 */
import { watch, writeFileSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { silentLogger } from '../lib/log.js';
import { startDevicePlugin } from '../plugins/device-plugin.js';
import { KubeletDeviceManager } from '../plugins/kubelet-side.js';
import { PluginServer } from '../plugins/plugin-server.js';
import { registerWithKubelet } from '../plugins/registration.js';
import { FakeHost } from '../test/device-plugin/fake-host.js';

const RUNS = Number(process.argv[2] ?? 15);
const KVM = 'devices.kubevirt.io/kvm';
const RESOURCES = ['kvm', 'tun', 'vhost-net', 'vhost-vsock'].map((n) => `devices.kubevirt.io/${n}`);

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const p90 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.ceil(xs.length * 0.9) - 1)]!;
const now = () => performance.now();

async function watchBaseline(host: FakeHost): Promise<number[]> {
  const out: number[] = [];
  const file = path.join(host.dev, 'bench-node');
  for (let i = 0; i < RUNS; i++) {
    const w = watch(host.dev, { persistent: false });
    const seen = new Promise<void>((resolve) => w.on('change', (_t, n) => String(n) === 'bench-node' && resolve()));
    const t0 = now();
    if (i % 2) rmSync(file, { force: true });
    else writeFileSync(file, '');
    await seen;
    out.push(now() - t0);
    w.close();
  }
  rmSync(file, { force: true });
  return out;
}

async function registerBaseline(host: FakeHost, kubelet: KubeletDeviceManager): Promise<number[]> {
  const s = new PluginServer(
    host.kubeletDir,
    { resourceName: 'bench.example.com/x', kind: 'device-node', socketName: 'bench.sock', devices: [{ id: 'x0', healthy: true }], hostPath: '/dev/x', node: 'kvm' },
    silentLogger,
  );
  await s.start();
  const out: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const t0 = now();
    await registerWithKubelet(kubelet.socketPath, { endpoint: 'bench.sock', resourceName: 'bench.example.com/x', options: s.options() });
    await kubelet.waitForResource('bench.example.com/x', (r) => r.registrations === i + 1 && r.healthy.length === 1, 5000);
    out.push(now() - t0);
  }
  await s.stop();
  return out;
}

async function main(): Promise<void> {
  const host = new FakeHost('pvt-dpb-');
  const kubelet = new KubeletDeviceManager({ dir: host.kubeletDir });
  await kubelet.start();
  host.addStandardDeviceNodes();
  const rows: Array<[string, string, number[], number[]]> = [];
  try {
    const watchBase = await watchBaseline(host);
    const regBase = await registerBaseline(host, kubelet);

    const dp = await startDevicePlugin({ kubeletDir: host.kubeletDir, devRoot: host.dev, sysRoot: host.sys, cdiDir: host.cdiDir, logger: silentLogger, resyncMs: 0 });
    try {
      for (const r of RESOURCES) await kubelet.waitForResource(r, (x) => x.healthy.length === 1000, 10_000);
      const down: number[] = [];
      const up: number[] = [];
      for (let i = 0; i < RUNS; i++) {
        let t0 = now();
        host.removeNode('kvm');
        await kubelet.waitForResource(KVM, (x) => x.healthy.length === 0, 5000);
        down.push(now() - t0);
        t0 = now();
        host.addNode('kvm');
        await kubelet.waitForResource(KVM, (x) => x.healthy.length === 1000, 5000);
        up.push(now() - t0);
      }
      rows.push(['node removed -> Unhealthy in ListAndWatch', '<= 200 ms', down, watchBase]);
      rows.push(['node created -> Healthy in ListAndWatch', '<= 200 ms', up, watchBase]);

      const rereg: number[] = [];
      for (let i = 0; i < RUNS; i++) {
        const before = new Map(RESOURCES.map((r) => [r, kubelet.resource(r)!.registrations]));
        await kubelet.stop();
        await kubelet.removePluginSockets();
        const t0 = now();
        await kubelet.start(); // kubelet.sock re-created
        for (const r of RESOURCES) {
          await kubelet.waitForResource(r, (x) => x.registrations > before.get(r)! && x.healthy.length === 1000, 5000);
        }
        rereg.push(now() - t0);
      }
      rows.push([`kubelet.sock re-created -> ${RESOURCES.length} resources re-registered`, '<= 1000 ms', rereg, regBase]);
    } finally {
      await dp.stop();
    }
  } finally {
    await kubelet.stop();
    host.cleanup();
  }

  const f = (x: number) => x.toFixed(1);
  const header = ['measurement', 'goal', 'median ms', 'p90 ms', 'max ms', 'baseline median ms', 'ratio'];
  const body = rows.map(([name, goal, xs, base]) => [name, goal, f(median(xs)), f(p90(xs)), f(Math.max(...xs)), f(median(base)), `${(median(xs) / median(base)).toFixed(1)}x`]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((r) => r[i]!.length)));
  const line = (r: string[]) => `| ${r.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`;
  console.log(`device plugin, ${RUNS} runs each (baselines: bare fs.watch event; one Register round trip + first snapshot)`);
  console.log(line(header));
  console.log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`);
  for (const r of body) console.log(line(r));
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
