/**
 * The device plugin as a library: `startDevicePlugin(options)` runs everything `podvirt
 * device-plugin` does, in the calling process, until `stop()`.
 *
 *   import { startDevicePlugin } from '../plugins/device-plugin.js';
 *   const dp = await startDevicePlugin({ kubeletDir, devRoot: '/dev', sysRoot: '/sys', cdiDir, logger });
 *   ...
 *   await dp.stop();   // streams get an empty list, sockets are removed
 *
 * Options: `kubeletDir` (holds kubelet.sock; plugin sockets are created here), `devRoot`,
 * `sysRoot` (where discovery looks; Allocate always returns real /dev paths), `configFile`
 * (optional YAML/JSON, watched; a bad edit is logged and the last good config stays), `config`
 * (used when there is no file, e.g. `{ deviceNodes: ['kvm', 'tun', 'vhost-net'] }`), `cdiDir`
 * (the CDI spec goes to `<cdiDir>/podvirt.json`; null = write none), `logger`, `resyncMs`
 * (slow safety-net rescan, default 30 s; 0 disables).
 *
 * The promise resolves once the configured resources that exist are served (not necessarily
 * registered: with no kubelet yet, registration keeps retrying with backoff). It rejects on an
 * invalid initial config. `handle.events` emits 'registered' (resourceName), 'devices'
 * (resourceName), 'config-applied' (), 'config-rejected' (message) and 'error' is never emitted.
 *
 * Reaction paths, all event driven: fs watches on the device nodes' parent dirs (health),
 * on the kubelet dir (kubelet.sock re-created -> re-register; own socket removed -> serve again and
 * re-register) and on the config file's dir. sysfs cannot be watched, so PCI/mdev binding changes
 * are picked up by the slow rescan or by any dev/config event.
 */
import { EventEmitter } from 'node:events';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { Backoff, sleep } from '../lib/backoff.js';
import { DirWatcher } from '../lib/dir-watch.js';
import { InvalidArgument, errorMessage, sysErrorCode } from '../lib/errors.js';
import { writeFileAtomic } from '../lib/fs-atomic.js';
import type { Logger } from '../lib/log.js';
import { buildCdiSpec, CDI_SPEC_FILE } from './cdi.js';
import { DEFAULT_CONFIG, parseConfig, validateConfig, type PluginConfig, type RawConfig } from './config.js';
import { discover } from './discovery.js';
import { mergeAdvertised, planResources } from './plan.js';
import { PluginServer } from './plugin-server.js';
import { kubeletSocketKey, registerWithKubelet } from './registration.js';
import { KUBELET_SOCKET } from './resources.js';

export interface DevicePluginStartOptions {
  kubeletDir: string;
  devRoot: string;
  sysRoot: string;
  configFile?: string | undefined;
  config?: RawConfig | undefined;
  cdiDir: string | null;
  logger: Logger;
  resyncMs?: number;
}

export interface ResourceStatus {
  resourceName: string;
  socket: string;
  registered: boolean;
  healthy: number;
  total: number;
  openStreams: number;
}

export interface DevicePluginHandle {
  stop(): Promise<void>;
  /** Served resources, sorted by name. */
  resources(): ResourceStatus[];
  /** Rescans now and resolves when the result is applied. */
  reconcile(): Promise<void>;
  /** The effective (last good) configuration. */
  config(): PluginConfig;
  /** The error of the last rejected config file, cleared by the next good one. */
  lastConfigError(): string | undefined;
  readonly events: EventEmitter;
}

class Controller implements DevicePluginHandle {
  readonly events = new EventEmitter();
  private cfg: PluginConfig;
  private cfgText: string | undefined;
  private cfgError: string | undefined;
  private readonly servers = new Map<string, PluginServer>();
  private readonly registeredKey = new Map<string, string>();
  private readonly kubeletSocket: string;
  private watchers: DirWatcher[] = [];
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  /** Every change to `servers` runs through this chain: reconciles and socket restarts never interleave. */
  private chain: Promise<void> = Promise.resolve();
  private reconcileQueued: Promise<void> | undefined;
  private kicked = false;
  private kick = new AbortController();
  private loop: Promise<void> | undefined;
  private lastCdi: string | undefined;

  constructor(
    private readonly o: DevicePluginStartOptions,
    initial: PluginConfig,
    initialText: string | undefined,
  ) {
    this.cfg = initial;
    this.cfgText = initialText;
    this.kubeletSocket = path.join(o.kubeletDir, KUBELET_SOCKET);
  }

  private get log(): Logger {
    return this.o.logger;
  }

  async start(): Promise<void> {
    await fs.mkdir(this.o.kubeletDir, { recursive: true });
    // Watches first, so nothing that happens during the first scan is missed.
    this.watchers.push(new DirWatcher([this.o.kubeletDir], (_d, name) => this.onKubeletDirEvent(name)));
    this.watchers.push(
      new DirWatcher([this.o.devRoot, path.join(this.o.devRoot, 'net'), path.join(this.o.devRoot, 'vfio')], () => this.background(this.reconcile())),
    );
    if (this.o.configFile) {
      const file = path.resolve(this.o.configFile);
      // Any event in the directory: editors and ConfigMap mounts replace files via renames and symlinks.
      this.watchers.push(new DirWatcher([path.dirname(file)], () => this.background(this.reloadConfig())));
      // An edit between the initial read and the watch would otherwise go unseen.
      this.background(this.reloadConfig());
    }
    await this.reconcile();
    this.loop = this.registrationLoop();
    const resync = this.o.resyncMs ?? 30_000;
    if (resync > 0) {
      this.timer = setInterval(() => {
        // The safety net for everything a watch can miss: sysfs changes, a dead watch on the
        // kubelet dir (own socket gone), a kubelet instance we have not registered with.
        this.background(this.reconcile());
        for (const name of this.servers.keys()) this.background(this.ensureServing(name));
        this.wake();
      }, resync);
      this.timer.unref();
    }
  }

  config(): PluginConfig {
    return this.cfg;
  }

  lastConfigError(): string | undefined {
    return this.cfgError;
  }

  resources(): ResourceStatus[] {
    return [...this.servers.values()]
      .map((s) => ({
        resourceName: s.resourceName,
        socket: s.socketPath,
        registered: this.registeredKey.has(s.resourceName),
        healthy: s.plan.devices.filter((d) => d.healthy).length,
        total: s.plan.devices.length,
        openStreams: s.openStreams,
      }))
      .sort((a, b) => a.resourceName.localeCompare(b.resourceName));
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const w of this.watchers) w.close();
    if (this.timer) clearInterval(this.timer);
    this.wake();
    await this.loop;
    await this.serial(async () => {
      await Promise.all([...this.servers.values()].map((s) => s.stop()));
      this.servers.clear();
    });
  }

  /** For event handlers: failures are already logged by `serial`, and must not become unhandled rejections. */
  private background(p: Promise<void>): void {
    p.catch(() => undefined);
  }

  private serial(fn: () => Promise<void>): Promise<void> {
    const run = this.chain.then(fn);
    this.chain = run.catch((e: unknown) => this.log.error({ err: errorMessage(e) }, 'device plugin update failed'));
    return run;
  }

  /** Coalesces bursts of events into one rescan queued behind the current one. */
  reconcile(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    this.reconcileQueued ??= this.serial(async () => {
      this.reconcileQueued = undefined;
      await this.apply();
    });
    return this.reconcileQueued;
  }

  private async apply(): Promise<void> {
    if (this.stopped) return;
    const cfg = this.cfg;
    const inv = await discover(
      { dev: this.o.devRoot, sys: this.o.sysRoot },
      { pci: cfg.pciHostDevices.length > 0, mdev: cfg.mediatedDevices.length > 0 },
    );
    const plans = planResources(cfg, inv);
    const wanted = new Set(plans.map((p) => p.resourceName));
    for (const [name, server] of this.servers) {
      if (wanted.has(name)) continue;
      await server.stop();
      this.servers.delete(name);
      this.registeredKey.delete(name);
    }
    let added = false;
    for (const planned of plans) {
      const existing = this.servers.get(planned.resourceName);
      const plan = mergeAdvertised(existing?.plan.devices, planned);
      if (existing) {
        if (existing.update(plan)) this.events.emit('devices', plan.resourceName);
        continue;
      }
      // A resource is first advertised when it has a device to offer; afterwards it stays
      // (Unhealthy when its devices go away) until the configuration drops it.
      if (!plan.devices.some((d) => d.healthy)) continue;
      const server = new PluginServer(this.o.kubeletDir, plan, this.log);
      await server.start();
      this.servers.set(plan.resourceName, server);
      added = true;
    }
    await this.writeCdi();
    if (added) this.wake();
  }

  private async writeCdi(): Promise<void> {
    if (this.o.cdiDir === null) return;
    const spec = JSON.stringify(buildCdiSpec([...this.servers.values()].map((s) => s.plan)), null, 2) + '\n';
    if (spec === this.lastCdi) return;
    await writeFileAtomic(path.join(this.o.cdiDir, CDI_SPEC_FILE), spec);
    this.lastCdi = spec;
  }

  private async reloadConfig(): Promise<void> {
    const file = this.o.configFile;
    if (!file || this.stopped) return;
    let text: string;
    try {
      text = await fs.readFile(file, 'utf8');
    } catch (e) {
      if (sysErrorCode(e) === 'ENOENT') return; // mid-replace, or removed: keep the last good config
      this.rejectConfig(`config ${file}: ${errorMessage(e)}`);
      return;
    }
    if (text === this.cfgText) return;
    this.cfgText = text;
    let next: PluginConfig;
    try {
      next = parseConfig(text, `config ${file}`);
    } catch (e) {
      this.rejectConfig(errorMessage(e));
      return;
    }
    this.cfgError = undefined;
    this.cfg = next;
    this.log.info({ config: next }, 'config applied');
    await this.reconcile();
    this.events.emit('config-applied');
  }

  private rejectConfig(message: string): void {
    this.cfgError = message;
    this.log.error({ err: message }, 'config rejected; the last good config stays in effect');
    this.events.emit('config-rejected', message);
  }

  private onKubeletDirEvent(name: string | null): void {
    if (this.stopped) return;
    if (name === null || name === KUBELET_SOCKET) this.wake();
    for (const s of this.servers.values()) {
      if (name === null || name === path.basename(s.socketPath)) this.background(this.ensureServing(s.resourceName));
    }
  }

  /** Serves again on a socket that disappeared (the kubelet removes plugin sockets when it restarts). */
  private ensureServing(resourceName: string): Promise<void> {
    return this.serial(async () => {
      const s = this.servers.get(resourceName);
      if (!s || this.stopped) return;
      if (await socketExists(s.socketPath)) return;
      this.log.info({ resource: resourceName }, 'socket removed (kubelet restart?): serving again');
      this.registeredKey.delete(resourceName);
      await s.restart();
      this.wake();
    });
  }

  private wake(): void {
    this.kicked = true;
    this.kick.abort();
    this.kick = new AbortController();
  }

  /**
   * Registers every served resource with the current kubelet.sock instance. Woken by kubelet dir
   * events and new resources; while the kubelet is absent or refuses, retries with backoff.
   */
  private async registrationLoop(): Promise<void> {
    const backoff = new Backoff(200, 10_000);
    let saidWaiting = false;
    while (!this.stopped) {
      this.kicked = false;
      const signal = this.kick.signal;
      const key = await kubeletSocketKey(this.kubeletSocket);
      if (key !== undefined) saidWaiting = false;
      const pending = [...this.servers.values()].filter((s) => key === undefined || this.registeredKey.get(s.resourceName) !== key);
      let failed = key === undefined && pending.length > 0;
      if (key !== undefined && pending.length > 0) {
        const results = await Promise.allSettled(pending.map((s) => this.registerOne(s, key)));
        failed = results.some((r) => r.status === 'rejected');
      }
      if (failed) {
        const ms = backoff.next();
        if (key === undefined) {
          if (!saidWaiting) this.log.info({ socket: this.kubeletSocket }, 'kubelet.sock is absent; waiting for the kubelet');
          saidWaiting = true;
        }
        if (!this.kicked) await sleep(ms, signal);
      } else {
        backoff.reset();
        if (!this.kicked) await sleep(2 ** 31 - 1, signal);
      }
    }
  }

  private async registerOne(s: PluginServer, key: string): Promise<void> {
    if (!(await socketExists(s.socketPath))) await this.ensureServing(s.resourceName);
    if (this.servers.get(s.resourceName) !== s || this.stopped) return;
    try {
      await registerWithKubelet(this.kubeletSocket, { endpoint: path.basename(s.socketPath), resourceName: s.resourceName, options: s.options() });
    } catch (e) {
      this.log.warn({ resource: s.resourceName, err: errorMessage(e) }, 'register failed; will retry');
      throw e;
    }
    this.registeredKey.set(s.resourceName, key);
    this.log.info({ resource: s.resourceName }, 'registered with kubelet');
    this.events.emit('registered', s.resourceName);
  }
}

async function socketExists(p: string): Promise<boolean> {
  try {
    return (await fs.lstat(p)).isSocket();
  } catch {
    return false;
  }
}

export async function startDevicePlugin(options: DevicePluginStartOptions): Promise<DevicePluginHandle> {
  let cfg = options.config ? validateConfig(options.config, 'config') : DEFAULT_CONFIG;
  let text: string | undefined;
  if (options.configFile) {
    try {
      text = await fs.readFile(options.configFile, 'utf8');
    } catch (e) {
      throw new InvalidArgument(`config ${options.configFile}: ${sysErrorCode(e) === 'ENOENT' ? 'file does not exist' : errorMessage(e)}`);
    }
    cfg = parseConfig(text, `config ${options.configFile}`);
  }
  const c = new Controller(options, cfg, text);
  try {
    await c.start();
  } catch (e) {
    await c.stop();
    throw e;
  }
  return c;
}
