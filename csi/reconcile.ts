import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { errorMessage } from '../lib/errors.js';
import type { DriverContext } from './context.js';
import { bringUp, publishTarget, stageProblem, tearDown, unpublishTarget } from './node.js';

/**
 * Start-up reconciliation: make the host match the durable state before the driver reports
 * ready. Staged volumes whose daemon, loop device or mounts are gone (host reboot, killed
 * daemon) are brought back; daemons, loop devices and FUSE exports under our run dir that no
 * staged volume owns are removed; pool files no record reaches are deleted.
 */
export async function reconcile(ctx: DriverContext): Promise<void> {
  await ctx.pool.init();
  await fs.mkdir(ctx.runRoot, { recursive: true });

  for (const st of Object.values(ctx.state.stages)) {
    const vol = ctx.state.volumes[st.volumeId];
    if (!vol) {
      ctx.log.warn({ volume: st.volumeId }, 'stage record without volume: dropping it');
      await tearDown(ctx, { id: st.volumeId }, st, true).catch(() => undefined);
      delete ctx.state.stages[st.volumeId];
      continue;
    }
    // A daemon still running (the driver or its container restarted) is taken over, never started twice.
    const problem = (await ctx.daemonFor(st.volumeId).adopt()) ?? (await stageProblem(ctx, st));
    if (problem === undefined) {
      await finishInterruptedSwitch(ctx, vol.id, vol.head);
      ctx.log.info({ volume: vol.id, loop: st.loopDevice }, 'staged volume adopted');
      continue;
    }
    ctx.log.warn({ volume: vol.id, problem }, 'staged volume is broken: rebuilding it');
    const pubs = Object.values(ctx.state.publishes).filter((p) => p.volumeId === vol.id);
    for (const p of pubs) await unpublishTarget(ctx, p.targetPath, true, p.roLoop).catch(() => undefined);
    await tearDown(ctx, vol, st, true).catch((e: unknown) => ctx.log.warn({ err: errorMessage(e) }, 'teardown of broken volume'));
    try {
      st.loopDevice = await bringUp(ctx, vol, st);
      for (const p of pubs) await publishTarget(ctx, st, p);
    } catch (e) {
      // Keep the records: the volume stays known and reports abnormal until an operator acts.
      ctx.log.error({ volume: vol.id, err: errorMessage(e) }, 'could not rebuild staged volume');
    }
  }

  await removeStrays(ctx);
  await ctx.store.save();
  await ctx.collectGarbage();
  const known = new Set(Object.keys(ctx.state.layers));
  for (const f of await ctx.pool.listFiles()) {
    if (!known.has(f)) {
      ctx.log.warn({ layer: f }, 'removing pool file no record knows (interrupted create)');
      await ctx.pool.remove(f);
    }
  }
}

/** A crash after persisting a snapshot but before the daemon switched: finish the switch. */
async function finishInterruptedSwitch(ctx: DriverContext, volumeId: string, head: string): Promise<void> {
  const daemon = ctx.daemonFor(volumeId);
  const active = await daemon.activeFile();
  const want = ctx.pool.file(head);
  if (active === want || active === '') return;
  const parent = ctx.state.layers[head]?.parent;
  if (parent && active === ctx.pool.file(parent)) {
    ctx.log.warn({ volume: volumeId }, 'finishing a snapshot switch interrupted by a crash');
    await daemon.switchHead(want, `l${head}`);
  } else {
    ctx.log.error({ volume: volumeId, active, want }, 'daemon serves an unexpected image');
  }
}

async function removeStrays(ctx: DriverContext): Promise<void> {
  const owned = new Set(Object.keys(ctx.state.stages).map((id) => ctx.daemonFor(id).runDir));
  const prefix = ctx.runRoot + path.sep;
  const strayDir = (p: string) => p.startsWith(prefix) && !owned.has(path.dirname(p));
  for (const l of await ctx.host.loops()) {
    if (strayDir(l.backFile)) {
      ctx.log.warn({ loop: l.name, file: l.backFile }, 'detaching stray loop device');
      await ctx.host.detachLoop(l.name);
    }
  }
  for (const pid of await ctx.host.daemonsMentioning(prefix)) {
    const cmd = (await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0');
    const pidArg = cmd[cmd.indexOf('--pidfile') + 1] ?? '';
    if (strayDir(pidArg)) {
      ctx.log.warn({ pid }, 'stopping stray qemu-storage-daemon');
      process.kill(pid, 'SIGTERM');
    }
  }
  for (const [target] of await ctx.host.mounts()) {
    if (strayDir(target)) await ctx.host.umount(target, true);
  }
  for (const ent of await fs.readdir(ctx.runRoot)) {
    const dir = path.join(ctx.runRoot, ent);
    if (!owned.has(dir)) await fs.rm(dir, { recursive: true, force: true }).catch(() => undefined);
  }
}
