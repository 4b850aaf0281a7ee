/**
 * Local-mode node agent benchmark, in one run on this host:
 *   1. start to guest marker: `podvirt run` (agent already up) → PODVIRT-GUEST-READY on the serial
 *      log, against bare `qemu-system-x86_64` with the same guest, machine, memory and vCPUs,
 *      interleaved so both see the same host load. A pinned VM has only its pod's CPUs, so the
 *      baseline is bare QEMU placed the same way (vCPU and emulator threads pinned to the same CPUs
 *      through QMP before the guest runs) and, for the minimal VMs, started with the very argv the
 *      planner produced (same device model); a hand-written minimal bare QEMU floating over the
 *      host is shown for reference;
 *   2. memory per VM beyond QEMU's own RSS: the agent's RSS growth per VM plus helper processes
 *      started for the VM (qemu-storage-daemon per volume);
 *   3. QMP round trip (`query-status`), and the agent's status round trip over its control socket.
 *
 *   npx tsx bench/agent.ts [rounds=3]
 */
import { spawn, execFileSync } from 'node:child_process';
import { promises as fs, existsSync } from 'node:fs';
import * as path from 'node:path';
import { LocalEnv, GUEST_INITRD, GUEST_KERNEL, type Status } from '../test/agent-local/harness.js';
import { QmpClient } from '../agent/qmp/client.js';
import { applyPins } from '../agent/pin/pinner.js';
import type { PinMap } from '../agent/plan/types.js';
import { callControl } from '../agent/local/control.js';
import { PROJECT_ROOT } from '../lib/project-root.js';
import { sleep } from '../lib/backoff.js';

const ROUNDS = Number(process.argv[2] ?? 3);
const CMDLINE = 'console=ttyS0 quiet panic=-1';
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((xs.length * p) / 100))]!;

async function waitMarker(log: string, t0: number, timeoutMs = 120_000): Promise<number> {
  for (;;) {
    if (existsSync(log) && (await fs.readFile(log, 'utf8')).includes('PODVIRT-GUEST-READY')) return performance.now() - t0;
    if (performance.now() - t0 > timeoutMs) throw new Error(`no marker in ${log}`);
    await sleep(20);
  }
}

/**
 * Bare QEMU. `pins` places it exactly like the local VM: started with -S, vCPU and emulator threads
 * pinned through QMP with the same pinner, then resumed (the same steps the VM controller takes,
 * without the pod machinery around them).
 */
async function bare(dir: string, withDevices: boolean, pins?: PinMap, qmp?: (sock: string) => Promise<void>, planArgv?: { argv: string[]; vmDir: string }): Promise<number> {
  let log = path.join(dir, `bare-${Date.now()}.log`);
  let sock = path.join(dir, 'bare-qmp.sock');
  let args = ['-machine', 'q35', '-accel', 'tcg', '-cpu', 'max', '-m', '128', '-smp', '1', '-nodefaults', '-display', 'none',
    '-kernel', GUEST_KERNEL, '-initrd', GUEST_INITRD, '-append', CMDLINE, '-serial', `file:${log}`, '-qmp', `unix:${sock},server=on,wait=off`];
  if (withDevices) {
    const disk = path.join(dir, 'bare-disk.img');
    if (!existsSync(disk)) execFileSync('qemu-img', ['create', '-f', 'raw', disk, '32M'], { stdio: 'ignore' });
    args.push('-drive', `file=${disk},format=raw,if=none,id=d0`, '-device', 'virtio-blk-pci,drive=d0', '-netdev', 'user,id=n0', '-device', 'virtio-net-pci,netdev=n0');
  }
  if (planArgv) {
    // The planner's own argv (same device model: root ports, NUMA node, pvpanic, sandbox), moved to a bare dir.
    const bareDir = path.join(dir, 'bare-vm');
    await fs.rm(bareDir, { recursive: true, force: true });
    await fs.mkdir(bareDir, { recursive: true });
    args = planArgv.argv.slice(1).map((a) => a.split(planArgv.vmDir).join(bareDir));
    log = path.join(bareDir, 'serial.log');
    sock = path.join(bareDir, 'qmp.sock');
  } else if (pins) args.push('-S');
  const t0 = performance.now();
  const child = spawn('qemu-system-x86_64', args, { stdio: 'ignore' });
  try {
    if (pins) {
      const q = await QmpClient.connect(sock);
      await applyPins(q, child.pid!, pins);
      await q.execute('cont');
      q.close();
    }
    const ms = await waitMarker(log, t0);
    if (qmp) await qmp(sock);
    return ms;
  } finally {
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    await fs.rm(log, { force: true });
  }
}

/** `podvirt run` → marker: the serial log's path is fixed, so it is watched from the moment `run` is typed. */
async function local(env: LocalEnv, name: string, o: { devices: boolean; isolate: boolean }): Promise<{ ms: number; runMs: number; st: Status }> {
  const file = path.join(env.dir, `${name}.yaml`);
  await fs.writeFile(
    file,
    env.manifest({ name, cpus: 1, network: o.devices, blockClaims: o.devices ? { data: '32Mi' } : {}, spec: o.isolate ? { isolateEmulatorThread: true } : {} }),
  );
  const t0 = performance.now();
  const marker = waitMarker(path.join(env.runDir, name, 'vm', 'serial.log'), t0);
  await env.cli(['run', file]);
  const runMs = performance.now() - t0;
  const ms = await marker;
  return { ms, runMs, st: await env.status(name) };
}

async function rssKiB(pid: number): Promise<number> {
  const s = await fs.readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/^VmRSS:\s+(\d+)/m.exec(s)?.[1] ?? 0);
}

async function pidsMatching(needle: string): Promise<number[]> {
  const out: number[] = [];
  for (const p of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    const cmd = await fs.readFile(`/proc/${p}/cmdline`, 'utf8').catch(() => '');
    if (cmd.includes(needle)) out.push(Number(p));
  }
  return out;
}

async function main(): Promise<void> {
  execFileSync(process.execPath, [path.join(PROJECT_ROOT, 'hack/build.mjs')], { stdio: 'inherit' });
  const env = new LocalEnv();
  env.useDist = true;
  await env.init();
  const rows: [string, string, string, string][] = [];
  try {
    // Warm the agent (cold start reported separately).
    const c0 = performance.now();
    await env.cli(['ps']);
    const warm = await env.cli(['run', '-'], { input: env.manifest({ name: 'warm', network: false }) }).then(() => performance.now() - c0);
    await env.cli(['stop', 'warm', '--timeout', '2']);
    const agentPid = Number((await fs.readFile(path.join(env.runDir, 'agent.pid'), 'utf8')).trim());

    const cases = [
      { what: 'minimal VM, 1 exclusive CPU', devices: false, isolate: false },
      { what: 'minimal VM, isolateEmulatorThread (2 CPUs)', devices: false, isolate: true },
      { what: 'VM with CSI disk + CNI NIC (bare: file disk, user NIC), isolateEmulatorThread', devices: true, isolate: true },
    ];
    for (const c of cases) {
      const b: number[] = [];
      const l: number[] = [];
      const ret: number[] = [];
      const u: number[] = [];
      for (let i = 0; i < ROUNDS; i++) {
        const name = `b${cases.indexOf(c)}x${i}`;
        const r = await local(env, name, c);
        const vmArgv = (JSON.parse(await fs.readFile(path.join(env.runDir, name, 'ctl', 'vm.json'), 'utf8')) as { argv: string[] }).argv;
        l.push(r.ms);
        ret.push(r.runMs);
        await env.cli(['stop', name, '--timeout', '1', '--delete-volumes']);
        // The same placement: each vCPU on the CPU the pod's vCPU had, the other threads on the rest.
        const vcpuCpus = r.st.vcpuThreads.map((t) => t.cpus[0]!);
        const rest = r.st.cpus.filter((x) => !vcpuCpus.includes(x));
        const pins: PinMap = {
          vcpus: r.st.vcpuThreads.map((t) => ({ index: t.index, cpu: t.cpus[0]!, node: 0, cell: 0 })),
          emulator: rest.length ? rest : r.st.cpus,
        };
        const planArgv = { argv: vmArgv, vmDir: path.join(env.runDir, name, 'vm') };
        b.push(await bare(env.dir, c.devices, pins, undefined, c.devices ? undefined : planArgv));
        u.push(await bare(env.dir, c.devices));
      }
      rows.push([`start → marker: ${c.what}`, `${(median(l) / 1000).toFixed(2)} s`, `${(median(b) / 1000).toFixed(2)} s`, `${(median(l) / median(b)).toFixed(3)} (goal ≤ 1.05)`]);
      rows.push(['  bare QEMU, minimal argv, unpinned, for reference', '-', `${(median(u) / 1000).toFixed(2)} s`, `${(median(l) / median(u)).toFixed(3)}`]);
      rows.push(['  of which `podvirt run` until it returns (CLI + orchestration + QEMU start + pins)', `${(median(ret) / 1000).toFixed(2)} s`, '-', '-']);
    }

    // Memory: agent RSS idle, then with two VMs (disk + NIC each); helpers = qsd processes of their volumes.
    const idle = await rssKiB(agentPid);
    const vms: Status[] = [];
    for (const n of ['m0', 'm1']) vms.push((await local(env, n, { devices: true, isolate: false })).st);
    await sleep(2000);
    const busy = await rssKiB(agentPid);
    let helpers = 0;
    for (const pid of await pidsMatching(path.join(env.stateDir, 'csi'))) if (!vms.some((v) => v.qemuPid === pid)) helpers += await rssKiB(pid);
    const qemu = median(await Promise.all(vms.map((v) => rssKiB(v.qemuPid))));
    const perVm = (busy - idle) / vms.length + helpers / vms.length;
    rows.push(['agent RSS (idle / with 2 VMs)', `${(idle / 1024).toFixed(1)} / ${(busy / 1024).toFixed(1)} MiB`, '-', '-']);
    rows.push(['memory per VM beyond QEMU RSS (agent growth + helpers)', `${(perVm / 1024).toFixed(1)} MiB`, `QEMU RSS ${(qemu / 1024).toFixed(0)} MiB`, `goal ≤ 10 MiB`]);
    rows.push(['  of which helper processes (qemu-storage-daemon per volume)', `${(helpers / vms.length / 1024).toFixed(1)} MiB`, '-', '-']);

    // QMP round trip (the protocol the VM controller speaks; measured on a bare QEMU, whose monitor is free),
    // and the agent's status round trip (control socket → QMP query-status + query-cpus-fast + pin check).
    const rt: number[] = [];
    await bare(env.dir, false, undefined, async (sock) => {
      const q = await QmpClient.connect(sock);
      for (let i = 0; i < 300; i++) {
        const s0 = performance.now();
        await q.execute('query-status');
        rt.push(performance.now() - s0);
      }
      q.close();
    });
    rows.push(['QMP query-status round trip p50 / p99', `${median(rt).toFixed(2)} / ${pct(rt, 99).toFixed(2)} ms`, '-', '-']);
    const sr: number[] = [];
    for (let i = 0; i < 50; i++) {
      const s0 = performance.now();
      await callControl(path.join(env.runDir, 'agent.sock'), 'GET', `/pods/${vms[0]!.name}`);
      sr.push(performance.now() - s0);
    }
    rows.push(['agent status round trip (control socket) p50 / p99', `${median(sr).toFixed(2)} / ${pct(sr, 99).toFixed(2)} ms`, '-', '-']);
    rows.push(['cold `podvirt run` incl. agent start (minimal VM, to return)', `${(warm / 1000).toFixed(2)} s`, '-', '-']);
  } finally {
    await env.dispose();
  }
  const head: [string, string, string, string] = ['measure', 'local mode', 'bare qemu', 'ratio / note'];
  const w = head.map((_, i) => Math.max(...[head, ...rows].map((r) => r[i]!.length)));
  for (const r of [head, ...rows]) console.log(r.map((c, i) => c.padEnd(w[i]!)).join(' | '));
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
