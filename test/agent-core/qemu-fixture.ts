import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/** A kernel-less q35/TCG QEMU (it sits in SeaBIOS): enough for QMP, events, pinning and hotplug. */
export interface BareQemu {
  dir: string;
  qmpPath: string;
  proc: ChildProcess;
  pid: number;
  /** SIGKILLs QEMU (if alive), waits for it, removes the temp dir. */
  dispose(): Promise<void>;
}

export async function startBareQemu(extra: string[] = [], opts: { paused?: boolean } = {}): Promise<BareQemu> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'pvt-core-'));
  const qmpPath = path.join(dir, 'qmp.sock');
  const args = [
    '-machine', 'q35', '-accel', 'tcg', '-nodefaults', '-no-user-config', '-display', 'none', '-m', '64',
    '-global', 'ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off',
    '-qmp', `unix:${qmpPath},server=on,wait=off`,
    ...(opts.paused ? ['-S'] : []),
    ...extra,
  ];
  const proc = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr?.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  const dispose = async () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    await exited;
    await fs.rm(dir, { recursive: true, force: true });
  };
  if (proc.pid === undefined) {
    await dispose();
    throw new Error(`qemu did not start: ${stderr}`);
  }
  return { dir, qmpPath, proc, pid: proc.pid, dispose };
}
