import { promises as fs } from 'node:fs';
import type * as http from 'node:http';
import * as path from 'node:path';
import { FailedPrecondition, InvalidArgument, errorMessage, sysErrorCode } from '../../lib/errors.js';
import type { Logger } from '../../lib/log.js';
import { DhcpServer } from '../dhcp/server.js';
import { SandboxManager } from '../sandbox/sandbox.js';
import { LocalAgent } from './agent.js';
import type { NetworkBackend, VmBackend, VolumeBackend } from './backends.js';
import { serveControl } from './control.js';
import { parseBytes } from './quantity.js';
import { LocalDevices } from './devices.js';
import { ensureSharedMount, releaseSharedMount } from './local-launcher.js';
import { PodStore } from './pod-store.js';
import { LocalMigrations } from '../migration/local.js';
import { localMigrationHost } from '../migration/local-host.js';
import { migrationRoutes } from '../migration/routes.js';
import { parseLocalManifest } from './manifest.js';
import { parseVmSpec } from '../spec/index.js';
import { controlSocket, type LocalPaths } from './paths.js';

export interface DaemonOptions {
  paths: LocalPaths;
  log: Logger;
  reservedCpus: number[];
  networksDir: string;
  cgroupParent: string;
  netnsPrefix: string;
  volumes: VolumeBackend;
  networks: NetworkBackend;
  vms: VmBackend;
  vmShape: ConstructorParameters<typeof LocalAgent>[0]['vmShape'];
  dhcpPort?: number;
}

/** The running local agent: its components, the control socket, and how it ends. */
export interface LocalDaemon {
  agent: LocalAgent;
  /** Resolves when a shutdown was requested over the socket. */
  shutdownRequested: Promise<void>;
  /** Stops the components and the socket; VMs keep running (the next agent re-adopts them). */
  close(): Promise<void>;
}

/** One agent per run dir: a pid file created exclusively; a stale one (dead pid) is taken over. */
async function lockPidFile(file: string): Promise<void> {
  for (let i = 0; i < 2; i++) {
    try {
      const fh = await fs.open(file, 'wx', 0o644);
      await fh.writeFile(`${process.pid}\n`);
      await fh.close();
      return;
    } catch (e) {
      if (sysErrorCode(e) !== 'EEXIST') throw e;
      const pid = Number((await fs.readFile(file, 'utf8').catch(() => '')).trim());
      if (pid > 0 && pid !== process.pid) {
        try {
          process.kill(pid, 0);
          throw new FailedPrecondition(`another local agent (pid ${pid}) owns ${path.dirname(file)}`);
        } catch (ke) {
          if (sysErrorCode(ke) !== 'ESRCH') throw ke;
        }
      }
      await fs.rm(file, { force: true });
    }
  }
  throw new FailedPrecondition(`cannot take ${file}`);
}

export async function startLocalDaemon(o: DaemonOptions): Promise<LocalDaemon> {
  await fs.mkdir(o.paths.runDir, { recursive: true, mode: 0o755 });
  await fs.mkdir(o.paths.stateDir, { recursive: true, mode: 0o700 });
  const pidFile = path.join(o.paths.runDir, 'agent.pid');
  await lockPidFile(pidFile);
  const cleanups: (() => Promise<void>)[] = [async () => void (await fs.rm(pidFile, { force: true }))];
  const close = async () => {
    for (const c of cleanups.reverse()) await c().catch((e: unknown) => o.log.warn({ err: errorMessage(e) }, 'shutdown step failed'));
    cleanups.length = 0;
  };
  try {
    // Volumes published later (hotplug) must reach QEMUs already running in their own mount namespaces.
    await ensureSharedMount(o.paths.runDir);
    cleanups.push(async () => {
      if ((await new PodStore(o.paths).runningNames()).length === 0) await releaseSharedMount(o.paths.runDir);
    });
    const dhcp = new DhcpServer({ log: o.log, ...(o.dhcpPort !== undefined ? { port: o.dhcpPort } : {}) });
    await dhcp.start();
    cleanups.push(() => dhcp.stop());
    const devices = new LocalDevices({ kubeletDir: LocalDevices.defaultKubeletDir(o.paths.stateDir), log: o.log });
    await devices.start();
    cleanups.push(() => devices.stop());
    await o.volumes.start();
    cleanups.push(() => o.volumes.stop());
    await o.networks.start();
    cleanups.push(() => o.networks.stop());
    const sandboxes = new SandboxManager({
      stateDir: o.paths.stateDir,
      cgroupParent: o.cgroupParent,
      netnsPrefix: o.netnsPrefix,
      reservedCpus: o.reservedCpus,
    });
    const agent = new LocalAgent({
      paths: o.paths,
      log: o.log,
      sandboxes,
      devices,
      volumes: o.volumes,
      networks: o.networks,
      vms: o.vms,
      dhcp,
      networksDir: o.networksDir,
      vmShape: o.vmShape,
    });
    const { adopted, lost } = await agent.adoptAll();
    if (adopted.length || lost.length) o.log.info({ adopted, lost }, 're-adopted running VMs');
    cleanups.push(() => agent.releaseAll());

    let requestShutdown: () => void = () => undefined;
    const shutdownRequested = new Promise<void>((r) => (requestShutdown = r));
    const server: http.Server = await serveControl(controlSocket(o.paths), [
      { method: 'GET', path: '/ping', handler: async () => ({ pid: process.pid }) },
      // Live migration into a second local pod (agent/migration).
      ...migrationRoutes(new LocalMigrations(localMigrationHost({ agent, networks: o.networks, paths: o.paths, log: o.log, qemuUid: o.vms.uid, qemuGid: o.vms.gid }), path.join(o.paths.stateDir, 'migrations'), o.log), async (pod) => {
        const rt = await new PodStore(o.paths).loadRuntime(pod);
        return rt ? parseVmSpec(parseLocalManifest(rt.manifest).vmSpec).migration : undefined;
      }),
      { method: 'GET', path: '/pods', handler: async () => agent.ps() },
      {
        method: 'POST',
        path: '/pods',
        handler: async (body) => {
          const manifest = (body as { manifest?: unknown } | undefined)?.manifest;
          if (typeof manifest !== 'string') throw new InvalidArgument('body.manifest must be the Pod manifest text');
          return agent.run(manifest);
        },
      },
      { method: 'GET', path: '/pods/:name', handler: async (_b, [name]) => agent.status(name!) },
      {
        method: 'POST',
        path: '/pods/:name/stop',
        handler: async (body, [name]) => {
          const b = (body ?? {}) as { deleteVolumes?: boolean; timeoutMs?: number };
          return agent.stop(name!, { deleteVolumes: b.deleteVolumes === true, ...(b.timeoutMs !== undefined ? { timeoutMs: b.timeoutMs } : {}) });
        },
      },
      {
        method: 'POST',
        path: '/pods/:name/disks',
        handler: async (body, [name]) => {
          const b = (body ?? {}) as { disk?: unknown; size?: unknown; ephemeral?: unknown };
          if (typeof b.disk !== 'string') throw new InvalidArgument('body.disk (the disk name) is required');
          const sizeBytes = parseBytes(b.size ?? '', 'body.size');
          return agent.hotplugDisk(name!, { disk: b.disk, sizeBytes, ephemeral: b.ephemeral !== false });
        },
      },
      {
        method: 'POST',
        path: '/pods/:name/disks/:disk/unplug',
        handler: async (body, [name, disk]) => agent.unplugDisk(name!, disk!, (body as { timeoutMs?: number } | undefined)?.timeoutMs),
      },
      {
        method: 'POST',
        path: '/pods/:name/interfaces',
        handler: async (body, [name]) => {
          const b = (body ?? {}) as { iface?: unknown; network?: unknown };
          if (typeof b.iface !== 'string' || typeof b.network !== 'string') throw new InvalidArgument('body.iface and body.network are required');
          return agent.hotplugNic(name!, { iface: b.iface, network: b.network });
        },
      },
      {
        method: 'POST',
        path: '/pods/:name/interfaces/:iface/unplug',
        handler: async (body, [name, iface]) => agent.unplugNic(name!, iface!, (body as { timeoutMs?: number } | undefined)?.timeoutMs),
      },
      {
        method: 'POST',
        path: '/shutdown',
        handler: async () => {
          setImmediate(requestShutdown);
          return { pid: process.pid };
        },
      },
    ]);
    cleanups.push(async () => {
      await new Promise<void>((r) => server.close(() => r()));
      await fs.rm(controlSocket(o.paths), { force: true });
    });
    return { agent, shutdownRequested, close };
  } catch (e) {
    await close();
    throw e;
  }
}
