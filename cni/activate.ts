import { existsSync } from 'node:fs';
import { InvalidArgument, NotFound } from '../lib/errors.js';
import { defaultHostDeps, runBatch, type HostDeps } from './host.js';
import { ifnameProblem } from './netconf.js';
import { planActivate } from './plan.js';

export interface ActivateTapOptions {
  /** Path of the pod's network namespace (CNI_NETNS of the ADD). */
  netns: string;
  /** The tap's name (CNI_IFNAME of the ADD). */
  ifname: string;
  deps?: HostDeps;
}

/**
 * Opens the datapath of a migration target's tap at switch-over: the pod end of its veth goes
 * up, so frames flow between the tap and the host bridge. Idempotent (already open is fine).
 * QEMU announces the VM (RARP/GARP self-announce) right after, which moves the MAC on the
 * segment. Throws NotFound when the netns or the tap is missing.
 */
export async function activateTap(opts: ActivateTapOptions): Promise<void> {
  const problem = ifnameProblem(opts.ifname);
  if (problem) throw new InvalidArgument(`ifname ${problem}`);
  if (!opts.netns.startsWith('/') || !existsSync(opts.netns)) throw new NotFound(`network namespace ${opts.netns} does not exist`);
  const out = await runBatch(opts.deps ?? defaultHostDeps, opts.netns, 'ip', planActivate(opts.ifname));
  if (out.error) {
    if (/Cannot find device|does not exist/.test(out.error.result.stderr)) {
      throw new NotFound(`no podvirt tap ${opts.ifname} in ${opts.netns}`, { cause: out.error });
    }
    throw out.error;
  }
}
