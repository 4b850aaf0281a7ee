import { existsSync } from 'node:fs';
import type { CniContext } from './context.js';
import { linkExists, runBatch } from './host.js';
import { releaseIpam } from './ipam-owner.js';
import type { NetConf } from './netconf.js';
import { attachmentNames, planDelPod } from './plan.js';

/**
 * DEL: best effort and idempotent (SPEC.md §4; containernetworking/cni#309). The netns, the links
 * or the reservation may already be gone and a second DEL must succeed; only an IPAM failure is
 * reported, because a leaked address is the one thing the runtime can retry its way out of.
 * With an IPAM owner key the reservation is released only by its last holder, and with a
 * cluster-wide IPAM only when this node owns it (not a provisional migration target, not handed
 * over to another node: cni/ipam-owner.ts).
 */
export async function cmdDel(ctx: CniContext, conf: NetConf): Promise<void> {
  const names = attachmentNames(conf.name, ctx.containerId, ctx.ifname);
  const links = (async () => {
    if (ctx.netns && existsSync(ctx.netns)) {
      const out = await runBatch(ctx.deps, ctx.netns, 'ip', planDelPod(names), true);
      if (out.error && !/Cannot find device|No such device|does not exist/.test(out.error.result.stderr)) {
        ctx.logger.warn({ err: out.error.message, netns: ctx.netns }, 'DEL: removing links in the netns failed');
      }
    }
    // Deleting the pod end removed the pair; the host end is left only when the netns was gone
    // but still held (a veth dies with its netns, but not before every reference is dropped).
    if (linkExists(ctx.deps, names.hostVeth)) {
      await runBatch(ctx.deps, null, 'ip', [`link del ${names.hostVeth}`], true);
    }
  })();
  const [ipam, linkOutcome] = await Promise.allSettled([releaseIpam(ctx, conf), links]);
  if (linkOutcome.status === 'rejected') {
    ctx.logger.warn({ err: String(linkOutcome.reason) }, 'DEL: link clean-up failed');
  }
  if (ipam.status === 'rejected') throw ipam.reason;
  ctx.logger.info({ containerId: ctx.containerId, ifname: ctx.ifname }, 'detached');
}
