import { parse } from 'yaml';
import { Unimplemented } from '../../lib/errors.js';
import type { Logger } from '../../lib/log.js';
import { parseBytes } from './quantity.js';
import type { VmBackend } from './backends.js';
import type { LocalPaths } from './paths.js';

/** The pod-level shape of a VM spec (CPUs to carve, memory to limit, devices implied). */
export function vmShape(text: string): { cpus: number; memoryBytes: number; extraCpus: number; wantsTun: boolean; wantsKvm: boolean } {
  const s = parse(text) as { cpus?: number; memory?: string; accel?: string; interfaces?: unknown[]; isolateEmulatorThread?: boolean };
  return {
    cpus: s.cpus ?? 1,
    memoryBytes: parseBytes(s.memory ?? '128Mi', 'memory'),
    extraCpus: s.isolateEmulatorThread ? 1 : 0,
    wantsTun: (s.interfaces?.length ?? 0) > 0,
    wantsKvm: s.accel === 'kvm',
  };
}

/** VMs through agent core's VmController (agent/vm), wired in once it lands. */
export async function createVmBackend(o: { paths: LocalPaths; log: Logger }): Promise<VmBackend> {
  void o;
  throw new Unimplemented('the VM controller (agent/vm) is not in this build yet');
}
