/**
 * One DevicePlugin gRPC server for one resource, on its own socket in the kubelet dir. It holds
 * the resource's current device list, streams full snapshots to every open ListAndWatch (a new
 * stream may open while an old one is being torn down after a kubelet restart, so all of them get
 * every update), and answers Allocate / GetPreferredAllocation from the pure logic in allocate.ts.
 */
import * as grpc from '@grpc/grpc-js';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { InvalidArgument } from '../lib/errors.js';
import { listenUnix, shutdownServer, unary } from '../lib/grpc-server.js';
import type { Logger } from '../lib/log.js';
import { containerAllocation, preferredAllocation } from './allocate.js';
import {
  devicePluginApi,
  type Device,
  type DevicePluginHandlers,
  type DevicePluginOptions,
  type Empty__Output,
  type ListAndWatchResponse,
} from './api.js';
import { sameDevices, type PlannedDevice, type ResourcePlan } from './plan.js';
import { HEALTHY, UNHEALTHY } from './resources.js';

type Stream = grpc.ServerWritableStream<Empty__Output, ListAndWatchResponse>;

export function toWireDevices(devices: readonly PlannedDevice[]): Device[] {
  return devices.map((d) => ({
    ID: d.id,
    health: d.healthy ? HEALTHY : UNHEALTHY,
    topology: d.numaNode !== undefined ? { nodes: [{ ID: String(d.numaNode) }] } : null,
  }));
}

export class PluginServer {
  private server: grpc.Server | undefined;
  private readonly streams = new Set<Stream>();
  private current: ResourcePlan;

  constructor(
    private readonly dir: string,
    plan: ResourcePlan,
    private readonly log: Logger,
  ) {
    this.current = plan;
  }

  get plan(): ResourcePlan {
    return this.current;
  }

  get resourceName(): string {
    return this.current.resourceName;
  }

  get socketPath(): string {
    return path.join(this.dir, this.current.socketName);
  }

  get openStreams(): number {
    return this.streams.size;
  }

  options(): DevicePluginOptions {
    return { pre_start_required: false, get_preferred_allocation_available: this.current.kind !== 'device-node' };
  }

  /** Binds the socket (removing a stale one) and serves; the caller registers afterwards. */
  async start(): Promise<void> {
    const server = new grpc.Server();
    server.addService(devicePluginApi().DevicePlugin.service, this.handlers());
    await listenUnix(server, this.socketPath);
    this.server = server;
    this.log.info({ resource: this.resourceName, socket: this.socketPath, devices: this.current.devices.length }, 'serving');
  }

  /** A fresh server on the same path, e.g. after the kubelet removed the socket. */
  async restart(): Promise<void> {
    await this.close();
    await this.start();
  }

  /** Replaces the device list; every open stream gets the new snapshot when it changed. */
  update(plan: ResourcePlan): boolean {
    const changed = !sameDevices(this.current.devices, plan.devices);
    this.current = plan;
    if (changed) {
      const msg = { devices: toWireDevices(plan.devices) };
      for (const s of this.streams) s.write(msg);
      this.log.info(
        { resource: this.resourceName, healthy: plan.devices.filter((d) => d.healthy).length, total: plan.devices.length },
        'devices changed',
      );
    }
    return changed;
  }

  /**
   * Stops serving: streams get an empty list first (there is no deregistration in the API; an
   * empty list is how a plugin withdraws its devices), then the socket goes away.
   */
  async stop(): Promise<void> {
    for (const s of this.streams) s.write({ devices: [] });
    await this.close();
    await fs.rm(this.socketPath, { force: true });
    this.log.info({ resource: this.resourceName }, 'stopped');
  }

  private async close(): Promise<void> {
    for (const s of this.streams) s.end();
    this.streams.clear();
    const server = this.server;
    this.server = undefined;
    if (server) await shutdownServer(server, 500);
  }

  private handlers(): DevicePluginHandlers {
    const log = this.log;
    return {
      GetDevicePluginOptions: unary('GetDevicePluginOptions', async () => this.options(), log),
      ListAndWatch: (call) => {
        this.streams.add(call);
        const drop = () => this.streams.delete(call);
        call.on('cancelled', drop);
        call.on('close', drop);
        call.on('error', drop);
        call.write({ devices: toWireDevices(this.current.devices) });
      },
      GetPreferredAllocation: unary(
        'GetPreferredAllocation',
        async (req) => ({
          container_responses: req.container_requests.map((r) => ({
            deviceIDs: preferredAllocation(this.current.devices, r.available_deviceIDs, r.must_include_deviceIDs, r.allocation_size),
          })),
        }),
        log,
      ),
      Allocate: unary(
        'Allocate',
        async (req) => {
          if (req.container_requests.length === 0) throw new InvalidArgument(`resource ${this.resourceName}: Allocate without container requests`);
          const plan = this.current;
          // Exactly one response per request, in order; any bad ID fails the whole call.
          const container_responses = req.container_requests.map((r) => containerAllocation(plan, r.devices_ids));
          log.info({ resource: this.resourceName, ids: req.container_requests.map((r) => r.devices_ids) }, 'allocated');
          return { container_responses };
        },
        log,
      ),
      PreStartContainer: unary('PreStartContainer', async () => ({}), log),
    };
  }
}
