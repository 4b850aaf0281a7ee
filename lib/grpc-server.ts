import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { PodvirtError, errorMessage, type ErrorKind } from './errors.js';
import type { Logger } from './log.js';
import { PROJECT_ROOT } from './project-root.js';

export const PROTO_DIR = path.join(PROJECT_ROOT, 'proto');

const STATUS_OF: Record<ErrorKind, grpc.status> = {
  InvalidArgument: grpc.status.INVALID_ARGUMENT,
  NotFound: grpc.status.NOT_FOUND,
  AlreadyExists: grpc.status.ALREADY_EXISTS,
  FailedPrecondition: grpc.status.FAILED_PRECONDITION,
  Aborted: grpc.status.ABORTED,
  Unavailable: grpc.status.UNAVAILABLE,
  ResourceExhausted: grpc.status.RESOURCE_EXHAUSTED,
  OutOfRange: grpc.status.OUT_OF_RANGE,
  Unimplemented: grpc.status.UNIMPLEMENTED,
  DeadlineExceeded: grpc.status.DEADLINE_EXCEEDED,
  Internal: grpc.status.INTERNAL,
};

/** The one place where errors become gRPC statuses. */
export function toServiceError(e: unknown): Partial<grpc.StatusObject> {
  if (e instanceof PodvirtError) return { code: STATUS_OF[e.kind], details: e.message };
  return { code: grpc.status.INTERNAL, details: `internal error: ${errorMessage(e)}` };
}

/** Loads a .proto from proto/ with the options every podvirt service uses. */
export function loadProto(file: string): grpc.GrpcObject {
  const def = protoLoader.loadSync(path.join(PROTO_DIR, file), {
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
    includeDirs: [PROTO_DIR],
  });
  return grpc.loadPackageDefinition(def);
}

/** Resolves a dotted name such as `v1beta1.DevicePlugin` inside a loaded package. */
export function lookupService(pkg: grpc.GrpcObject, dotted: string): grpc.ServiceClientConstructor {
  let cur: unknown = pkg;
  for (const part of dotted.split('.')) {
    cur = (cur as Record<string, unknown> | undefined)?.[part];
  }
  if (typeof cur !== 'function' || !('service' in cur)) throw new Error(`no gRPC service ${dotted} in proto`);
  return cur as grpc.ServiceClientConstructor;
}

/**
 * Wraps an async handler: grpc-js does not catch rejected promises from handlers, so every
 * handler goes through here to get its typed error mapped and logged.
 */
export function unary<Req, Res>(
  name: string,
  handler: (req: Req, call: grpc.ServerUnaryCall<Req, Res>) => Promise<Res>,
  log?: Logger,
): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    handler(call.request, call).then(
      (res) => callback(null, res),
      (e: unknown) => {
        const se = toServiceError(e);
        log?.warn({ rpc: name, code: se.code, err: se.details }, 'rpc failed');
        callback(se, null);
      },
    );
  };
}

/** Binds a server on a unix socket, removing a stale socket file left by a previous run. */
export async function listenUnix(server: grpc.Server, socketPath: string): Promise<void> {
  await fs.mkdir(path.dirname(socketPath), { recursive: true });
  await fs.rm(socketPath, { force: true });
  await new Promise<void>((resolve, reject) => {
    server.bindAsync(`unix://${socketPath}`, grpc.ServerCredentials.createInsecure(), (err) =>
      err ? reject(err) : resolve(),
    );
  });
}

/** Shuts a server down, forcing it after `graceMs`. */
export async function shutdownServer(server: grpc.Server, graceMs = 2000): Promise<void> {
  await new Promise<void>((resolve) => {
    const t = setTimeout(() => {
      server.forceShutdown();
      resolve();
    }, graceMs);
    server.tryShutdown(() => {
      clearTimeout(t);
      resolve();
    });
  });
}

/** A client for a service on a unix socket. */
export function unixClient<C extends grpc.Client>(
  ctor: grpc.ServiceClientConstructor,
  socketPath: string,
): C {
  return new ctor(`unix://${socketPath}`, grpc.credentials.createInsecure()) as unknown as C;
}

/** Promisifies a unary client call. */
export function callUnary<Req, Res>(client: grpc.Client, method: string, req: Req, deadlineMs = 10_000): Promise<Res> {
  return new Promise((resolve, reject) => {
    const fn = (client as unknown as Record<string, unknown>)[method];
    if (typeof fn !== 'function') {
      reject(new Error(`client has no method ${method}`));
      return;
    }
    (fn as (r: Req, m: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r: Res) => void) => void).call(
      client,
      req,
      new grpc.Metadata(),
      { deadline: Date.now() + deadlineMs },
      (err, res) => (err ? reject(err) : resolve(res)),
    );
  });
}
