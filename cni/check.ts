import { readlinkSync } from 'node:fs';
import * as path from 'node:path';
import { checkNetns } from './attachment.js';
import { CniCode, CniError } from './cni-error.js';
import type { CniContext } from './context.js';
import { inNetns, linkExists, readLinkAddrs } from './host.js';
import { checkIpam } from './ipam-owner.js';
import type { NetConf } from './netconf.js';
import { attachmentNames, bridgeGatewayAddrs, missingBridgeAddrs } from './plan.js';

/** Plugin-specific code (100+) for "an attachment this plugin made is missing or wrong". */
export const CHECK_FAILED = 100;

interface IpLink {
  ifname: string;
  address?: string;
  mtu?: number;
  flags?: string[];
  linkinfo?: { info_kind?: string; info_data?: { type?: string; multi_queue?: boolean; user?: number; group?: number } };
  addr_info?: { local?: string; prefixlen?: number }[];
}

interface TcFilter {
  options?: { actions?: { kind?: string; mirred_action?: string; to_dev?: string }[] };
}

const fail = (msg: string): CniError => new CniError(CHECK_FAILED, msg);

/**
 * CHECK against prevResult: IPAM's own CHECK, the host veth on the right bridge (which, with
 * `isGateway`, carries the gateway addresses), and inside the
 * netns the tap (kind, MAC, MTU, queues, owner) with both redirects, or the migration veth with
 * its addresses.
 */
export async function cmdCheck(ctx: CniContext, conf: NetConf): Promise<void> {
  const prev = conf.prevResult;
  if (!prev) throw new CniError(CniCode.InvalidNetworkConfig, 'Required prevResult missing');
  checkNetns(ctx, false);
  await checkIpam(ctx, conf, fail);
  const names = attachmentNames(conf.name, ctx.containerId, ctx.ifname);
  if (!linkExists(ctx.deps, names.hostVeth)) throw fail(`host veth ${names.hostVeth} is missing`);
  let master = '';
  try {
    master = path.basename(readlinkSync(`${ctx.deps.sysRoot}/class/net/${names.hostVeth}/master`));
  } catch {
    /* not enslaved */
  }
  if (master !== conf.bridge) throw fail(`host veth ${names.hostVeth} is not on bridge ${conf.bridge}`);
  if (conf.isGateway) {
    const missing = missingBridgeAddrs(bridgeGatewayAddrs(prev.ips ?? []), await readLinkAddrs(ctx.deps, conf.bridge));
    if (missing.length) throw fail(`bridge ${conf.bridge} lacks its gateway address ${missing.map((a) => `${a.ip}/${a.prefix}`).join(', ')}`);
  }

  const idx = prev.interfaces?.findIndex((i) => i.name === ctx.ifname && i.sandbox === ctx.netns) ?? -1;
  const want = idx >= 0 ? prev.interfaces?.[idx] : undefined;
  if (!want) throw fail(`prevResult has no interface ${ctx.ifname} in ${ctx.netns}`);

  const [cmd, args] = inNetns(ctx.netns, 'ip', ['-j', '-d', 'addr', 'show']);
  const links = JSON.parse((await ctx.deps.exec(cmd, args, { timeoutMs: 30_000 })).stdout) as IpLink[];
  const link = links.find((l) => l.ifname === ctx.ifname);
  if (!link) throw fail(`interface ${ctx.ifname} is missing in ${ctx.netns}`);
  if (want.mac && link.address?.toLowerCase() !== want.mac.toLowerCase()) {
    throw fail(`interface ${ctx.ifname} has MAC ${link.address}, expected ${want.mac}`);
  }
  if (conf.mtu !== undefined && link.mtu !== conf.mtu) throw fail(`interface ${ctx.ifname} has MTU ${link.mtu}, expected ${conf.mtu}`);
  const info = link.linkinfo;
  if (conf.mode === 'tap') {
    if (info?.info_kind !== 'tun' || info.info_data?.type !== 'tap') throw fail(`interface ${ctx.ifname} is not a tap`);
    if (Boolean(info.info_data.multi_queue) !== conf.multiQueue) throw fail(`tap ${ctx.ifname} multi-queue flag differs from the config`);
    if (conf.owner !== undefined && info.info_data.user !== conf.owner) throw fail(`tap ${ctx.ifname} owner differs from the config`);
    if (conf.group !== undefined && info.info_data.group !== conf.group) throw fail(`tap ${ctx.ifname} group differs from the config`);
    if (!links.some((l) => l.ifname === names.podVeth)) throw fail(`pod end ${names.podVeth} of the veth is missing`);
    for (const [from, to] of [
      [names.podVeth, ctx.ifname],
      [ctx.ifname, names.podVeth],
    ] as const) {
      const [tcCmd, tcArgs] = inNetns(ctx.netns, 'tc', ['-j', 'filter', 'show', 'dev', from, 'ingress']);
      const filters = JSON.parse((await ctx.deps.exec(tcCmd, tcArgs, { timeoutMs: 30_000 })).stdout || '[]') as TcFilter[];
      const ok = filters.some((f) => f.options?.actions?.some((a) => a.kind === 'mirred' && a.mirred_action === 'redirect' && a.to_dev === to));
      if (!ok) throw fail(`no redirect from ${from} to ${to} in ${ctx.netns}`);
    }
  } else {
    if (info?.info_kind !== 'veth') throw fail(`interface ${ctx.ifname} is not a veth`);
    const have = new Set((link.addr_info ?? []).map((a) => `${a.local}/${a.prefixlen}`));
    for (const ip of prev.ips ?? []) {
      if (ip.interface === idx && !have.has(ip.address)) throw fail(`address ${ip.address} is missing on ${ctx.ifname}`);
    }
  }
}
