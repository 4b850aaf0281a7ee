import { strict as assert } from 'node:assert';
import { promises as fs, existsSync } from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { exec, execText, type ExecResult } from '../../lib/exec.js';
import { sleep } from '../../lib/backoff.js';
import { PROJECT_ROOT } from '../../lib/project-root.js';
import { typeLine } from '../helpers/serial.js';

export const GUEST_DIR = path.join(PROJECT_ROOT, '.cache', 'guest');
export const GUEST_KERNEL = path.join(GUEST_DIR, 'vmlinuz');
export const GUEST_INITRD = path.join(GUEST_DIR, 'initramfs.cpio.gz');

export interface PodOptions {
  name: string;
  cpus?: number;
  memory?: string;
  /** Extra lines of the VM spec (YAML, already indented by 6 spaces is not needed: given raw). */
  spec?: Record<string, unknown>;
  /** Block claims: name → size. */
  blockClaims?: Record<string, string>;
  network?: boolean;
  cmdline?: string;
}

/**
 * One isolated local-mode installation per test file: temp state/run dirs, a unique bridge, subnet,
 * cgroup parent and netns prefix, driven through the real `podvirt` CLI (which starts the real
 * agent daemon). `dispose()` stops everything and asserts nothing is left behind.
 */
export class LocalEnv {
  readonly tag = randomBytes(3).toString('hex');
  readonly bridge = `pvtlb${this.tag}`;
  readonly subnet = `10.216.${parseInt(this.tag.slice(0, 2), 16)}`;
  readonly cgroupParent = `pvtl-${this.tag}`;
  readonly netnsPrefix = `pvtl${this.tag}-`;
  dir = '';
  /** Drive the built CLI (dist/) instead of the sources (benchmarks measure the shipped build). */
  useDist = false;
  stateDir = '';
  runDir = '';

  async init(): Promise<void> {
    this.dir = await fs.mkdtemp('/tmp/pvtl-');
    await fs.chmod(this.dir, 0o755);
    this.stateDir = path.join(this.dir, 's');
    this.runDir = path.join(this.dir, 'r');
  }

  get env(): NodeJS.ProcessEnv {
    return {
      ...process.env,
      PODVIRT_STATE_DIR: this.stateDir,
      PODVIRT_RUN_DIR: this.runDir,
      PODVIRT_RESERVED_CPUS: '',
      PODVIRT_CGROUP_PARENT: this.cgroupParent,
      PODVIRT_NETNS_PREFIX: this.netnsPrefix,
      PODVIRT_LOG_LEVEL: 'info',
    };
  }

  /** Runs `podvirt ARGS` from sources; throws on a non-zero exit unless allowFailure. */
  async cli(args: string[], opts: { allowFailure?: boolean; input?: string; timeoutMs?: number } = {}): Promise<ExecResult> {
    const entry = this.useDist ? [path.join(PROJECT_ROOT, 'dist/bin/podvirt.js')] : ['--import', 'tsx', path.join(PROJECT_ROOT, 'bin/podvirt.ts')];
    return exec(process.execPath, [...entry, ...args], {
      env: this.env,
      cwd: PROJECT_ROOT,
      allowFailure: opts.allowFailure ?? false,
      timeoutMs: opts.timeoutMs ?? 240_000,
      ...(opts.input !== undefined ? { input: opts.input } : {}),
    });
  }

  async status(name: string): Promise<Status> {
    return JSON.parse((await this.cli(['status', name, '--json'])).stdout) as Status;
  }

  manifest(o: PodOptions): string {
    const claims = Object.entries(o.blockClaims ?? {});
    const spec: Record<string, unknown> = {
      cpus: o.cpus ?? 1,
      memory: o.memory ?? '128Mi',
      accel: 'tcg',
      kernel: GUEST_KERNEL,
      initrd: GUEST_INITRD,
      cmdline: o.cmdline ?? 'console=ttyS0 quiet panic=-1',
      disks: claims.map(([c]) => ({ name: c, volume: c })),
      interfaces: o.network === false ? [] : [{ name: 'net0', network: 'pvtlnet' }],
      ...o.spec,
    };
    const docs: unknown[] = claims.map(([c, size]) => ({
      apiVersion: 'v1',
      kind: 'PersistentVolumeClaim',
      metadata: { name: `${o.name}-${c}` },
      spec: { volumeMode: 'Block', accessModes: ['ReadWriteOnce'], resources: { requests: { storage: size } } },
    }));
    if (o.network !== false) {
      docs.push({
        apiVersion: 'k8s.cni.cncf.io/v1',
        kind: 'NetworkAttachmentDefinition',
        metadata: { name: 'pvtlnet' },
        spec: {
          config: JSON.stringify({
            cniVersion: '1.0.0',
            type: 'podvirt',
            bridge: this.bridge,
            ipam: { type: 'host-local', ranges: [[{ subnet: `${this.subnet}.0/24`, gateway: `${this.subnet}.1` }]] },
          }),
        },
      });
    }
    docs.push({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: {
        name: o.name,
        annotations: {
          'vm.podvirt.io/spec': JSON.stringify(spec),
          ...(o.network !== false ? { 'k8s.v1.cni.cncf.io/networks': 'pvtlnet' } : {}),
        },
      },
      spec: {
        containers: [{ name: 'compute', image: 'podvirt-launcher', volumeDevices: claims.map(([c]) => ({ name: c, devicePath: `/dev/${c}` })) }],
        volumes: claims.map(([c]) => ({ name: c, persistentVolumeClaim: { claimName: `${o.name}-${c}` } })),
      },
    });
    return docs.map((d) => JSON.stringify(d)).join('\n---\n');
  }

  async run(o: PodOptions): Promise<Status> {
    const file = path.join(this.dir, `${o.name}.yaml`);
    await fs.writeFile(file, this.manifest(o));
    await this.cli(['run', file]);
    return this.status(o.name);
  }

  /** Waits for a line of the serial log matching `re` (after `from` bytes), returning the match. */
  async waitSerial(log: string, re: RegExp, timeoutMs = 90_000, from = 0): Promise<RegExpMatchArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const text = existsSync(log) ? (await fs.readFile(log, 'utf8')).slice(from) : '';
      const m = text.match(re);
      if (m) return m;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${re} in ${log}; tail: ${text.slice(-600)}`);
      await sleep(250);
    }
  }

  /** Types a line into the guest's serial console. */
  async serialSend(socket: string, line: string): Promise<void> {
    await typeLine(socket, line);
  }

  async logSize(log: string): Promise<number> {
    return existsSync(log) ? (await fs.stat(log)).size : 0;
  }

  /** Stops every pod, the agent, and removes the bridge, cgroup parents and dirs; then checks for leftovers. */
  async dispose(): Promise<void> {
    if (!this.dir) return;
    const ps = await this.cli(['ps', '--json'], { allowFailure: true });
    let names: string[] = [];
    try {
      names = (JSON.parse(ps.stdout) as { name: string }[]).map((p) => p.name);
    } catch {
      /* agent unusable: the leftover checks below will say what is left */
    }
    // What dispose ran, shown with the agent's log when something is left (CI triage).
    const ran: string[] = [`ps (exit ${ps.code}): ${ps.stdout.trim()} ${ps.stderr.trim()}`];
    for (const n of names) {
      const r = await this.cli(['stop', n, '--delete-volumes', '--timeout', '5'], { allowFailure: true });
      ran.push(`stop ${n} (exit ${r.code}): ${r.stdout.trim()} ${r.stderr.trim()}`);
    }
    const problems: string[] = [];
    await this.shutdownAgent().catch((e: Error) => problems.push(e.message));
    await exec('ip', ['link', 'delete', this.bridge], { allowFailure: true });
    for (const root of ['/sys/fs/cgroup/cpuset', '/sys/fs/cgroup/memory', '/sys/fs/cgroup/devices']) {
      await fs.rmdir(path.join(root, this.cgroupParent)).catch(() => undefined);
    }
    const left = [...problems, ...(await this.leftovers())];
    if (left.length) {
      const log = await fs.readFile(path.join(this.runDir, 'agent.log'), 'utf8').catch(() => '(no agent.log)');
      process.stderr.write(`LocalEnv.dispose found leftovers; it ran:\n${ran.join('\n')}\nagent.log (last 16 KiB):\n${log.slice(-16384)}\n`);
    }
    await fs.rm(this.dir, { recursive: true, force: true }).catch(() => undefined);
    assert.deepEqual(left, [], 'nothing left behind');
  }

  async shutdownAgent(): Promise<void> {
    const pidFile = path.join(this.runDir, 'agent.pid');
    const pid = Number((await fs.readFile(pidFile, 'utf8').catch(() => '')).trim());
    if (!(pid > 0)) return;
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      return;
    }
    for (let i = 0; i < 100; i++) {
      try {
        process.kill(pid, 0);
      } catch {
        return;
      }
      await sleep(100);
    }
    throw new Error(`agent ${pid} did not stop`);
  }

  /** Mounts of hotplugged volumes (`hp-*`) still published. */
  async leftoverHotplugMounts(): Promise<number> {
    return (await fs.readFile('/proc/self/mountinfo', 'utf8')).split('\n').filter((l) => l.includes(this.dir) && l.includes('/volumes/hp-')).length;
  }

  /** netns, loop devices, mounts and processes that still refer to this env. */
  async leftovers(): Promise<string[]> {
    const out: string[] = [];
    for (const l of (await execText('ip', ['netns', 'list'])).split('\n')) if (l.startsWith(this.netnsPrefix)) out.push(`netns ${l}`);
    for (const l of (await execText('losetup', ['-a'])).split('\n')) if (l.includes(this.dir)) out.push(`loop ${l}`);
    for (const l of (await fs.readFile('/proc/self/mountinfo', 'utf8')).split('\n')) if (l.includes(this.dir)) out.push(`mount ${l}`);
    for (const p of await fs.readdir('/proc')) {
      if (!/^\d+$/.test(p)) continue;
      const cmd = await fs.readFile(`/proc/${p}/cmdline`, 'utf8').catch(() => '');
      if (cmd.includes(this.dir) && Number(p) !== process.pid) out.push(`process ${p} ${cmd.replace(/\0/g, ' ').slice(0, 120)}`);
    }
    if (existsSync(`/sys/class/net/${this.bridge}`)) out.push(`bridge ${this.bridge}`);
    for (const h of ['cpuset', 'memory', 'devices']) {
      if (existsSync(`/sys/fs/cgroup/${h}/${this.cgroupParent}`)) out.push(`cgroup ${h}/${this.cgroupParent}`);
    }
    return out;
  }
}

export interface Status {
  name: string;
  phase: string;
  qemuPid: number;
  vcpuThreads: { index: number; tid: number; cpus: number[] }[];
  serialLog: string;
  serialSocket: string;
  qmpSocket: string;
  netns: string;
  cgroup: string;
  cpus: number[];
  interfaces: { network: string; ifname: string; mac: string; ip: string; gateway: string; bridge: string }[];
  disks: { volume: string; claim: string; volumeId: string; mode: string; path: string }[];
  topology: unknown;
}

/** `Cpus_allowed_list` of a task. */
export async function allowedCpus(pid: number, tid = pid): Promise<string> {
  const s = await fs.readFile(`/proc/${pid}/task/${tid}/status`, 'utf8');
  return /^Cpus_allowed_list:\s*(\S+)/m.exec(s)?.[1] ?? '';
}
