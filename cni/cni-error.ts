import { ExecError } from '../lib/exec.js';
import { PodvirtError, errorMessage, type ErrorKind } from '../lib/errors.js';

/** CNI error codes (SPEC.md §5, libcni pkg/types). 0-99 are the spec's, 100+ plugin-specific. */
export const CniCode = {
  IncompatibleVersion: 1,
  UnsupportedField: 2,
  UnknownContainer: 3,
  InvalidEnvironment: 4,
  IoFailure: 5,
  DecodingFailure: 6,
  InvalidNetworkConfig: 7,
  InvalidNetNs: 8,
  TryAgainLater: 11,
  NotAvailable: 50,
  NotAvailableLimited: 51,
  Internal: 999,
} as const;

/** An error the plugin reports to the runtime as the spec's JSON on stdout. */
export class CniError extends Error {
  constructor(
    readonly code: number,
    message: string,
    readonly details = '',
  ) {
    super(message);
    this.name = 'CniError';
  }

  toJSON(cniVersion: string): Record<string, unknown> {
    const out: Record<string, unknown> = { cniVersion, code: this.code, msg: this.message };
    if (this.details) out.details = this.details;
    return out;
  }
}

const CODE_OF: Partial<Record<ErrorKind, number>> = {
  InvalidArgument: CniCode.InvalidNetworkConfig,
  NotFound: CniCode.UnknownContainer,
  AlreadyExists: CniCode.Internal,
  Unavailable: CniCode.TryAgainLater,
  Aborted: CniCode.TryAgainLater,
  DeadlineExceeded: CniCode.TryAgainLater,
};

/** The one place where anything thrown inside the plugin becomes a CNI error. */
export function toCniError(e: unknown): CniError {
  if (e instanceof CniError) return e;
  if (e instanceof PodvirtError) return new CniError(CODE_OF[e.kind] ?? CniCode.Internal, e.message);
  if (e instanceof ExecError) return new CniError(CniCode.Internal, 'host command failed', e.message);
  return new CniError(CniCode.Internal, 'internal error', errorMessage(e));
}
