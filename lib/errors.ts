/**
 * Typed errors, raised where the fact is known and mapped once at the edge
 * (gRPC status in lib/grpc-server.ts, CNI error codes in cni/).
 */
export type ErrorKind =
  | 'InvalidArgument'
  | 'NotFound'
  | 'AlreadyExists'
  | 'FailedPrecondition'
  | 'Aborted'
  | 'Unavailable'
  | 'ResourceExhausted'
  | 'OutOfRange'
  | 'Unimplemented'
  | 'DeadlineExceeded'
  | 'Internal';

export class PodvirtError extends Error {
  readonly kind: ErrorKind;
  readonly details: Record<string, unknown> | undefined;
  constructor(kind: ErrorKind, message: string, options?: { cause?: unknown; details?: Record<string, unknown> }) {
    super(message, options?.cause !== undefined ? { cause: options.cause } : undefined);
    this.name = kind;
    this.kind = kind;
    this.details = options?.details;
  }
}

type Opts = { cause?: unknown; details?: Record<string, unknown> };
const make = (kind: ErrorKind) =>
  class extends PodvirtError {
    constructor(message: string, options?: Opts) {
      super(kind, message, options);
    }
  };

export class InvalidArgument extends make('InvalidArgument') {}
export class NotFound extends make('NotFound') {}
export class AlreadyExists extends make('AlreadyExists') {}
export class FailedPrecondition extends make('FailedPrecondition') {}
export class Aborted extends make('Aborted') {}
export class Unavailable extends make('Unavailable') {}
export class ResourceExhausted extends make('ResourceExhausted') {}
export class OutOfRange extends make('OutOfRange') {}
export class Unimplemented extends make('Unimplemented') {}
export class DeadlineExceeded extends make('DeadlineExceeded') {}
export class Internal extends make('Internal') {}

export function isPodvirtError(e: unknown): e is PodvirtError {
  return e instanceof PodvirtError;
}

/** Message of anything thrown, without assuming it is an Error. */
export function errorMessage(e: unknown): string {
  if (e instanceof Error) return e.message;
  if (typeof e === 'string') return e;
  try {
    return JSON.stringify(e);
  } catch {
    return String(e);
  }
}

/** The errno-style code of a Node system error (`'ENOENT'`), if any. Never a gRPC status. */
export function sysErrorCode(e: unknown): string | undefined {
  if (typeof e === 'object' && e !== null && 'code' in e) {
    const c = (e as { code: unknown }).code;
    return typeof c === 'string' ? c : undefined;
  }
  return undefined;
}
