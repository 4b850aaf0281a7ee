import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { sleep, waitFor } from '../lib/backoff.js';
import { Unavailable, errorMessage, sysErrorCode } from '../lib/errors.js';
import type { Host } from './host.js';
import { qmpRun } from './qmp.js';
import { QSD_DISK_NODE, qsdArgv } from './plan.js';
import type { QsdCgroup } from './qsd-cgroup.js';

/**
 * The qemu-storage-daemon serving one staged volume. It must outlive the driver, and the agent
 * container the driver runs in, because a VM may be using the volume: it daemonizes (own
 * session, so no signal to the agent's process group reaches it), its launcher runs in a session
 * of its own with stdio to `qsd.log`, and it joins the podvirt-owned cgroup (qsd-cgroup.ts)
 * before it starts, out of the container's cgroup that a container stop kills. A restarted
 * driver finds it again through the pid file and QMP socket in the volume's run dir.
 */
export class VolumeDaemon {
  readonly exportFile: string;
  readonly qmpSocket: string;
  readonly pidFile: string;
  readonly logFile: string;

  constructor(
    readonly runDir: string,
    private readonly host: Host,
    private readonly cacheDirect: boolean,
    private readonly cgroup?: QsdCgroup,
  ) {
    this.exportFile = path.join(runDir, 'disk');
    this.qmpSocket = path.join(runDir, 'qmp.sock');
    this.pidFile = path.join(runDir, 'qsd.pid');
    this.logFile = path.join(runDir, 'qsd.log');
    if (Buffer.byteLength(this.qmpSocket) > 107) throw new Unavailable(`QMP socket path ${this.qmpSocket} is too long for a unix socket; use a shorter --state-dir`);
  }

  /** The daemon's pid from its pid file, if that pid is really this volume's daemon (pids get reused). */
  async pid(): Promise<number | undefined> {
    let pid: number;
    try {
      pid = Number((await fs.readFile(this.pidFile, 'utf8')).trim());
    } catch (e) {
      if (sysErrorCode(e) === 'ENOENT') return undefined;
      throw e;
    }
    if (!Number.isInteger(pid) || pid <= 0) return undefined;
    const cmd = (await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0');
    return path.basename(cmd[0] ?? '') === 'qemu-storage-daemon' && cmd[cmd.indexOf('--pidfile') + 1] === this.pidFile ? pid : undefined;
  }

  /**
   * Takes over a daemon an earlier driver started (restart, or a new agent container): it is
   * this volume's daemon (command line), it answers QMP, and it sits in the daemons' cgroup
   * (moved there when an older driver left it elsewhere). Undefined when adopted, else why not.
   */
  async adopt(): Promise<string | undefined> {
    const problem = await this.healthy();
    if (problem) return problem;
    const pid = await this.pid();
    if (pid !== undefined && this.cgroup && !(await this.cgroup.holds(pid))) await this.cgroup.enrol(pid);
    return undefined;
  }

  async exportMounted(): Promise<boolean> {
    return (await this.host.mounts()).get(this.exportFile)?.fstype.startsWith('fuse') ?? false;
  }

  /** Starts the daemon on `headFile`; resolves once the FUSE export is ready (QSD writes the pid file then). */
  async start(headFile: string): Promise<void> {
    await fs.mkdir(this.runDir, { recursive: true });
    if (await this.exportMounted()) await this.host.umount(this.exportFile, true);
    await fs.rm(this.qmpSocket, { force: true });
    await fs.rm(this.pidFile, { force: true });
    await fs.writeFile(this.exportFile, '', { flag: 'a' });
    const argv = [
      ...(this.cgroup ? await this.cgroup.launcher() : []),
      'qemu-storage-daemon',
      ...qsdArgv({ headFile, exportFile: this.exportFile, qmpSocket: this.qmpSocket, pidFile: this.pidFile, cacheDirect: this.cacheDirect }),
    ];
    // With --daemonize the foreground process exits once the export is up (0) or failed (non-zero).
    const log = await fs.open(this.logFile, 'a', 0o640);
    let r: { code: number | null; signal: NodeJS.Signals | null };
    try {
      const child = spawn(argv[0]!, argv.slice(1), { detached: true, stdio: ['ignore', log.fd, log.fd] });
      r = await new Promise((resolve) => {
        const timer = setTimeout(() => {
          child.kill('SIGKILL');
        }, 30_000);
        child.once('error', () => resolve({ code: null, signal: null }));
        child.once('exit', (code, signal) => {
          clearTimeout(timer);
          resolve({ code, signal });
        });
      });
    } finally {
      await log.close();
    }
    if (r.code !== 0) {
      const tail = (await fs.readFile(this.logFile, 'utf8').catch(() => '')).trim().split('\n').slice(-3).join(' | ');
      throw new Unavailable(`qemu-storage-daemon for ${this.runDir} did not start (${r.signal ?? `exit ${r.code}`}): ${tail}`);
    }
  }

  /** Stops the daemon cleanly (QMP quit flushes the image) and removes the run dir. */
  async stop(): Promise<void> {
    const pid = await this.pid();
    if (pid !== undefined) {
      try {
        await qmpRun(this.qmpSocket, [{ execute: 'quit' }], 5000);
      } catch {
        /* the socket closes as the daemon quits, or the daemon is wedged: checked below */
      }
      const gone = await waitFor(async () => ((await this.host.processMatches(pid, this.runDir)) ? undefined : true), { timeoutMs: 10_000 }).catch(() => false);
      if (!gone) {
        process.kill(pid, 'SIGKILL');
        await sleep(100);
      }
    }
    if (await this.exportMounted()) await this.host.umount(this.exportFile, true);
    await fs.rm(this.runDir, { recursive: true, force: true });
  }

  private async activeNode(): Promise<string> {
    const [exports] = (await qmpRun(this.qmpSocket, [{ execute: 'query-block-exports' }])) as [{ 'node-name': string }[]];
    return exports[0]?.['node-name'] ?? QSD_DISK_NODE;
  }

  /**
   * Moves writes to `newHeadFile` (created beforehand on top of the current head): the
   * current head becomes read-only and may serve as a snapshot or clone base at once.
   */
  async switchHead(newHeadFile: string, nodeName: string): Promise<void> {
    const node = await this.activeNode();
    await qmpRun(this.qmpSocket, [
      {
        execute: 'blockdev-snapshot-sync',
        arguments: { 'node-name': node, 'snapshot-file': newHeadFile, 'snapshot-node-name': nodeName, format: 'qcow2', mode: 'existing' },
      },
    ]);
  }

  /** The file the daemon writes to now (for reconciliation after a crash mid-snapshot). */
  async activeFile(): Promise<string> {
    const [nodes] = (await qmpRun(this.qmpSocket, [{ execute: 'query-named-block-nodes', arguments: { flat: true } }])) as [
      { 'node-name': string; file: string; drv: string }[],
    ];
    const node = await this.activeNode();
    return nodes.find((n) => n['node-name'] === node)?.file ?? '';
  }

  /** Grows the image under the running export and waits until the FUSE file shows the size. */
  async resize(size: number): Promise<void> {
    const node = await this.activeNode();
    await qmpRun(this.qmpSocket, [{ execute: 'block_resize', arguments: { 'node-name': node, size } }]);
    // The kernel caches FUSE attributes for a second; the loop device reads the size from them.
    await waitFor(async () => ((await fs.stat(this.exportFile)).size === size ? true : undefined), {
      timeoutMs: 10_000,
      intervalMs: 100,
      what: `${this.exportFile} to show ${size} bytes`,
    });
  }

  async healthy(): Promise<string | undefined> {
    if ((await this.pid()) === undefined) return `qemu-storage-daemon for ${this.runDir} is not running`;
    if (!(await this.exportMounted())) return `FUSE export ${this.exportFile} is not mounted`;
    try {
      await qmpRun(this.qmpSocket, [{ execute: 'query-block-exports' }], 3000);
    } catch (e) {
      return `qemu-storage-daemon does not answer QMP: ${errorMessage(e)}`;
    }
    return undefined;
  }
}
