/**
 * A typed, promise-based CSI client over a unix socket, for podvirt's tests, benchmarks and the
 * node agent's local mode (which drives the in-process driver the way a kubelet would).
 *
 *   const c = new CsiClient('/run/x/csi.sock');           // or 'unix:///run/x/csi.sock'
 *   const { volume } = await c.controller.CreateVolume({ name: 'disk1', volume_capabilities: [...] });
 *   await c.node.NodeStageVolume({ volume_id: volume!.volume_id, ... });
 *   c.close();
 *
 * `identity`, `controller` and `node` expose every RPC of the CSI v1 Identity, Controller and
 * Node services under its proto name, taking the request message (fields optional, snake_case,
 * int64 as string or number) and resolving with the response message (`__Output` types: all
 * fields present, int64 as string, enums as names). A failed call rejects with the grpc-js
 * ServiceError (`code` is the gRPC status); `isGrpcCode(e, status.NOT_FOUND)` tests it.
 */
import * as grpc from '@grpc/grpc-js';
import { loadProto, lookupService } from '../lib/grpc-server.js';
import type { IdentityClient } from '../proto/gen/csi/v1/csi/v1/Identity.js';
import type { ControllerClient } from '../proto/gen/csi/v1/csi/v1/Controller.js';
import type { NodeClient } from '../proto/gen/csi/v1/csi/v1/Node.js';

export interface CallOptions {
  /** Per-call deadline (default 120 s: staging formats a filesystem). */
  deadlineMs?: number;
}

type Unary<F> = F extends (argument: infer Req, callback: grpc.requestCallback<infer Res>) => grpc.ClientUnaryCall
  ? (req?: Req, opts?: CallOptions) => Promise<Res>
  : never;

type Promised<C> = {
  [M in keyof C as M extends `${Uppercase<string & M>[0]}${string}` ? (M extends Capitalize<string & M> ? M : never) : never]: Unary<C[M]>;
};

export type IdentityApi = Pick<Promised<IdentityClient>, 'GetPluginInfo' | 'GetPluginCapabilities' | 'Probe'>;
export type ControllerApi = Pick<
  Promised<ControllerClient>,
  | 'CreateVolume'
  | 'DeleteVolume'
  | 'ControllerPublishVolume'
  | 'ControllerUnpublishVolume'
  | 'ValidateVolumeCapabilities'
  | 'ListVolumes'
  | 'GetCapacity'
  | 'ControllerGetCapabilities'
  | 'CreateSnapshot'
  | 'DeleteSnapshot'
  | 'ListSnapshots'
  | 'GetSnapshot'
  | 'ControllerExpandVolume'
  | 'ControllerGetVolume'
  | 'ControllerModifyVolume'
>;
export type NodeApi = Pick<
  Promised<NodeClient>,
  | 'NodeStageVolume'
  | 'NodeUnstageVolume'
  | 'NodePublishVolume'
  | 'NodeUnpublishVolume'
  | 'NodeGetVolumeStats'
  | 'NodeExpandVolume'
  | 'NodeGetCapabilities'
  | 'NodeGetInfo'
>;

function promised<T>(client: grpc.Client, ctor: grpc.ServiceClientConstructor): T {
  const api: Record<string, (req?: unknown, opts?: CallOptions) => Promise<unknown>> = {};
  for (const [name, def] of Object.entries(ctor.service)) {
    api[name] = (req = {}, opts = {}) =>
      new Promise((resolve, reject) => {
        client.makeUnaryRequest(
          def.path,
          def.requestSerialize,
          def.responseDeserialize,
          req,
          new grpc.Metadata(),
          { deadline: Date.now() + (opts.deadlineMs ?? 120_000) },
          (err: grpc.ServiceError | null, res?: unknown) => (err ? reject(err) : resolve(res)),
        );
      });
  }
  return api as T;
}

export class CsiClient {
  readonly identity: IdentityApi;
  readonly controller: ControllerApi;
  readonly node: NodeApi;
  private readonly channel: grpc.Client;

  constructor(socketPathOrEndpoint: string) {
    const target = socketPathOrEndpoint.startsWith('unix:') ? socketPathOrEndpoint : `unix://${socketPathOrEndpoint}`;
    const pkg = loadProto('csi/v1/csi.proto');
    const ident = lookupService(pkg, 'csi.v1.Identity');
    this.channel = new grpc.Client(target, grpc.credentials.createInsecure());
    this.identity = promised<IdentityApi>(this.channel, ident);
    this.controller = promised<ControllerApi>(this.channel, lookupService(pkg, 'csi.v1.Controller'));
    this.node = promised<NodeApi>(this.channel, lookupService(pkg, 'csi.v1.Node'));
  }

  close(): void {
    this.channel.close();
  }
}

/** Is `e` a gRPC error with this status code? */
export function isGrpcCode(e: unknown, code: grpc.status): boolean {
  return typeof e === 'object' && e !== null && (e as { code?: unknown }).code === code;
}
