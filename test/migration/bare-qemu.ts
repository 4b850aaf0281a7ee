import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { PROJECT_ROOT } from '../../lib/project-root.js';
import { QmpClient } from '../../agent/qmp/index.js';
import { typeLine } from '../helpers/serial.js';

/**
 * Bare QEMU processes running the test guest, for driving the migration code without the
 * rest of the stack: the serial console goes to a log file (what the guest printed) and a
 * unix socket (to type into the guest's shell).
 */
export const GUEST_DIR = path.join(PROJECT_ROOT, '.cache', 'guest');
export const guestAvailable = () => existsSync(path.join(GUEST_DIR, 'vmlinuz')) && existsSync(path.join(GUEST_DIR, 'initramfs.cpio.gz'));

export interface BareVmOptions {
  dir: string;
  name: string;
  memMiB?: number;
  incoming?: boolean;
  /** Run inside this named netns (`ip netns exec`). */
  netns?: string;
  /** Raw disk image attached as virtio-blk with block node `disk0`. */
  disk?: string;
  append?: string;
  /** A virtio-net NIC on a tap QEMU opens by name (made by the CNI plugin). */
  nic?: { tap: string; mac: string };
}

export class BareVm {
  private constructor(
    readonly name: string,
    readonly proc: ChildProcess,
    readonly qmp: QmpClient,
    readonly serialLog: string,
    readonly serialSock: string,
    readonly exited: Promise<void>,
    private readonly stderrText: () => string,
  ) {}

  /** What QEMU printed on stderr (its reasons for failing). */
  get stderr(): string {
    return this.stderrText();
  }

  static argv(o: BareVmOptions): string[] {
    const p = (f: string) => path.join(o.dir, `${o.name}.${f}`);
    return [
      '-name', `pvt-mig-${o.name}`,
      '-machine', 'q35', '-accel', 'tcg', '-cpu', 'max', '-smp', '1', '-m', String(o.memMiB ?? 256),
      '-nodefaults', '-display', 'none', '-no-user-config',
      '-kernel', path.join(GUEST_DIR, 'vmlinuz'), '-initrd', path.join(GUEST_DIR, 'initramfs.cpio.gz'),
      '-append', `console=ttyS0 podvirt.nodhcp=1 ${o.append ?? ''}`.trim(),
      '-chardev', `socket,id=ser0,path=${p('serial.sock')},server=on,wait=off,logfile=${p('serial.log')}`,
      '-serial', 'chardev:ser0',
      '-qmp', `unix:${p('qmp')},server=on,wait=off`,
      ...(o.disk
        ? ['-blockdev', `driver=file,filename=${o.disk},node-name=disk0-file,cache.direct=off`, '-blockdev', 'driver=raw,file=disk0-file,node-name=disk0', '-device', 'virtio-blk-pci,drive=disk0,id=vd0']
        : []),
      ...(o.nic ? ['-netdev', `tap,id=n0,ifname=${o.nic.tap},script=no,downscript=no`, '-device', `virtio-net-pci,netdev=n0,mac=${o.nic.mac},id=nic0`] : []),
      ...(o.incoming ? ['-incoming', 'defer'] : []),
    ];
  }

  static async launch(o: BareVmOptions): Promise<BareVm> {
    const argv = BareVm.argv(o);
    const [cmd, args] = o.netns ? ['ip', ['netns', 'exec', o.netns, 'qemu-system-x86_64', ...argv]] : ['qemu-system-x86_64', argv];
    const proc = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    proc.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
    const exited = new Promise<void>((r) => proc.once('exit', () => r()));
    let qmp: QmpClient;
    try {
      qmp = await QmpClient.connect(path.join(o.dir, `${o.name}.qmp`), { connectTimeoutMs: 10_000 });
    } catch (e) {
      proc.kill('SIGKILL');
      throw new Error(`QEMU ${o.name} did not come up: ${(e as Error).message}; stderr: ${stderr}`, { cause: e });
    }
    return new BareVm(o.name, proc, qmp, path.join(o.dir, `${o.name}.serial.log`), path.join(o.dir, `${o.name}.serial.sock`), exited, () => stderr);
  }

  async log(): Promise<string> {
    return fs.readFile(this.serialLog, 'utf8').catch(() => '');
  }

  /** Waits for the serial log to match `re` (in the part after `from` characters). */
  async waitSerial(re: RegExp, timeoutMs = 30_000, from = 0): Promise<RegExpMatchArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = (await this.log()).slice(from).match(re);
      if (m) return m;
      if (Date.now() > deadline) throw new Error(`${this.name}: no ${re} on the serial console within ${timeoutMs} ms; tail: ${(await this.log()).slice(-400)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Types a line into the guest's shell. */
  async type(line: string): Promise<void> {
    await typeLine(this.serialSock, line);
  }

  /** Last `tick N UPTIME` the guest printed. */
  async lastTick(from = 0): Promise<{ n: number; uptime: number } | undefined> {
    const all = [...(await this.log()).slice(from).matchAll(/tick (\d+) (\d+\.\d+)/g)];
    const m = all[all.length - 1];
    return m ? { n: Number(m[1]), uptime: Number(m[2]) } : undefined;
  }

  get running(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  async kill(): Promise<void> {
    this.qmp.close();
    if (this.running) this.proc.kill('SIGKILL');
    await this.exited;
  }
}
