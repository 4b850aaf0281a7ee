import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Context } from 'mocha';
import { Host } from '../../csi/host.js';
import { exec } from '../../lib/exec.js';
import { skipBecause } from '../helpers/skip.js';

/** A consumer that is just exiting keeps a mount busy for a moment; unpublish must ride that out. */
describe('csi host: umount of a mount a dying process still holds', () => {
  let dir = '';
  const host = new Host();
  before(function () {
    if (process.getuid?.() !== 0) skipBecause(this as unknown as Context, 'needs root (mount)');
  });
  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'pvt-csi-busy-'));
    await exec('mount', ['-t', 'tmpfs', 'tmpfs', dir]);
  });
  afterEach(async () => {
    await exec('umount', ['-l', dir], { allowFailure: true });
    await fs.rmdir(dir).catch(() => undefined);
  });

  it('retries "target is busy" until the holder is gone', async () => {
    const holder = spawn('sleep', ['0.3'], { cwd: dir, stdio: 'ignore' });
    const exited = new Promise((r) => holder.once('exit', r));
    await new Promise((r) => holder.once('spawn', r));
    const busy = await exec('umount', [dir], { allowFailure: true });
    assert.match(busy.stderr, /target is busy/, 'the holder really keeps it busy');
    await host.umount(dir);
    await exited;
    assert.equal(await host.isMountpoint(dir), false);
  });

  it('still fails clearly when the holder stays', async () => {
    const holder = spawn('sleep', ['30'], { cwd: dir, stdio: 'ignore' });
    try {
      await new Promise((r) => holder.once('spawn', r));
      await assert.rejects(host.umount(dir), /target is busy/);
      assert.equal(await host.isMountpoint(dir), true, 'nothing was forced');
    } finally {
      holder.kill('SIGKILL');
    }
  });
});
