import { spawn } from 'node:child_process';
import { openSync, closeSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Unavailable, isPodvirtError } from '../../lib/errors.js';
import { sleep } from '../../lib/backoff.js';
import { callControl } from './control.js';
import { agentLog, controlSocket, type LocalPaths } from './paths.js';

/** argv that runs this same build of `podvirt` (sources through tsx in tests, dist/ when built). */
export function selfCommand(): { cmd: string; args: string[]; cwd: string } {
  const here = fileURLToPath(import.meta.url);
  const ts = here.endsWith('.ts');
  const entry = path.resolve(path.dirname(here), '../../bin', ts ? 'podvirt.ts' : 'podvirt.js');
  const root = path.resolve(path.dirname(here), ts ? '../..' : '../../..');
  return { cmd: process.execPath, args: ts ? ['--import', 'tsx', entry] : [entry], cwd: root };
}

export async function agentAlive(p: LocalPaths): Promise<boolean> {
  try {
    await callControl(controlSocket(p), 'GET', '/ping', undefined, 5000);
    return true;
  } catch (e) {
    if (isPodvirtError(e) && e.kind === 'Unavailable') return false;
    throw e;
  }
}

/**
 * Starts `podvirt agent --local` detached (its own session, logs to <run>/agent.log) unless one
 * already answers on the control socket, then waits for it. The daemon outlives `podvirt run`:
 * the CSI driver and the DHCP server a running VM needs live in it.
 */
export async function ensureAgent(p: LocalPaths, timeoutMs = 30_000): Promise<void> {
  if (await agentAlive(p)) return;
  await fs.mkdir(p.runDir, { recursive: true, mode: 0o755 });
  await fs.mkdir(p.stateDir, { recursive: true, mode: 0o700 });
  const self = selfCommand();
  const log = openSync(agentLog(p), 'a');
  try {
    const child = spawn(self.cmd, [...self.args, 'agent', '--local', '--state-dir', p.stateDir, '--run-dir', p.runDir], {
      cwd: self.cwd,
      detached: true,
      stdio: ['ignore', log, log],
      env: process.env,
    });
    child.unref();
    const deadline = Date.now() + timeoutMs;
    let exited: number | null | undefined;
    child.once('exit', (code) => {
      exited = code;
    });
    while (Date.now() < deadline) {
      if (await agentAlive(p)) return;
      // Another `run` may have won the race for the socket: then our child exits and theirs answers.
      if (exited !== undefined && exited !== 0 && !(await agentAlive(p))) {
        throw new Unavailable(`local agent exited with ${exited} on start; see ${agentLog(p)}`);
      }
      await sleep(100);
    }
    throw new Unavailable(`local agent did not come up within ${timeoutMs} ms; see ${agentLog(p)}`);
  } finally {
    closeSync(log);
  }
}
