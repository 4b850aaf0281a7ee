import { promises as fs } from 'node:fs';
import * as net from 'node:net';
import { InvalidArgument, NotFound } from '../../lib/errors.js';
import { parseFlags } from '../../lib/cli-args.js';
import { callControl } from './control.js';
import { ensureAgent, agentAlive } from './spawn-agent.js';
import { PodStore } from './pod-store.js';
import { PATH_FLAGS, controlSocket, localPaths, type LocalPaths } from './paths.js';
import type { PodStatus } from './agent.js';

/** Local-mode commands (cli.md §5): each is a thin client of the local agent's control socket. */

type PsRow = { name: string; phase: string; qemuPid: number | undefined; cpus: number[]; ips: string[]; startedAt: string };

const out = (s: string) => process.stdout.write(s.endsWith('\n') ? s : `${s}\n`);

/** ps/status/stop need the agent only when there is something it could know about. */
async function agentFor(p: LocalPaths): Promise<boolean> {
  if (await agentAlive(p)) return true;
  const store = new PodStore(p);
  if ((await store.runningNames()).length === 0) return false;
  await ensureAgent(p); // re-adopts the running VMs
  return true;
}

export async function runMain(argv: string[]): Promise<number> {
  const { values: f, positionals } = parseFlags(argv, { ...PATH_FLAGS, json: { type: 'boolean' } }, true);
  if (positionals.length !== 1) throw new InvalidArgument('usage: podvirt run FILE [--json] [--state-dir DIR] [--run-dir DIR]');
  const p = localPaths(f);
  const manifest = positionals[0] === '-' ? await readStdin() : await fs.readFile(positionals[0]!, 'utf8');
  await ensureAgent(p);
  const s = await callControl<PodStatus>(controlSocket(p), 'POST', '/pods', { manifest });
  if (f.json) out(JSON.stringify(s, null, 2));
  else {
    out(`pod ${s.name} ${s.phase}: qemu pid ${s.qemuPid ?? '-'}, cpus ${s.cpus.join(',')}, netns ${s.netns}`);
    for (const i of s.interfaces) out(`  ${i.ifname} (${i.network}): mac ${i.mac}${i.ip ? ` ip ${i.ip}` : ''}${i.bridge ? ` bridge ${i.bridge}` : ''}`);
    for (const d of s.disks) out(`  volume ${d.volume} (claim ${d.claim}, ${d.mode}): ${d.path}`);
    out(`  serial log ${s.serialLog ?? '-'}`);
  }
  return 0;
}

export async function psMain(argv: string[]): Promise<number> {
  const { values: f } = parseFlags(argv, { ...PATH_FLAGS, json: { type: 'boolean' } });
  const p = localPaths(f);
  const rows = (await agentFor(p)) ? await callControl<PsRow[]>(controlSocket(p), 'GET', '/pods') : [];
  if (f.json) {
    out(JSON.stringify(rows, null, 2));
    return 0;
  }
  const table = [['NAME', 'PHASE', 'QEMU PID', 'CPUS', 'IP', 'STARTED'], ...rows.map((r) => [r.name, r.phase, String(r.qemuPid ?? '-'), r.cpus.join(','), r.ips.join(',') || '-', r.startedAt])];
  const w = table[0]!.map((_, i) => Math.max(...table.map((row) => row[i]!.length)));
  for (const row of table) out(row.map((c, i) => c.padEnd(w[i]!)).join('  ').trimEnd());
  return 0;
}

export async function statusMain(argv: string[]): Promise<number> {
  const { values: f, positionals } = parseFlags(argv, { ...PATH_FLAGS, json: { type: 'boolean' } }, true);
  if (positionals.length !== 1) throw new InvalidArgument('usage: podvirt status NAME [--json]');
  const p = localPaths(f);
  if (!(await agentFor(p))) throw new NotFound(`no running pod ${positionals[0]}`);
  const s = await callControl<PodStatus>(controlSocket(p), 'GET', `/pods/${encodeURIComponent(positionals[0]!)}`);
  if (f.json) out(JSON.stringify(s, null, 2));
  else {
    out(`${s.name}: ${s.phase}, qemu pid ${s.qemuPid ?? '-'}, cgroup ${s.cgroup}, netns ${s.netns}`);
    for (const t of s.vcpuThreads) out(`  vcpu ${t.index}: tid ${t.tid} on cpus ${t.cpus.join(',')}`);
    for (const i of s.interfaces) out(`  ${i.ifname} (${i.network}): mac ${i.mac}${i.ip ? ` ip ${i.ip}` : ''}`);
    for (const d of s.disks) out(`  volume ${d.volume} (claim ${d.claim}): ${d.path}`);
    out(`  serial log ${s.serialLog ?? '-'}`);
  }
  return 0;
}

export async function stopMain(argv: string[]): Promise<number> {
  const { values: f, positionals } = parseFlags(argv, { ...PATH_FLAGS, 'delete-volumes': { type: 'boolean' }, timeout: { type: 'string' } }, true);
  if (positionals.length !== 1) throw new InvalidArgument('usage: podvirt stop NAME [--delete-volumes] [--timeout SECONDS]');
  const p = localPaths(f);
  const timeoutMs = f.timeout !== undefined ? Number(f.timeout) * 1000 : undefined;
  if (timeoutMs !== undefined && !(timeoutMs >= 0)) throw new InvalidArgument(`--timeout must be a number of seconds, got "${f.timeout}"`);
  await ensureAgent(p);
  const r = await callControl<{ stopped: boolean; deletedVolumes: string[] }>(controlSocket(p), 'POST', `/pods/${encodeURIComponent(positionals[0]!)}/stop`, {
    deleteVolumes: f['delete-volumes'] === true,
    ...(timeoutMs !== undefined ? { timeoutMs } : {}),
  });
  out(`pod ${positionals[0]} ${r.stopped ? 'stopped' : 'was not running; cleaned up'}${r.deletedVolumes.length ? `; deleted volumes ${r.deletedVolumes.join(', ')}` : ''}`);
  return 0;
}

/** Attaches the terminal to the VM's serial console; Ctrl-] detaches. */
export async function consoleMain(argv: string[]): Promise<number> {
  const { values: f, positionals } = parseFlags(argv, { ...PATH_FLAGS }, true);
  if (positionals.length !== 1) throw new InvalidArgument('usage: podvirt console NAME');
  const p = localPaths(f);
  if (!(await agentFor(p))) throw new NotFound(`no running pod ${positionals[0]}`);
  const s = await callControl<PodStatus>(controlSocket(p), 'GET', `/pods/${encodeURIComponent(positionals[0]!)}`);
  if (!s.serialSocket) throw new NotFound(`pod ${s.name} has no serial console socket`);
  const sock = net.connect(s.serialSocket);
  await new Promise<void>((resolve, reject) => {
    sock.once('connect', resolve);
    sock.once('error', reject);
  });
  const tty = process.stdin.isTTY;
  if (tty) {
    process.stderr.write(`connected to ${s.name}'s serial console; Ctrl-] to detach\r\n`);
    process.stdin.setRawMode(true);
  }
  return await new Promise<number>((resolve) => {
    const done = (code: number) => {
      if (tty) process.stdin.setRawMode(false);
      process.stdin.pause();
      sock.destroy();
      resolve(code);
    };
    process.stdin.on('data', (b: Buffer) => {
      if (tty && b.includes(0x1d)) return done(0);
      sock.write(b);
    });
    process.stdin.on('end', () => {
      // Piped input: give the guest a moment to answer the last line before detaching.
      setTimeout(() => done(0), 1000);
    });
    sock.on('data', (b: Buffer) => process.stdout.write(b));
    sock.on('close', () => done(0));
    sock.on('error', () => done(1));
  });
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}
