/**
 * A minimal kubelet device manager: the kubelet's half of the device plugin API v1beta1, enough to
 * drive real device plugins over real unix sockets. Used by the tests (as the kubelet emulator) and
 * by the node agent's local mode (`podvirt run`), which has no kubelet but must allocate devices for
 * a VM pod the same way a kubelet would.
 *
 *   const kubelet = new KubeletDeviceManager({ dir });  // dir = a device-plugins directory
 *   await kubelet.start();                  // serves Registration on <dir>/kubelet.sock
 *   const kvm = await kubelet.waitForResource('devices.kubevirt.io/kvm', (r) => r.healthy.length > 0, 5000);
 *   const a = await kubelet.allocate('devices.kubevirt.io/kvm', 1);   // { deviceIds, response }
 *   kubelet.release('devices.kubevirt.io/kvm', a.deviceIds);
 *   const c = await kubelet.allocateContainer({ 'devices.kubevirt.io/kvm': 1, 'devices.kubevirt.io/tun': 1 });
 *   // c.devices / c.envs / c.cdiDevices merged over resources; all or nothing
 *   await kubelet.restart({ downMs: 100 }); // kubelet restart: sockets removed, kubelet.sock re-created
 *   await kubelet.stop();
 *
 * What it does like the kubelet: rejects versions other than v1beta1 and invalid extended resource
 * names; on Register dials `<dir>/<endpoint>` (10 s), calls GetDevicePluginOptions before answering,
 * then keeps ListAndWatch open and tracks each resource's devices and health (every message is a full
 * snapshot; when the stream ends all devices count as Unhealthy); the newest registration of a
 * resource wins; `allocate(resource, n)` picks n healthy, unallocated IDs, asking
 * GetPreferredAllocation first when the plugin offers it (keeping only available IDs and topping up a
 * short answer), then calls Allocate with one container request. A restart removes every socket in
 * the directory (never other files) and re-creates kubelet.sock; allocations survive it (the real
 * kubelet keeps them in its checkpoint).
 *
 * Not modelled: pods, containers, checkpoint file, topology manager, PreStartContainer ordering
 * (call `preStartContainer` yourself), the plugin-watcher registration path.
 *
 * Events on the instance: 'register' (resourceName), 'update' (resourceName: a new snapshot or a
 * lost stream), 'disconnect' (resourceName).
 */
import * as grpc from '@grpc/grpc-js';
import { EventEmitter } from 'node:events';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { sleep } from '../lib/backoff.js';
import { FailedPrecondition, Internal, InvalidArgument, NotFound, ResourceExhausted, Unavailable, errorMessage } from '../lib/errors.js';
import { listenUnix, shutdownServer, unary } from '../lib/grpc-server.js';
import { silentLogger, type Logger } from '../lib/log.js';
import {
  devicePluginApi,
  type ContainerAllocateResponse__Output,
  type Device__Output,
  type DevicePluginClient,
  type DevicePluginOptions__Output,
  type ListAndWatchResponse__Output,
  type RegistrationHandlers,
} from './api.js';
import { DEVICE_PLUGIN_API_VERSION, extendedResourceNameProblem, HEALTHY, KUBELET_SOCKET, UNHEALTHY } from './resources.js';

export interface KubeletResource {
  resourceName: string;
  /** Socket file name inside the directory. */
  endpoint: string;
  options: DevicePluginOptions__Output;
  /** Latest snapshot (all Unhealthy once the stream is gone). */
  devices: Device__Output[];
  /** IDs of Healthy devices. */
  healthy: string[];
  /** IDs handed out by `allocate` and not released. */
  allocated: string[];
  /** ListAndWatch is open. */
  connected: boolean;
  /** How many times the resource has registered with this manager. */
  registrations: number;
  /** How many ListAndWatch snapshots arrived since the last registration. */
  updates: number;
}

export interface Allocation {
  deviceIds: string[];
  response: ContainerAllocateResponse__Output;
}

/** Everything one container gets from several resources, merged the way a runtime applies it. */
export interface ContainerDevices {
  /** Per resource: the IDs and the plugin's raw response. */
  allocations: Record<string, Allocation>;
  /** Device nodes, one per host path. */
  devices: Array<{ containerPath: string; hostPath: string; permissions: string }>;
  envs: Record<string, string>;
  mounts: Array<{ containerPath: string; hostPath: string; readOnly: boolean }>;
  annotations: Record<string, string>;
  /** Fully qualified CDI device names, without duplicates. */
  cdiDevices: string[];
}

interface Entry {
  resourceName: string;
  endpoint: string;
  options: DevicePluginOptions__Output;
  client: DevicePluginClient;
  stream: grpc.ClientReadableStream<ListAndWatchResponse__Output> | undefined;
  devices: Device__Output[];
  connected: boolean;
  registrations: number;
  updates: number;
}

const DIAL_TIMEOUT_MS = 10_000;

function call<Res>(fn: (cb: (e: grpc.ServiceError | null, r?: Res) => void) => void): Promise<Res> {
  return new Promise((resolve, reject) => fn((e, r) => (e ? reject(e) : resolve(r as Res))));
}

export class KubeletDeviceManager extends EventEmitter {
  readonly dir: string;
  private readonly log: Logger;
  private server: grpc.Server | undefined;
  private readonly entries = new Map<string, Entry>();
  private readonly allocated = new Map<string, Set<string>>();

  private readonly dialTimeoutMs: number;

  /** `dialTimeoutMs`: how long Register waits for the plugin's socket (the kubelet's 10 s). */
  constructor(opts: { dir: string; logger?: Logger; dialTimeoutMs?: number }) {
    super();
    this.dir = opts.dir;
    this.log = opts.logger ?? silentLogger;
    this.dialTimeoutMs = opts.dialTimeoutMs ?? DIAL_TIMEOUT_MS;
  }

  get socketPath(): string {
    return path.join(this.dir, KUBELET_SOCKET);
  }

  /** Serves Registration on `<dir>/kubelet.sock` (creating the directory). */
  async start(): Promise<void> {
    if (this.server) return;
    const server = new grpc.Server();
    const handlers: RegistrationHandlers = {
      Register: unary('Register', async (req) => {
        await this.register(req.version, req.endpoint, req.resource_name);
        return {};
      }, this.log),
    };
    server.addService(devicePluginApi().Registration.service, handlers);
    await listenUnix(server, this.socketPath);
    this.server = server;
  }

  /** Stops serving, drops every plugin connection and removes kubelet.sock. Allocations are kept. */
  async stop(): Promise<void> {
    for (const e of this.entries.values()) this.disconnect(e);
    const server = this.server;
    this.server = undefined;
    if (server) await shutdownServer(server, 200);
    await fs.rm(this.socketPath, { force: true });
  }

  /**
   * A kubelet restart: stop, remove every socket in the directory (as the kubelet's
   * CleanupPluginDirectory does), stay away `downMs`, then serve kubelet.sock again.
   */
  async restart(opts: { downMs?: number } = {}): Promise<void> {
    await this.stop();
    await this.removePluginSockets();
    if (opts.downMs) await sleep(opts.downMs);
    await this.start();
  }

  /** Removes every socket file in the directory, leaving other files alone. */
  async removePluginSockets(): Promise<void> {
    for (const name of await fs.readdir(this.dir)) {
      const p = path.join(this.dir, name);
      try {
        if ((await fs.lstat(p)).isSocket()) await fs.rm(p, { force: true });
      } catch {
        /* gone already */
      }
    }
  }

  resourceNames(): string[] {
    return [...this.entries.keys()].sort();
  }

  resource(resourceName: string): KubeletResource | undefined {
    const e = this.entries.get(resourceName);
    if (!e) return undefined;
    return {
      resourceName: e.resourceName,
      endpoint: e.endpoint,
      options: e.options,
      devices: e.devices,
      healthy: e.devices.filter((d) => d.health === HEALTHY).map((d) => d.ID),
      allocated: [...(this.allocated.get(resourceName) ?? [])],
      connected: e.connected,
      registrations: e.registrations,
      updates: e.updates,
    };
  }

  /** The raw DevicePlugin client of a registered resource (for calling RPCs directly). */
  client(resourceName: string): DevicePluginClient {
    const e = this.entries.get(resourceName);
    if (!e) throw new NotFound(`resource ${resourceName} is not registered`);
    return e.client;
  }

  /**
   * Resolves with the first non-undefined value of `probe`, re-evaluated on every register/update
   * event (no polling); rejects after `timeoutMs` saying what it waited for.
   */
  waitFor<T>(probe: () => T | undefined, timeoutMs: number, what = 'condition'): Promise<T> {
    return new Promise((resolve, reject) => {
      const check = () => {
        let v: T | undefined;
        try {
          v = probe();
        } catch (e) {
          done();
          reject(e instanceof Error ? e : new Error(errorMessage(e)));
          return;
        }
        if (v !== undefined) {
          done();
          resolve(v);
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Unavailable(`timed out after ${timeoutMs} ms waiting for ${what}`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.off('update', check);
        this.off('register', check);
      };
      this.on('update', check);
      this.on('register', check);
      check();
    });
  }

  /** Waits until the resource is registered, connected and `pred` holds for it. */
  waitForResource(resourceName: string, pred: (r: KubeletResource) => boolean, timeoutMs: number): Promise<KubeletResource> {
    return this.waitFor(
      () => {
        const r = this.resource(resourceName);
        return r && r.connected && pred(r) ? r : undefined;
      },
      timeoutMs,
      `resource ${resourceName}`,
    );
  }

  /**
   * Allocates for one container: `request` is a count (picked like the kubelet: healthy and not
   * yet allocated, plugin preference first) or explicit IDs, which are sent to the plugin unchecked
   * so its own validation can be exercised.
   */
  async allocate(resourceName: string, request: number | readonly string[], deadlineMs = 10_000): Promise<Allocation> {
    const e = this.entries.get(resourceName);
    if (!e) throw new NotFound(`resource ${resourceName} is not registered`);
    if (!e.connected) throw new FailedPrecondition(`resource ${resourceName}: plugin is not connected`);
    const taken = this.allocated.get(resourceName) ?? new Set<string>();
    let ids: string[];
    if (typeof request === 'number') {
      const available = e.devices.filter((d) => d.health === HEALTHY && !taken.has(d.ID)).map((d) => d.ID);
      if (request < 1) throw new InvalidArgument(`allocate ${resourceName}: count must be at least 1`);
      if (available.length < request) {
        throw new ResourceExhausted(`insufficient ${resourceName}: requested ${request}, available ${available.length}`);
      }
      ids = available.slice(0, request);
      if (e.options.get_preferred_allocation_available) {
        const pref = await call<{ container_responses: Array<{ deviceIDs: string[] }> }>((cb) =>
          e.client.GetPreferredAllocation(
            { container_requests: [{ available_deviceIDs: available, must_include_deviceIDs: [], allocation_size: request }] },
            { deadline: Date.now() + deadlineMs },
            cb,
          ),
        );
        const avail = new Set(available);
        const chosen = [...new Set(pref.container_responses[0]?.deviceIDs ?? [])].filter((id) => avail.has(id)).slice(0, request);
        for (const id of available) if (chosen.length < request && !chosen.includes(id)) chosen.push(id);
        ids = chosen;
      }
    } else {
      ids = [...request];
    }
    const res = await call<{ container_responses: ContainerAllocateResponse__Output[] }>((cb) =>
      e.client.Allocate({ container_requests: [{ devices_ids: ids }] }, { deadline: Date.now() + deadlineMs }, cb),
    );
    if (res.container_responses.length !== 1) {
      throw new Internal(`resource ${resourceName}: Allocate returned ${res.container_responses.length} container responses for 1 request`);
    }
    for (const id of ids) taken.add(id);
    this.allocated.set(resourceName, taken);
    return { deviceIds: ids, response: res.container_responses[0]! };
  }

  /**
   * Allocates counts of several resources for one container (`{ 'devices.kubevirt.io/kvm': 1, ... }`)
   * and merges the responses. All or nothing: when one resource fails, what was already allocated
   * is released and the error is rethrown.
   */
  async allocateContainer(requests: Record<string, number>): Promise<ContainerDevices> {
    const out: ContainerDevices = { allocations: {}, devices: [], envs: {}, mounts: [], annotations: {}, cdiDevices: [] };
    try {
      for (const [resource, count] of Object.entries(requests)) {
        const a = await this.allocate(resource, count);
        out.allocations[resource] = a;
        for (const d of a.response.devices) {
          if (!out.devices.some((x) => x.hostPath === d.host_path)) {
            out.devices.push({ containerPath: d.container_path, hostPath: d.host_path, permissions: d.permissions });
          }
        }
        Object.assign(out.envs, a.response.envs);
        Object.assign(out.annotations, a.response.annotations);
        for (const m of a.response.mounts) out.mounts.push({ containerPath: m.container_path, hostPath: m.host_path, readOnly: m.read_only });
        for (const c of a.response.cdi_devices) if (!out.cdiDevices.includes(c.name)) out.cdiDevices.push(c.name);
      }
    } catch (e) {
      for (const [resource, a] of Object.entries(out.allocations)) this.release(resource, a.deviceIds);
      throw e;
    }
    return out;
  }

  /** Returns devices to the pool (the pod went away). */
  release(resourceName: string, ids: readonly string[]): void {
    const taken = this.allocated.get(resourceName);
    for (const id of ids) taken?.delete(id);
  }

  async preStartContainer(resourceName: string, ids: readonly string[], deadlineMs = 30_000): Promise<void> {
    const e = this.entries.get(resourceName);
    if (!e) throw new NotFound(`resource ${resourceName} is not registered`);
    if (!e.options.pre_start_required) return;
    await call((cb) => e.client.PreStartContainer({ devices_ids: [...ids] }, { deadline: Date.now() + deadlineMs }, cb));
  }

  private async register(version: string, endpoint: string, resourceName: string): Promise<void> {
    if (version !== DEVICE_PLUGIN_API_VERSION) {
      throw new InvalidArgument(`Register ${resourceName}: unsupported device plugin API version "${version}" (want ${DEVICE_PLUGIN_API_VERSION})`);
    }
    const problem = extendedResourceNameProblem(resourceName);
    if (problem) throw new InvalidArgument(`Register: invalid resource name "${resourceName}": ${problem}`);
    if (endpoint === '' || endpoint.includes('/')) throw new InvalidArgument(`Register ${resourceName}: endpoint "${endpoint}" must be a socket file name`);
    const socket = path.join(this.dir, endpoint);
    const client = new (devicePluginApi().DevicePlugin)(`unix://${socket}`, grpc.credentials.createInsecure()) as DevicePluginClient;
    let options: DevicePluginOptions__Output;
    try {
      await new Promise<void>((resolve, reject) =>
        client.waitForReady(Date.now() + this.dialTimeoutMs, (err) => (err ? reject(err) : resolve())),
      );
      options = await call<DevicePluginOptions__Output>((cb) => client.GetDevicePluginOptions({}, { deadline: Date.now() + this.dialTimeoutMs }, cb));
    } catch (err) {
      client.close();
      throw new Unavailable(`Register ${resourceName}: cannot reach the plugin at ${socket}: ${errorMessage(err)}`);
    }
    const old = this.entries.get(resourceName);
    if (old) this.disconnect(old);
    const entry: Entry = {
      resourceName,
      endpoint,
      options,
      client,
      stream: undefined,
      devices: old?.devices.map((d) => ({ ...d, health: UNHEALTHY })) ?? [],
      connected: true,
      registrations: (old?.registrations ?? 0) + 1,
      updates: 0,
    };
    this.entries.set(resourceName, entry);
    const stream = client.ListAndWatch({});
    entry.stream = stream;
    stream.on('data', (msg: ListAndWatchResponse__Output) => {
      if (this.entries.get(resourceName) !== entry) return;
      entry.devices = msg.devices;
      entry.updates++;
      this.emit('update', resourceName);
    });
    const lost = () => {
      if (this.entries.get(resourceName) !== entry || !entry.connected) return;
      this.disconnect(entry);
      this.emit('update', resourceName);
    };
    stream.on('error', lost);
    stream.on('end', lost);
    this.log.info({ resource: resourceName, endpoint }, 'plugin registered');
    this.emit('register', resourceName);
  }

  private disconnect(e: Entry): void {
    if (!e.connected) return;
    e.connected = false;
    e.devices = e.devices.map((d) => ({ ...d, health: UNHEALTHY }));
    const s = e.stream;
    e.stream = undefined;
    s?.removeAllListeners('data');
    s?.on('error', () => {});
    s?.cancel();
    e.client.close();
    this.emit('disconnect', e.resourceName);
  }
}
