import { promises as fs } from 'node:fs';
import { exec, execText, ExecError, type Exec } from '../lib/exec.js';
import { errorMessage, sysErrorCode } from '../lib/errors.js';
import { sleep } from '../lib/backoff.js';

/**
 * Thin wrappers over the host tools the node side needs (losetup, mount, mkfs, fs growers).
 * Every call is an argv child process; nothing here decides anything.
 */

export interface LoopInfo {
  name: string;
  backFile: string;
}

export class Host {
  constructor(private readonly run: Exec = exec) {}

  async loops(): Promise<LoopInfo[]> {
    const out = await this.run('losetup', ['--list', '--json', '-O', 'NAME,BACK-FILE']);
    if (!out.stdout.trim()) return [];
    const j = JSON.parse(out.stdout) as { loopdevices?: { name: string; 'back-file': string | null }[] };
    return (j.loopdevices ?? []).map((l) => ({ name: l.name, backFile: (l['back-file'] ?? '').replace(/ \(deleted\)$/, '') }));
  }

  /**
   * Buffered loop (`--direct-io=off`): with direct I/O, loop over the QSD FUSE export returned
   * data other than what was written on this kernel (measured), so it is never used.
   */
  async attachLoop(file: string, readOnly = false): Promise<string> {
    return await execText('losetup', ['--find', '--show', '--direct-io=off', ...(readOnly ? ['--read-only'] : []), file]);
  }

  async detachLoop(dev: string): Promise<void> {
    const r = await this.run('losetup', ['-d', dev], { allowFailure: true });
    if (r.code !== 0 && !/No such device|No such file/.test(r.stderr)) throw new ExecError(['losetup', '-d', dev], r);
  }

  /** Makes the loop device pick up a grown backing file. */
  async refreshLoop(dev: string): Promise<void> {
    await this.run('losetup', ['-c', dev]);
  }

  async blockSize(dev: string): Promise<number> {
    return Number(await execText('blockdev', ['--getsize64', dev]));
  }

  /** Freezes (or thaws) a mounted filesystem so a snapshot sees it consistent. */
  async fsfreeze(mountpoint: string, freeze: boolean): Promise<void> {
    await this.run('fsfreeze', [freeze ? '--freeze' : '--unfreeze', mountpoint]);
  }

  async flushBlock(dev: string): Promise<void> {
    await this.run('blockdev', ['--flushbufs', dev]);
  }

  /** All mounts, keyed by target (the last one wins when mounts are stacked). */
  async mounts(): Promise<Map<string, { source: string; fstype: string; options: string }>> {
    const out = await this.run('findmnt', ['--json', '--list', '-o', 'TARGET,SOURCE,FSTYPE,OPTIONS']);
    const j = JSON.parse(out.stdout) as { filesystems: { target: string; source: string; fstype: string; options: string }[] };
    const m = new Map<string, { source: string; fstype: string; options: string }>();
    for (const f of j.filesystems) m.set(f.target, { source: f.source, fstype: f.fstype, options: f.options });
    return m;
  }

  async isMountpoint(p: string): Promise<boolean> {
    return (await this.mounts()).has(p);
  }

  async mount(source: string, target: string, opts: { fsType?: string; options?: string[]; bind?: boolean }): Promise<void> {
    const args: string[] = [];
    if (opts.bind) args.push('--bind');
    if (opts.fsType) args.push('-t', opts.fsType);
    if (opts.options && opts.options.length > 0) args.push('-o', opts.options.join(','));
    await this.run('mount', [...args, source, target]);
  }

  async remountReadonly(target: string): Promise<void> {
    await this.run('mount', ['-o', 'remount,bind,ro', target]);
  }

  /**
   * Unmounts; "not mounted" is success (idempotent teardown). "target is busy" is retried for a few
   * seconds: a consumer killed just before (QEMU after a stop timeout, seen by the agent when its QMP
   * socket closes) may still be in exit, holding the file or a propagated copy of the mount in its
   * own mount namespace, for some milliseconds after it is reported gone.
   */
  async umount(target: string, lazy = false): Promise<void> {
    for (let delay = 10; ; delay *= 2) {
      const r = await this.run('umount', lazy ? ['-l', target] : [target], { allowFailure: true });
      if (r.code === 0 || /not mounted|no mount point|No such file/.test(r.stderr)) return;
      if (!/target is busy/.test(r.stderr) || delay > 1280) throw new ExecError(['umount', target], r);
      await sleep(delay);
    }
  }

  /** The filesystem on a device, or '' when it holds none. */
  async fsTypeOf(dev: string): Promise<string> {
    const r = await this.run('blkid', ['-p', '-o', 'value', '-s', 'TYPE', dev], { allowFailure: true });
    if (r.code === 2) return '';
    if (r.code !== 0) throw new ExecError(['blkid', dev], r);
    return r.stdout.trim();
  }

  async mkfs(dev: string, fsType: string): Promise<void> {
    // No discard pass: a new volume reads as zeros already, and discarding 10 GiB through FUSE is slow.
    if (fsType === 'xfs') await this.run('mkfs.xfs', ['-q', '-K', dev]);
    else await this.run(`mkfs.${fsType}`, ['-q', '-F', '-E', 'nodiscard', dev]);
  }

  /** Grows an unmounted ext4 to its device (needs a forced check first, as resize2fs demands). */
  async growExt4Offline(dev: string): Promise<void> {
    const r = await this.run('e2fsck', ['-f', '-p', dev], { allowFailure: true });
    // e2fsck: 0 clean, 1 errors corrected; anything else means the FS needs a human.
    if (r.code !== 0 && r.code !== 1) throw new ExecError(['e2fsck', '-f', '-p', dev], r);
    await this.run('resize2fs', [dev]);
  }

  /** Online ext4 grow: needs CAP_SYS_RESOURCE, which some hosts (this CI machine) lack. */
  async growExt4Online(dev: string): Promise<{ ok: true } | { ok: false; why: string }> {
    const r = await this.run('resize2fs', [dev], { allowFailure: true });
    return r.code === 0 ? { ok: true } : { ok: false, why: (r.stderr || r.stdout).trim().split('\n').pop() ?? 'resize2fs failed' };
  }

  async growXfs(mountpoint: string): Promise<void> {
    await this.run('xfs_growfs', [mountpoint]);
  }

  /** Size in bytes of the filesystem mounted at p (statfs). */
  async statfs(p: string): Promise<{ total: number; free: number; avail: number; files: number; ffree: number }> {
    const s = await fs.statfs(p);
    return { total: s.blocks * s.bsize, free: s.bfree * s.bsize, avail: s.bavail * s.bsize, files: s.files, ffree: s.ffree };
  }

  /** Is pid alive and its command line mentions `marker`? (pids get reused) */
  async processMatches(pid: number, marker: string): Promise<boolean> {
    try {
      const cmd = await fs.readFile(`/proc/${pid}/cmdline`, 'utf8');
      return cmd.split('\0').some((a) => a.includes(marker));
    } catch (e) {
      if (sysErrorCode(e) === 'ENOENT') return false;
      throw new Error(`reading /proc/${pid}/cmdline: ${errorMessage(e)}`, { cause: e });
    }
  }

  /** Pids of every running qemu-storage-daemon whose command line mentions `marker`. */
  async daemonsMentioning(marker: string): Promise<number[]> {
    const pids: number[] = [];
    for (const ent of await fs.readdir('/proc')) {
      if (!/^[0-9]+$/.test(ent)) continue;
      try {
        const cmd = (await fs.readFile(`/proc/${ent}/cmdline`, 'utf8')).split('\0');
        if (cmd[0]?.endsWith('qemu-storage-daemon') && cmd.some((a) => a.includes(marker))) pids.push(Number(ent));
      } catch {
        /* exited meanwhile */
      }
    }
    return pids;
  }
}
