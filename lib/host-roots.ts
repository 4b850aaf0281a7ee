import * as path from 'node:path';

/**
 * Every host path podvirt touches hangs off one of these roots, so tests and
 * containerised deployments can point them elsewhere.
 */
export interface HostRoots {
  dev: string;
  sys: string;
  proc: string;
  /** Runtime state (sockets, pid files): /run/podvirt on a real host. */
  run: string;
  /** Durable state (volumes, VM topology): /var/lib/podvirt on a real host. */
  state: string;
  /** The kubelet's root: /var/lib/kubelet. */
  kubelet: string;
}

export const DEFAULT_ROOTS: HostRoots = {
  dev: '/dev',
  sys: '/sys',
  proc: '/proc',
  run: '/run/podvirt',
  state: '/var/lib/podvirt',
  kubelet: '/var/lib/kubelet',
};

export function hostRoots(overrides: Partial<HostRoots> = {}): HostRoots {
  return { ...DEFAULT_ROOTS, ...overrides };
}

/** Joins `rel` under `root`, refusing to escape it (`..`, absolute components). */
export function under(root: string, ...rel: string[]): string {
  const joined = path.resolve(root, ...rel.map((r) => r.replace(/^\/+/, '')));
  const base = path.resolve(root);
  if (joined !== base && !joined.startsWith(base + path.sep)) {
    throw new Error(`path ${rel.join('/')} escapes ${root}`);
  }
  return joined;
}
