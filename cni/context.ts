import type { HostDeps } from './host.js';
import type { CniLogger } from './logger.js';

/** Everything one request is handled with: validated environment plus injected host access. */
export interface CniContext {
  command: string;
  containerId: string;
  /** Empty for a DEL without a netns. */
  netns: string;
  ifname: string;
  cniArgs: Map<string, string>;
  cniPath: string[];
  /** The environment delegates (IPAM) are run with: the request's CNI_* over the process's own. */
  env: Record<string, string | undefined>;
  stdin: Buffer;
  logger: CniLogger;
  deps: CniDeps;
}

export interface CniDeps extends HostDeps {
  /** VERSION answers of delegate plugins, by path; a long-running server keeps them. */
  delegateVersions: Map<string, string[]>;
}
