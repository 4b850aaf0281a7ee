import * as path from 'node:path';
import { InvalidArgument } from '../../lib/errors.js';

/** Where local mode keeps durable state (pods, volumes, topology) and runtime state (sockets, logs). */
export interface LocalPaths {
  stateDir: string;
  runDir: string;
}

export const DEFAULT_STATE_DIR = '/var/lib/podvirt/local';
export const DEFAULT_RUN_DIR = '/run/podvirt';

/** Flags win over the environment (`PODVIRT_STATE_DIR`, `PODVIRT_RUN_DIR`), which wins over the defaults. */
export function localPaths(flags: { 'state-dir'?: string; 'run-dir'?: string }, env: NodeJS.ProcessEnv = process.env): LocalPaths {
  const stateDir = path.resolve(flags['state-dir'] ?? env.PODVIRT_STATE_DIR ?? DEFAULT_STATE_DIR);
  const runDir = path.resolve(flags['run-dir'] ?? env.PODVIRT_RUN_DIR ?? DEFAULT_RUN_DIR);
  // unix socket paths are limited to 107 bytes; the deepest is <run>/<pod>/qmp.sock.
  if (runDir.length > 60) throw new InvalidArgument(`run dir ${runDir} is too long for unix sockets (max 60 characters)`);
  return { stateDir, runDir };
}

export const controlSocket = (p: LocalPaths): string => path.join(p.runDir, 'agent.sock');
export const agentLog = (p: LocalPaths): string => path.join(p.runDir, 'agent.log');
export const podStateDir = (p: LocalPaths, pod: string): string => path.join(p.stateDir, 'pods', pod);
export const podRunDir = (p: LocalPaths, pod: string): string => path.join(p.runDir, pod);

/** Flags every local-mode command accepts. */
export const PATH_FLAGS = {
  'state-dir': { type: 'string' },
  'run-dir': { type: 'string' },
} as const;
