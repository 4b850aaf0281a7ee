import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { errorMessage } from '../../lib/errors.js';
import { launcherCommand, type LaunchSandbox } from './launcher.js';

export interface SpawnedQemu {
  pid: number;
  /** QEMU's stdout/stderr (and the launcher's errors). */
  logFile: string;
  /** Settles when the process exits (only observable while this agent is its parent). */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/**
 * Prepares the run dir (owned by QEMU's uid so it can create its sockets, pid file and serial
 * log) and starts QEMU detached: own process group, stdio to a file, unref'd, so it outlives
 * the agent. `argv` is the full launcher command (see launcher.ts), or built from `qemuArgv`.
 */
export async function spawnQemu(opts: {
  qemuArgv: readonly string[];
  sandbox: LaunchSandbox;
  runDir: string;
  /** Files QEMU must remove before start (stale sockets from a previous run). */
  staleFiles?: string[];
  /** Override the launcher (in-cluster variant). */
  argv?: string[];
  /** Where `qemu.log` goes (default the run dir): the agent opens it, so it may be a host dir QEMU never sees. */
  logDir?: string;
}): Promise<SpawnedQemu> {
  await fs.mkdir(opts.runDir, { recursive: true, mode: 0o750 });
  await fs.chown(opts.runDir, opts.sandbox.uid, opts.sandbox.gid);
  for (const f of opts.staleFiles ?? []) await fs.rm(f, { force: true });
  if (opts.logDir) await fs.mkdir(opts.logDir, { recursive: true, mode: 0o750 });
  const logFile = path.join(opts.logDir ?? opts.runDir, 'qemu.log');
  const log = await fs.open(logFile, 'a', 0o640);
  const argv = opts.argv ?? launcherCommand(opts.qemuArgv, opts.sandbox);
  try {
    const child = spawn(argv[0]!, argv.slice(1), { detached: true, stdio: ['ignore', log.fd, log.fd], env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin' } });
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
      child.once('exit', (code, signal) => resolve({ code, signal }));
      child.once('error', () => resolve({ code: null, signal: null }));
    });
    if (child.pid === undefined) {
      await exited;
      throw new Error(`cannot start ${argv[0]}`);
    }
    child.unref();
    return { pid: child.pid, logFile, exited };
  } finally {
    await log.close();
  }
}

/** Last lines of the QEMU log, for error messages. */
export async function logTail(logFile: string, lines = 5): Promise<string> {
  try {
    return (await fs.readFile(logFile, 'utf8')).trim().split('\n').slice(-lines).join(' | ');
  } catch (e) {
    return `(no log: ${errorMessage(e)})`;
  }
}
