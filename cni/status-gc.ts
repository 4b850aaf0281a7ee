import { existsSync } from 'node:fs';
import { CniCode, CniError } from './cni-error.js';
import type { CniContext } from './context.js';
import { runBatch } from './host.js';
import { delegateIpam, delegateSupports } from './ipam.js';
import { gcDelegateConfig, gcOwners } from './ipam-owner.js';
import type { NetConf } from './netconf.js';
import { attachmentNames } from './plan.js';

/**
 * STATUS (1.1): ready when taps can be made and the IPAM plugin is ready. An IPAM plugin older
 * than 1.1.0 has no STATUS (Debian 12's answers it with an error): it counts as ready.
 */
export async function cmdStatus(ctx: CniContext, conf: NetConf): Promise<void> {
  if (conf.mode === 'tap' && !existsSync('/dev/net/tun')) throw new CniError(CniCode.NotAvailable, '/dev/net/tun is missing');
  if (conf.ipamType && (await delegateSupports(ctx, conf, '1.1.0'))) await delegateIpam(ctx, conf, 'STATUS');
}

/**
 * GC (1.1): removes this network's host veths (found by the network's link group) that belong
 * to no attachment in `cni.dev/valid-attachments` (a veth normally dies with its netns; this
 * catches netns that were leaked while held open), drops IPAM owner keys no valid attachment
 * holds any more (releasing those this node owns, as a last DEL would), then forwards GC to
 * IPAM when it knows GC, with the keys still held added to the valid attachments (the delegate
 * knows those reservations by key, not by container ID). Continues past errors and reports the
 * first.
 */
export async function cmdGc(ctx: CniContext, conf: NetConf): Promise<void> {
  const keep = new Set((conf.validAttachments ?? []).map((a) => attachmentNames(conf.name, a.containerID, a.ifname).hostVeth));
  const group = attachmentNames(conf.name, '', '').hostGroup;
  const errors: unknown[] = [];
  try {
    // iproute2 prints `{}` for every link outside the group.
    const links = JSON.parse((await ctx.deps.exec('ip', ['-j', 'link', 'show', 'group', String(group)], { timeoutMs: 30_000 })).stdout || '[]') as {
      ifname?: string;
    }[];
    const stale = links.map((l) => l.ifname ?? '').filter((n) => n.startsWith('pvh') && !keep.has(n));
    if (stale.length) {
      ctx.logger.info({ links: stale }, 'GC: removing stale attachments');
      await runBatch(ctx.deps, null, 'ip', stale.map((n) => `link del ${n}`), true);
    }
  } catch (e) {
    errors.push(e);
  }
  const owners = await gcOwners(ctx, conf);
  errors.push(...owners.errors);
  try {
    if (conf.ipamType && (await delegateSupports(ctx, conf, '1.1.0'))) {
      await delegateIpam(ctx, conf, 'GC', conf.validAttachments === undefined ? {} : { raw: gcDelegateConfig(conf.raw, owners.attachments) });
    }
  } catch (e) {
    errors.push(e);
  }
  if (errors.length) throw errors[0];
}
