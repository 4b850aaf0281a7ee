import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { exec } from '../lib/exec.js';
import type { NodeHandlers } from '../proto/gen/csi/v1/csi/v1/Node.js';
import type { AsyncImpl } from './async-impl.js';
import type { VolumeCondition } from '../proto/gen/csi/v1/csi/v1/VolumeCondition.js';
import { AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, errorMessage, sysErrorCode } from '../lib/errors.js';
import type { DriverContext } from './context.js';
import { requireIdent, requirePath } from './ids.js';
import { capabilityMatches, decidePublish, isSupportedMode, parseCapability, resolveCapacity, type FsType } from './plan.js';
import type { PublishRec, StageRec, VolumeRec } from './state.js';

export const NODE_CAPABILITIES = ['STAGE_UNSTAGE_VOLUME', 'GET_VOLUME_STATS', 'EXPAND_VOLUME', 'VOLUME_CONDITION', 'SINGLE_NODE_MULTI_WRITER'] as const;

export type NodeImpl = AsyncImpl<NodeHandlers>;

/**
 * Brings a volume's node side up: daemon, loop device, and for mount access a filesystem on
 * the staging path. Undoes its own steps when one fails, so nothing leaks.
 */
export async function bringUp(ctx: DriverContext, vol: VolumeRec, st: Omit<StageRec, 'loopDevice'>): Promise<string> {
  const daemon = ctx.daemonFor(vol.id);
  await daemon.start(ctx.pool.file(vol.head));
  let loop: string | undefined;
  try {
    loop = await ctx.host.attachLoop(daemon.exportFile);
    if (st.type === 'mount') await mountFilesystem(ctx, loop, st.stagingPath, st.fsType, st.mountFlags);
    return loop;
  } catch (e) {
    if (loop) await ctx.host.detachLoop(loop).catch(() => undefined);
    await daemon.stop().catch(() => undefined);
    throw e;
  }
}

async function ext4Bytes(dev: string): Promise<number> {
  const { stdout } = await exec('dumpe2fs', ['-h', dev]);
  const count = Number(/^Block count:\s+(\d+)/m.exec(stdout)?.[1] ?? '0');
  const size = Number(/^Block size:\s+(\d+)/m.exec(stdout)?.[1] ?? '0');
  return count * size;
}

/** Clones and restores carry their source's XFS UUID; XFS refuses a second mount of one UUID without `nouuid`. */
function mountOptions(fsType: FsType, flags: string[]): string[] {
  return fsType === 'xfs' && !flags.includes('nouuid') ? [...flags, 'nouuid'] : flags;
}

/**
 * Formats a new volume, grows a filesystem that is smaller than its device (an ext4 cannot
 * grow while mounted on hosts without CAP_SYS_RESOURCE, so staging is where it catches up),
 * and mounts it at the staging path.
 */
async function mountFilesystem(ctx: DriverContext, dev: string, stagingPath: string, fsType: FsType, flags: string[]): Promise<void> {
  const found = await ctx.host.fsTypeOf(dev);
  if (found === '') await ctx.host.mkfs(dev, fsType);
  else if (found !== fsType) throw new FailedPrecondition(`volume holds a ${found} filesystem, not ${fsType}`);
  if (fsType === 'ext4' && (await ctx.host.blockSize(dev)) - (await ext4Bytes(dev)) >= 4096 * 16) await ctx.host.growExt4Offline(dev);
  await fs.mkdir(stagingPath, { recursive: true });
  // A mount no record knows (a crash between mounting and saving state) would be stacked under ours.
  while (await ctx.host.isMountpoint(stagingPath)) await ctx.host.umount(stagingPath, true);
  await ctx.host.mount(dev, stagingPath, { fsType, options: mountOptions(fsType, flags) });
  if (fsType === 'xfs') await ctx.host.growXfs(stagingPath);
}

/** Undoes bringUp (tolerates half-done states: every step is idempotent). */
export async function tearDown(ctx: DriverContext, vol: { id: string }, st: StageRec, lazy = false): Promise<void> {
  if (st.type === 'mount' && (await ctx.host.isMountpoint(st.stagingPath))) await ctx.host.umount(st.stagingPath, lazy);
  const daemon = ctx.daemonFor(vol.id);
  for (const l of await ctx.host.loops()) if (l.backFile === daemon.exportFile) await ctx.host.detachLoop(l.name);
  await daemon.stop();
}

export async function publishTarget(ctx: DriverContext, st: StageRec, p: PublishRec): Promise<void> {
  await fs.mkdir(path.dirname(p.targetPath), { recursive: true });
  while (await ctx.host.isMountpoint(p.targetPath)) await ctx.host.umount(p.targetPath, true);
  // A reader-only access mode is honoured even when the CO forgets `readonly`.
  const ro = p.readonly || p.mode === 'SINGLE_NODE_READER_ONLY';
  if (p.type === 'block') {
    await fs.writeFile(p.targetPath, '', { flag: 'a' });
    let dev = st.loopDevice;
    if (ro) {
      dev = await ctx.host.attachLoop(ctx.daemonFor(st.volumeId).exportFile, true);
      p.roLoop = dev;
    }
    await ctx.host.mount(dev, p.targetPath, { bind: true });
  } else {
    await fs.mkdir(p.targetPath, { recursive: true });
    await ctx.host.mount(st.stagingPath, p.targetPath, { bind: true });
  }
  if (ro) await ctx.host.remountReadonly(p.targetPath);
}

export async function unpublishTarget(ctx: DriverContext, target: string, lazy = false, roLoop?: string): Promise<void> {
  while (await ctx.host.isMountpoint(target)) await ctx.host.umount(target, lazy);
  if (roLoop) await ctx.host.detachLoop(roLoop);
  await fs.rm(target, { recursive: false, force: true }).catch(async (e: unknown) => {
    if (sysErrorCode(e) === 'EISDIR' || sysErrorCode(e) === 'ERR_FS_EISDIR') await fs.rmdir(target);
    else throw e;
  });
}

/** What is wrong with a staged volume on the host, or undefined when all is in place. */
export async function stageProblem(ctx: DriverContext, st: StageRec): Promise<string | undefined> {
  const daemon = ctx.daemonFor(st.volumeId);
  const d = await daemon.healthy();
  if (d) return d;
  const loop = (await ctx.host.loops()).find((l) => l.name === st.loopDevice);
  if (!loop || loop.backFile !== daemon.exportFile) return `loop device ${st.loopDevice} no longer serves ${daemon.exportFile}`;
  const mounts = await ctx.host.mounts();
  if (st.type === 'mount' && mounts.get(st.stagingPath)?.source !== st.loopDevice) return `${st.stagingPath} is not mounted from ${st.loopDevice}`;
  for (const p of Object.values(ctx.state.publishes)) {
    if (p.volumeId === st.volumeId && !mounts.has(p.targetPath)) return `publish target ${p.targetPath} is not mounted`;
  }
  return undefined;
}

function pathsOf(ctx: DriverContext, volumeId: string): { stage?: StageRec; targets: string[] } {
  return {
    stage: ctx.state.stages[volumeId],
    targets: Object.values(ctx.state.publishes)
      .filter((p) => p.volumeId === volumeId)
      .map((p) => p.targetPath),
  };
}

export function nodeService(ctx: DriverContext): NodeImpl {
  return {
    async NodeStageVolume(req) {
      ctx.requireReady();
      const id = requireIdent('volume_id', req.volume_id);
      const stagingPath = requirePath('staging_target_path', req.staging_target_path);
      const cap = parseCapability('volume_capability', req.volume_capability);
      return await ctx.locks.with([id], 'NodeStageVolume', async () => {
        const vol = ctx.volume(id);
        const why = capabilityMatches(vol, cap);
        if (why) throw isSupportedMode(cap.mode) ? new InvalidArgument(why) : new FailedPrecondition(why);
        const fsType = (cap.fsType || vol.fsType) as FsType;
        const prev = ctx.state.stages[id];
        if (prev) {
          if (prev.stagingPath !== stagingPath) throw new FailedPrecondition(`volume ${id} is already staged at ${prev.stagingPath}`);
          const same = prev.type === cap.type && prev.mode === cap.mode && JSON.stringify(prev.mountFlags) === JSON.stringify(cap.mountFlags) && (cap.type === 'block' || prev.fsType === fsType);
          if (!same) throw new AlreadyExists(`volume ${id} is staged at ${stagingPath} with a different capability`);
          return {};
        }
        const base = { volumeId: id, stagingPath, type: cap.type, fsType, mountFlags: cap.mountFlags, mode: cap.mode };
        const loopDevice = await bringUp(ctx, vol, base);
        ctx.state.stages[id] = { ...base, loopDevice };
        await ctx.store.save();
        ctx.log.info({ volume: id, stagingPath, loopDevice, type: cap.type }, 'volume staged');
        return {};
      });
    },

    async NodeUnstageVolume(req) {
      ctx.requireReady();
      const id = requireIdent('volume_id', req.volume_id);
      const stagingPath = requirePath('staging_target_path', req.staging_target_path);
      return await ctx.locks.with([id], 'NodeUnstageVolume', async () => {
        const st = ctx.state.stages[id];
        if (!st) {
          ctx.volume(id);
          return {};
        }
        if (st.stagingPath !== stagingPath) return {};
        const targets = pathsOf(ctx, id).targets;
        if (targets.length > 0) throw new FailedPrecondition(`volume ${id} is still published at ${targets.join(', ')}`);
        await tearDown(ctx, { id }, st);
        delete ctx.state.stages[id];
        await ctx.store.save();
        ctx.log.info({ volume: id }, 'volume unstaged');
        return {};
      });
    },

    async NodePublishVolume(req) {
      ctx.requireReady();
      const id = requireIdent('volume_id', req.volume_id);
      const stagingPath = requirePath('staging_target_path', req.staging_target_path);
      const targetPath = requirePath('target_path', req.target_path);
      const cap = parseCapability('volume_capability', req.volume_capability);
      return await ctx.locks.with([id], 'NodePublishVolume', async () => {
        const vol = ctx.volume(id);
        const why = capabilityMatches(vol, cap);
        if (why) throw isSupportedMode(cap.mode) ? new InvalidArgument(why) : new FailedPrecondition(why);
        const st = ctx.state.stages[id];
        if (!st || st.stagingPath !== stagingPath) throw new FailedPrecondition(`volume ${id} is not staged at ${stagingPath}`);
        if (st.type !== cap.type) throw new InvalidArgument(`volume ${id} is staged for ${st.type} access, not ${cap.type}`);
        const args: PublishRec = { volumeId: id, targetPath, stagingPath, type: cap.type, mode: cap.mode, readonly: req.readonly, mountFlags: cap.mountFlags };
        const others = Object.values(ctx.state.publishes).filter((p) => p.volumeId === id);
        const taken = ctx.state.publishes[targetPath];
        if (taken && taken.volumeId !== id) throw new AlreadyExists(`${targetPath} is the target of another volume (${taken.volumeId})`);
        if (decidePublish(args, others) === 'exists') return {};
        try {
          await publishTarget(ctx, st, args);
        } catch (e) {
          await unpublishTarget(ctx, targetPath, false, args.roLoop).catch(() => undefined);
          throw e;
        }
        ctx.state.publishes[targetPath] = args;
        await ctx.store.save();
        ctx.log.info({ volume: id, targetPath, readonly: req.readonly }, 'volume published');
        return {};
      });
    },

    async NodeUnpublishVolume(req) {
      ctx.requireReady();
      const id = requireIdent('volume_id', req.volume_id);
      const targetPath = requirePath('target_path', req.target_path);
      return await ctx.locks.with([id], 'NodeUnpublishVolume', async () => {
        const p = ctx.state.publishes[targetPath];
        if (!p || p.volumeId !== id) {
          ctx.volume(id);
          return {};
        }
        await unpublishTarget(ctx, targetPath, false, p.roLoop);
        delete ctx.state.publishes[targetPath];
        await ctx.store.save();
        ctx.log.info({ volume: id, targetPath }, 'volume unpublished');
        return {};
      });
    },

    async NodeGetVolumeStats(req) {
      ctx.requireReady();
      const id = requireIdent('volume_id', req.volume_id);
      const volumePath = requirePath('volume_path', req.volume_path);
      ctx.volume(id);
      const { stage, targets } = pathsOf(ctx, id);
      if (!stage || (stage.stagingPath !== volumePath && !targets.includes(volumePath))) throw new NotFound(`volume ${id} is not staged or published at ${volumePath}`);
      const problem = await stageProblem(ctx, stage).catch((e: unknown) => `health check failed: ${errorMessage(e)}`);
      const volume_condition: VolumeCondition = problem ? { abnormal: true, message: problem } : { abnormal: false, message: 'volume is healthy' };
      if (stage.type === 'block') {
        const total = problem ? 0 : await ctx.host.blockSize(stage.loopDevice);
        return { usage: [{ unit: 'BYTES', total: String(total) }], volume_condition };
      }
      const s = await ctx.host.statfs(volumePath);
      return {
        usage: [
          { unit: 'BYTES', total: String(s.total), available: String(s.avail), used: String(s.total - s.free) },
          { unit: 'INODES', total: String(s.files), available: String(s.ffree), used: String(s.files - s.ffree) },
        ],
        volume_condition,
      };
    },

    async NodeExpandVolume(req) {
      ctx.requireReady();
      const id = requireIdent('volume_id', req.volume_id);
      const volumePath = requirePath('volume_path', req.volume_path);
      return await ctx.locks.with([id], 'NodeExpandVolume', async () => {
        const vol = ctx.volume(id);
        const cap = req.volume_capability ? parseCapability('volume_capability', req.volume_capability) : undefined;
        if (req.capacity_range) resolveCapacity(req.capacity_range);
        const { stage, targets } = pathsOf(ctx, id);
        if (!stage || (stage.stagingPath !== volumePath && !targets.includes(volumePath))) throw new NotFound(`volume ${id} is not staged or published at ${volumePath}`);
        if (cap && cap.type !== stage.type) throw new InvalidArgument(`volume ${id} is staged for ${stage.type} access, not ${cap.type}`);
        await ctx.host.refreshLoop(stage.loopDevice);
        const dev = await ctx.host.blockSize(stage.loopDevice);
        if (stage.type === 'mount') {
          if (stage.fsType === 'xfs') await ctx.host.growXfs(stage.stagingPath);
          else if ((await ctx.host.growExt4Online(stage.loopDevice)).ok === false) {
            if (targets.length > 0) {
              throw new FailedPrecondition(
                `ext4 on ${stage.loopDevice} cannot grow while mounted on this host (resize2fs needs CAP_SYS_RESOURCE); it grows when the volume is next staged`,
              );
            }
            // Staged but not in use: grow it offline right away.
            await ctx.host.umount(stage.stagingPath);
            try {
              await ctx.host.growExt4Offline(stage.loopDevice);
            } finally {
              await ctx.host.mount(stage.loopDevice, stage.stagingPath, { fsType: stage.fsType, options: mountOptions(stage.fsType, stage.mountFlags) });
            }
          }
        }
        ctx.log.info({ volume: id, size: dev, capacity: vol.capacityBytes }, 'node expansion done');
        return { capacity_bytes: String(dev) };
      });
    },

    async NodeGetCapabilities() {
      return { capabilities: NODE_CAPABILITIES.map((type) => ({ rpc: { type } })) };
    },

    async NodeGetInfo() {
      return { node_id: ctx.nodeId, max_volumes_per_node: '0', accessible_topology: ctx.topology()[0] };
    },
  };
}
