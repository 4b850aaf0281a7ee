import * as path from 'node:path';
import { startDevicePlugin, type DevicePluginHandle } from '../../plugins/device-plugin.js';
import { KubeletDeviceManager } from '../../plugins/kubelet-side.js';
import type { Logger } from '../../lib/log.js';

/** What a container gets from the device plugins (the kubelet merges these into the container config). */
export interface DeviceGrant {
  /** Device IDs per resource, kept so a restarted agent can re-claim them and `stop` can release them. */
  ids: Record<string, string[]>;
  envs: Record<string, string>;
  /** Host device nodes the container may open, with their cgroup permissions. */
  devices: { hostPath: string; containerPath: string; permissions: string }[];
}

export interface LocalDevicesOptions {
  /** Directory playing `/var/lib/kubelet/device-plugins`. */
  kubeletDir: string;
  devRoot?: string;
  sysRoot?: string;
  log: Logger;
}

/**
 * Local mode's kubelet device manager: the real device plugin runs in the agent process and registers
 * over gRPC with a kubelet-side Registration server in a private kubelet dir; pods get their devices
 * through ListAndWatch + Allocate exactly as a kubelet would ask for them.
 */
export class LocalDevices {
  private kubelet: KubeletDeviceManager | undefined;
  private plugin: DevicePluginHandle | undefined;

  constructor(private readonly opts: LocalDevicesOptions) {}

  async start(): Promise<void> {
    this.kubelet = new KubeletDeviceManager({ dir: this.opts.kubeletDir, logger: this.opts.log });
    await this.kubelet.start();
    this.plugin = await startDevicePlugin({
      kubeletDir: this.opts.kubeletDir,
      devRoot: this.opts.devRoot ?? '/dev',
      sysRoot: this.opts.sysRoot ?? '/sys',
      cdiDir: null,
      logger: this.opts.log,
    });
  }

  async stop(): Promise<void> {
    await this.plugin?.stop();
    await this.kubelet?.stop();
    this.plugin = undefined;
    this.kubelet = undefined;
  }

  /** Allocates `count` devices of each resource (explicit IDs re-claim a running pod's devices after an agent restart). */
  async allocate(want: Record<string, number | readonly string[]>): Promise<DeviceGrant> {
    const k = this.kubelet;
    if (!k) throw new Error('device manager not started');
    const grant: DeviceGrant = { ids: {}, envs: {}, devices: [] };
    try {
      for (const [resource, req] of Object.entries(want)) {
        if (typeof req === 'number' && req === 0) continue;
        await k.waitForResource(resource, (r) => r.healthy.length > 0, 10_000);
        const a = await k.allocate(resource, req);
        grant.ids[resource] = a.deviceIds;
        Object.assign(grant.envs, a.response.envs ?? {});
        for (const d of a.response.devices ?? []) {
          grant.devices.push({ hostPath: d.host_path, containerPath: d.container_path, permissions: d.permissions });
        }
      }
    } catch (e) {
      this.release(grant.ids);
      throw e;
    }
    return grant;
  }

  release(ids: Record<string, readonly string[]>): void {
    for (const [resource, list] of Object.entries(ids)) this.kubelet?.release(resource, list);
  }

  static defaultKubeletDir(stateDir: string): string {
    return path.join(stateDir, 'kubelet', 'device-plugins');
  }
}
