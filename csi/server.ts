/**
 * The podvirt CSI driver as a library.
 *
 *   const drv = await startCsiDriver({ socketPath: '/run/x/csi.sock', nodeId: 'node-a', stateDir: '/var/lib/podvirt/csi' });
 *   ... // CSI calls over drv.socketPath (e.g. with csi/client.ts)
 *   await drv.stop();
 *
 * `startCsiDriver` binds the socket, reconciles the host with the durable state (Probe says
 * not ready meanwhile) and resolves once ready. `stop()` closes the socket only: staged
 * volumes keep their daemons, loop devices and mounts, exactly as across a driver restart;
 * unstage them (NodeUnstageVolume) to release them. Used by `podvirt csi` and by the node
 * agent's local mode, which runs the driver in-process.
 */
import * as grpc from '@grpc/grpc-js';
import { InvalidArgument } from '../lib/errors.js';
import { listenUnix, loadProto, lookupService, shutdownServer, unary } from '../lib/grpc-server.js';
import { silentLogger, type Logger } from '../lib/log.js';
import { DriverContext } from './context.js';
import { controllerService } from './controller.js';
import { identityService } from './identity.js';
import { validateNodeId } from './ids.js';
import { nodeService } from './node.js';
import { reconcile } from './reconcile.js';
import { QsdCgroup } from './qsd-cgroup.js';
import { StateStore } from './state.js';

export interface CsiDriverOptions {
  /** `unix:///path/csi.sock` (as in CSI_ENDPOINT); or give socketPath. */
  endpoint?: string;
  socketPath?: string;
  nodeId: string;
  stateDir: string;
  logger?: Logger;
  /** qemu-storage-daemon opens images with O_DIRECT (default false: buffered was faster, bench/csi.ts). */
  cacheDirect?: boolean;
  /**
   * cgroup (a relative path such as `podvirt/qsd`) the volume daemons join, under every hierarchy
   * mounted below `cgroupRoot`, so they outlive the driver's container; unset = they stay in the
   * driver's cgroup (tests, local mode).
   */
  qsdCgroup?: string;
  /** Where the host's cgroup hierarchies are mounted (default /sys/fs/cgroup). */
  cgroupRoot?: string;
}

export interface CsiDriver {
  readonly socketPath: string;
  readonly nodeId: string;
  stop(): Promise<void>;
}

/** `unix:///abs/path` or `unix:/abs/path` → `/abs/path`. */
export function socketPathOf(endpoint: string): string {
  const m = /^unix:(?:\/\/)?(\/.+)$/.exec(endpoint);
  if (!m) throw new InvalidArgument(`endpoint "${endpoint}" must be unix:///ABSOLUTE/PATH (CSI is served on unix sockets only)`);
  return m[1]!;
}

type AnyImpl = Record<string, (req: never) => Promise<unknown>>;

function handlers(impl: AnyImpl, log: Logger): grpc.UntypedServiceImplementation {
  const out: grpc.UntypedServiceImplementation = {};
  for (const [name, fn] of Object.entries(impl)) {
    out[name] = unary<never, unknown>(
      name,
      async (req) => {
        log.debug({ rpc: name }, 'rpc');
        return await fn(req);
      },
      log,
    ) as grpc.UntypedHandleCall;
  }
  return out;
}

export async function startCsiDriver(opts: CsiDriverOptions): Promise<CsiDriver> {
  const socketPath = opts.socketPath ?? (opts.endpoint !== undefined ? socketPathOf(opts.endpoint) : undefined);
  if (!socketPath) throw new InvalidArgument('an endpoint (unix:///PATH) or socketPath is required');
  const nodeId = validateNodeId(opts.nodeId);
  if (!opts.stateDir.startsWith('/')) throw new InvalidArgument(`state dir "${opts.stateDir}" must be absolute`);
  const log = opts.logger ?? silentLogger;
  const store = await StateStore.open(opts.stateDir);
  const qsdCgroup = opts.qsdCgroup ? new QsdCgroup(opts.qsdCgroup, opts.cgroupRoot ? { cgroupRoot: opts.cgroupRoot } : {}) : undefined;
  const ctx = new DriverContext({ nodeId, stateDir: opts.stateDir, logger: log, cacheDirect: opts.cacheDirect ?? false, ...(qsdCgroup ? { qsdCgroup } : {}) }, store);

  const pkg = loadProto('csi/v1/csi.proto');
  const server = new grpc.Server();
  server.addService(lookupService(pkg, 'csi.v1.Identity').service, handlers(identityService(ctx) as unknown as AnyImpl, log));
  server.addService(lookupService(pkg, 'csi.v1.Controller').service, handlers(controllerService(ctx) as unknown as AnyImpl, log));
  server.addService(lookupService(pkg, 'csi.v1.Node').service, handlers(nodeService(ctx) as unknown as AnyImpl, log));
  await listenUnix(server, socketPath);
  try {
    await reconcile(ctx);
  } catch (e) {
    await shutdownServer(server, 500);
    throw e;
  }
  ctx.ready = true;
  log.info({ socketPath, nodeId, stateDir: opts.stateDir, volumes: Object.keys(ctx.state.volumes).length }, 'CSI driver ready');
  return {
    socketPath,
    nodeId,
    async stop() {
      ctx.ready = false;
      await shutdownServer(server);
    },
  };
}
