import type { ControllerHandlers } from '../proto/gen/csi/v1/csi/v1/Controller.js';
import type { AsyncImpl } from './async-impl.js';
import type { CreateVolumeRequest__Output } from '../proto/gen/csi/v1/csi/v1/CreateVolumeRequest.js';
import type { Volume } from '../proto/gen/csi/v1/csi/v1/Volume.js';
import type { Snapshot } from '../proto/gen/csi/v1/csi/v1/Snapshot.js';
import type { ControllerServiceCapability } from '../proto/gen/csi/v1/csi/v1/ControllerServiceCapability.js';
import { AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, Unimplemented } from '../lib/errors.js';
import type { DriverContext } from './context.js';
import { newId, parseId, requireIdent, TOPOLOGY_KEY } from './ids.js';
import {
  MAX_VOLUME_BYTES,
  MIN_VOLUME_BYTES,
  capabilityMatches,
  chooseFsType,
  isSupportedMode,
  paginate,
  parseCapabilities,
  parseCapability,
  parseParameters,
  parseSnapshotParameters,
  resolveCapacity,
  sizeSatisfies,
  DEFAULT_LIMITS,
  type AccessType,
} from './plan.js';
import type { SnapshotRec, VolumeRec } from './state.js';

export const CONTROLLER_CAPABILITIES = [
  'CREATE_DELETE_VOLUME',
  'CREATE_DELETE_SNAPSHOT',
  'LIST_SNAPSHOTS',
  'CLONE_VOLUME',
  'EXPAND_VOLUME',
  'GET_CAPACITY',
  'LIST_VOLUMES',
] as const;

export type ControllerImpl = AsyncImpl<ControllerHandlers>;

function volumeMessage(ctx: DriverContext, v: VolumeRec): Volume {
  const src = v.source;
  return {
    volume_id: v.id,
    capacity_bytes: String(v.capacityBytes),
    volume_context: { fsType: v.fsType },
    content_source: src === null ? null : 'snapshotId' in src ? { snapshot: { snapshot_id: src.snapshotId } } : { volume: { volume_id: src.volumeId } },
    accessible_topology: ctx.topology(),
  };
}

function snapshotMessage(s: SnapshotRec): Snapshot {
  const ms = Date.parse(s.createdAt);
  return {
    snapshot_id: s.id,
    source_volume_id: s.sourceVolumeId,
    size_bytes: String(s.sizeBytes),
    creation_time: { seconds: String(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1e6 },
    ready_to_use: true,
  };
}

/** A source ID naming another node cannot be served here: say so instead of "not found". */
function requireLocalSource(ctx: DriverContext, field: string, id: string): void {
  const p = parseId(id);
  if (p && p.node !== ctx.nodeId) {
    throw new InvalidArgument(
      `${field} ${id} lives on node ${p.node}, but this volume is being created on node ${ctx.nodeId}: podvirt volumes are node-local, so clones and restores must be created on the source's node`,
    );
  }
}

function sameParams(a: Record<string, string>, b: Record<string, string>): boolean {
  const strip = (r: Record<string, string>) =>
    JSON.stringify(
      Object.entries(r)
        .filter(([k]) => !k.startsWith('csi.storage.k8s.io/'))
        .sort(([x], [y]) => x.localeCompare(y)),
    );
  return strip(a) === strip(b);
}

function checkTopology(ctx: DriverContext, req: CreateVolumeRequest__Output): void {
  const requisite = req.accessibility_requirements?.requisite ?? [];
  if (requisite.length === 0) return;
  const ok = requisite.some((t) => t.segments[TOPOLOGY_KEY] === undefined || t.segments[TOPOLOGY_KEY] === ctx.nodeId);
  if (!ok) {
    throw new ResourceExhausted(
      `requisite topology ${requisite.map((t) => t.segments[TOPOLOGY_KEY]).join(', ')} does not include this node (${ctx.nodeId}); volumes are node-local`,
    );
  }
}

export function controllerService(ctx: DriverContext): ControllerImpl {
  return {
    async CreateVolume(req) {
      ctx.requireReady();
      const name = requireIdent('name', req.name);
      const caps = parseCapabilities('volume_capabilities', req.volume_capabilities);
      const params = parseParameters(req.parameters);
      if (Object.keys(req.mutable_parameters ?? {}).length > 0) throw new InvalidArgument('mutable_parameters are not supported');
      const fsType = chooseFsType(params, caps);
      for (const c of caps) if (!isSupportedMode(c.mode)) throw new InvalidArgument(`access mode ${c.mode} is not supported: volumes are node-local`);
      const accessTypes = [...new Set(caps.map((c) => c.type))].sort() as AccessType[];
      const src = req.volume_content_source;
      let source: VolumeRec['source'] = null;
      if (src?.snapshot) {
        source = { snapshotId: requireIdent('volume_content_source.snapshot.snapshot_id', src.snapshot.snapshot_id) };
        requireLocalSource(ctx, 'source snapshot', source.snapshotId);
      } else if (src?.volume) {
        source = { volumeId: requireIdent('volume_content_source.volume.volume_id', src.volume.volume_id) };
        requireLocalSource(ctx, 'source volume', source.volumeId);
      } else if (src) {
        throw new InvalidArgument('volume_content_source names neither a snapshot nor a volume');
      }
      checkTopology(ctx, req);
      resolveCapacity(req.capacity_range); // range errors before any lookup

      const sourceKey = source === null ? [] : 'snapshotId' in source ? [source.snapshotId] : [source.volumeId];
      return await ctx.locks.with([`name:${name}`, ...sourceKey], `CreateVolume ${name}`, async () => {
        const existing = ctx.volumeByName(name);
        if (existing) {
          const same =
            sizeSatisfies(existing.capacityBytes, req.capacity_range) &&
            sameParams(existing.parameters, req.parameters ?? {}) &&
            JSON.stringify(existing.source) === JSON.stringify(source) &&
            accessTypes.every((t) => existing.accessTypes.includes(t)) &&
            existing.fsType === fsType;
          if (!same) throw new AlreadyExists(`a volume named ${name} already exists with a different size, parameters, capabilities or source`);
          return { volume: volumeMessage(ctx, existing) };
        }

        let parentLayer: string | null = null;
        let floor = 0;
        let srcVol: VolumeRec | undefined;
        if (source && 'snapshotId' in source) {
          const snap = ctx.state.snapshots[source.snapshotId];
          if (!snap) throw new NotFound(`source snapshot ${source.snapshotId} does not exist`);
          parentLayer = snap.layer;
          floor = snap.sizeBytes;
        } else if (source) {
          srcVol = ctx.state.volumes[source.volumeId];
          if (!srcVol) throw new NotFound(`source volume ${source.volumeId} does not exist`);
          floor = srcVol.capacityBytes;
        }
        const size = resolveCapacity(req.capacity_range, DEFAULT_LIMITS, floor);
        const free = await ctx.pool.freeBytes();
        if (size > free) throw new ResourceExhausted(`a ${size}-byte volume cannot fit: the pool has ${free} bytes free`);

        if (srcVol) parentLayer = await ctx.freezeHead(srcVol);
        const id = newId('vol', ctx.nodeId);
        const head = ctx.newLayerId();
        await ctx.pool.create(head, size, parentLayer);
        ctx.state.layers[head] = { id: head, parent: parentLayer };
        const vol: VolumeRec = {
          id,
          name,
          capacityBytes: size,
          head,
          accessTypes,
          fsType,
          parameters: { ...(req.parameters ?? {}) },
          source,
          createdAt: new Date().toISOString(),
        };
        ctx.state.volumes[id] = vol;
        await ctx.store.save();
        ctx.log.info({ volume: id, name, size, source }, 'volume created');
        return { volume: volumeMessage(ctx, vol) };
      });
    },

    async DeleteVolume(req) {
      ctx.requireReady();
      const id = requireIdent('volume_id', req.volume_id);
      return await ctx.locks.with([id], 'DeleteVolume', async () => {
        const vol = ctx.state.volumes[id];
        if (!vol) return {};
        if (ctx.state.stages[id]) throw new FailedPrecondition(`volume ${id} is still staged on this node; unstage it first`);
        delete ctx.state.volumes[id];
        await ctx.store.save();
        await ctx.collectGarbage();
        ctx.log.info({ volume: id }, 'volume deleted');
        return {};
      });
    },

    async ControllerPublishVolume() {
      throw new Unimplemented('ControllerPublishVolume is not offered (attachRequired: false)');
    },
    async ControllerUnpublishVolume() {
      throw new Unimplemented('ControllerUnpublishVolume is not offered (attachRequired: false)');
    },

    async ValidateVolumeCapabilities(req) {
      ctx.requireReady();
      const id = requireIdent('volume_id', req.volume_id);
      const caps = parseCapabilities('volume_capabilities', req.volume_capabilities);
      parseParameters(req.parameters);
      const vol = ctx.volume(id);
      for (const c of caps) {
        const why = capabilityMatches(vol, c);
        if (why) return { message: why };
      }
      return {
        confirmed: {
          volume_context: req.volume_context,
          volume_capabilities: req.volume_capabilities,
          parameters: req.parameters,
          mutable_parameters: req.mutable_parameters,
        },
      };
    },

    async ListVolumes(req) {
      ctx.requireReady();
      const all = Object.values(ctx.state.volumes).sort((a, b) => (a.id < b.id ? -1 : 1));
      const { page, next } = paginate(all, (v) => v.id, req.max_entries, req.starting_token, (t) => parseId(t)?.kind === 'vol');
      return { entries: page.map((v) => ({ volume: volumeMessage(ctx, v) })), next_token: next };
    },

    async GetCapacity(req) {
      ctx.requireReady();
      const caps = req.volume_capabilities.map((c, i) => parseCapability(`volume_capabilities[${i}]`, c));
      const params = parseParameters(req.parameters);
      const free = await ctx.pool.freeBytes();
      let usable = caps.every((c) => isSupportedMode(c.mode));
      if (params.fsType && caps.some((c) => c.type === 'mount' && c.fsType !== '' && c.fsType !== params.fsType)) usable = false;
      const seg = req.accessible_topology?.segments[TOPOLOGY_KEY];
      if (seg !== undefined && seg !== ctx.nodeId) usable = false;
      const available = usable ? free : 0;
      return {
        available_capacity: String(available),
        maximum_volume_size: { value: String(Math.min(available, MAX_VOLUME_BYTES)) },
        minimum_volume_size: { value: String(MIN_VOLUME_BYTES) },
      };
    },

    async ControllerGetCapabilities() {
      const capabilities: ControllerServiceCapability[] = CONTROLLER_CAPABILITIES.map((type) => ({ rpc: { type } }));
      return { capabilities };
    },

    async CreateSnapshot(req) {
      ctx.requireReady();
      const sourceId = requireIdent('source_volume_id', req.source_volume_id);
      const name = requireIdent('name', req.name);
      parseSnapshotParameters(req.parameters);
      return await ctx.locks.with([`snapname:${name}`, sourceId], `CreateSnapshot ${name}`, async () => {
        const existing = Object.values(ctx.state.snapshots).find((s) => s.name === name);
        if (existing) {
          if (existing.sourceVolumeId !== sourceId) throw new AlreadyExists(`a snapshot named ${name} already exists for volume ${existing.sourceVolumeId}`);
          return { snapshot: snapshotMessage(existing) };
        }
        const vol = ctx.volume(sourceId);
        if ((await ctx.pool.freeBytes()) < MIN_VOLUME_BYTES) throw new ResourceExhausted('the pool has no room left for snapshot metadata');
        const layer = await ctx.freezeHead(vol);
        const snap: SnapshotRec = {
          id: newId('snap', ctx.nodeId),
          name,
          sourceVolumeId: vol.id,
          layer,
          sizeBytes: vol.capacityBytes,
          createdAt: new Date().toISOString(),
        };
        ctx.state.snapshots[snap.id] = snap;
        await ctx.store.save();
        ctx.log.info({ snapshot: snap.id, volume: vol.id }, 'snapshot created');
        return { snapshot: snapshotMessage(snap) };
      });
    },

    async DeleteSnapshot(req) {
      ctx.requireReady();
      const id = requireIdent('snapshot_id', req.snapshot_id);
      return await ctx.locks.with([id], 'DeleteSnapshot', async () => {
        if (!ctx.state.snapshots[id]) return {};
        delete ctx.state.snapshots[id];
        await ctx.store.save();
        await ctx.collectGarbage();
        ctx.log.info({ snapshot: id }, 'snapshot deleted');
        return {};
      });
    },

    async ListSnapshots(req) {
      ctx.requireReady();
      let all = Object.values(ctx.state.snapshots).sort((a, b) => (a.id < b.id ? -1 : 1));
      if (req.snapshot_id) all = all.filter((s) => s.id === req.snapshot_id);
      if (req.source_volume_id) all = all.filter((s) => s.sourceVolumeId === req.source_volume_id);
      const { page, next } = paginate(all, (s) => s.id, req.max_entries, req.starting_token, (t) => parseId(t)?.kind === 'snap');
      return { entries: page.map((s) => ({ snapshot: snapshotMessage(s) })), next_token: next };
    },

    async GetSnapshot() {
      throw new Unimplemented('GetSnapshot is not offered (no GET_SNAPSHOT capability)');
    },

    async ControllerExpandVolume(req) {
      ctx.requireReady();
      const id = requireIdent('volume_id', req.volume_id);
      if (!req.capacity_range) throw new InvalidArgument('capacity_range is required');
      const cap = req.volume_capability ? parseCapability('volume_capability', req.volume_capability) : undefined;
      const target = resolveCapacity(req.capacity_range);
      return await ctx.locks.with([id], 'ControllerExpandVolume', async () => {
        const vol = ctx.volume(id);
        if (cap) {
          const why = capabilityMatches(vol, cap);
          if (why) throw new InvalidArgument(why);
        }
        const needsNode = (cap?.type ?? (vol.accessTypes.includes('mount') ? 'mount' : 'block')) === 'mount';
        if (vol.capacityBytes >= target) return { capacity_bytes: String(vol.capacityBytes), node_expansion_required: needsNode };
        const free = await ctx.pool.freeBytes();
        if (target - vol.capacityBytes > free) throw new ResourceExhausted(`growing by ${target - vol.capacityBytes} bytes cannot fit: the pool has ${free} bytes free`);
        const stage = ctx.state.stages[id];
        if (stage) {
          await ctx.daemonFor(id).resize(target);
          await ctx.host.refreshLoop(stage.loopDevice);
        } else {
          await ctx.pool.resize(vol.head, target);
        }
        vol.capacityBytes = target;
        await ctx.store.save();
        ctx.log.info({ volume: id, size: target, online: Boolean(stage) }, 'volume expanded');
        return { capacity_bytes: String(target), node_expansion_required: needsNode };
      });
    },

    async ControllerGetVolume() {
      throw new Unimplemented('ControllerGetVolume is not offered (no GET_VOLUME capability)');
    },
    async ControllerModifyVolume() {
      throw new Unimplemented('ControllerModifyVolume is not offered (no MODIFY_VOLUME capability)');
    },
  };
}
