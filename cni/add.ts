import { checkNetns, isMigrationTarget, requestedMac } from './attachment.js';
import { CniCode, CniError } from './cni-error.js';
import type { CniContext } from './context.js';
import { applyLines, applyOps, ensureBridge, ensureBridgeGateway, readLinkAttr, runBatch, startBatch, undoLines, type PendingBatch } from './host.js';
import { acquireIpam, releaseIpam } from './ipam-owner.js';
import type { NetConf } from './netconf.js';
import { attachmentNames, bridgeGatewayAddrs, planBandwidth, planMigrationAdd, planTapAdd, randomMac, stableMac, tempTapName } from './plan.js';
import type { CniInterface, CniResult } from './result.js';

/**
 * ADD. IPAM runs concurrently with the link work in tap mode (they are independent until the
 * result is assembled). Anything that fails rolls back what this call made: the devices in the
 * pod (the veth's host end goes with its peer) and the IPAM reservation. The shared bridge stays,
 * and so do addresses `isGateway` gave it (other attachments use them).
 */
export async function cmdAdd(ctx: CniContext, conf: NetConf): Promise<CniResult> {
  checkNetns(ctx, true);
  const mac = requestedMac(ctx, conf) ?? randomMac();
  const migrationTarget = isMigrationTarget(ctx, conf);
  const names = attachmentNames(conf.name, ctx.containerId, ctx.ifname);
  const hostVethMac = randomMac();
  const podVethMac = randomMac();
  const withMtu = conf.mtu !== undefined ? { mtu: conf.mtu } : {};

  const ipam = acquireIpam(ctx, conf);
  ipam.catch(() => undefined); // awaited below; this only keeps an early rejection from being "unhandled"
  // Tap mode's tc batch needs the devices, but its process can start now (see startBatch).
  const podTc: PendingBatch | undefined = conf.mode === 'tap' ? startBatch(ctx.deps, ctx.netns, 'tc') : undefined;
  let undo: string[] = [];
  let gateway: Promise<void> | undefined;
  try {
    await ensureBridge(ctx.deps, conf.bridge, stableMac(`podvirt-bridge:${conf.bridge}`), conf.mtu);
    if (conf.isGateway) {
      // Needs only the bridge and IPAM's answer: off the critical path of the pod's link work.
      gateway = ipam.then((r) => ensureBridgeGateway(ctx.deps, conf.bridge, bridgeGatewayAddrs(r.result?.ips ?? [])));
      gateway.catch(() => undefined); // awaited below
    }
    const bridgeIndex = Number(readLinkAttr(ctx.deps, conf.bridge, 'ifindex'));
    if (!Number.isInteger(bridgeIndex) || bridgeIndex <= 0) throw new CniError(CniCode.Internal, `cannot read the ifindex of bridge ${conf.bridge}`);
    const veth = { netns: ctx.netns, mtu: conf.mtu, names, hostVethMac, hostNetns: ctx.deps.hostNetns, bridgeIndex };
    let sandboxIfaces: CniInterface[];
    let ipamResult: CniResult | undefined;
    if (conf.mode === 'tap') {
      const plan = planTapAdd({
        ...veth,
        ifname: ctx.ifname,
        mac,
        multiQueue: conf.multiQueue,
        owner: conf.owner,
        group: conf.group,
        migrationTarget,
        podVethMac,
        tmpTap: tempTapName(),
      });
      const pod = await runBatch(ctx.deps, ctx.netns, 'ip', plan.pod.map((o) => o.line));
      undo = undoLines(plan.pod.slice(0, pod.done));
      if (pod.error) throw pod.error;
      const tc = await (podTc as PendingBatch).feed(plan.podTc);
      if (tc.error) throw tc.error;
      ipamResult = (await ipam).result;
      sandboxIfaces = [
        { name: ctx.ifname, mac, ...withMtu, sandbox: ctx.netns },
        { name: names.podVeth, mac: podVethMac, ...withMtu, sandbox: ctx.netns },
      ];
    } else {
      ipamResult = (await ipam).result;
      const ops = planMigrationAdd({ ...veth, ifname: ctx.ifname, mac, ips: ipamResult?.ips ?? [], routes: ipamResult?.routes ?? [] });
      undo = await applyOps(ctx.deps, ctx.netns, ops);
      const tc = planBandwidth(ctx.ifname, names.hostVeth, conf.runtimeConfig.bandwidth ?? conf.bandwidth);
      await applyLines(ctx.deps, ctx.netns, 'tc', tc.pod);
      await applyLines(ctx.deps, null, 'tc', tc.host);
      sandboxIfaces = [{ name: ctx.ifname, mac, ...withMtu, sandbox: ctx.netns }];
    }
    await gateway;
    const result: CniResult = {
      cniVersion: conf.cniVersion,
      interfaces: [
        { name: conf.bridge, mac: readLinkAttr(ctx.deps, conf.bridge, 'address') ?? '' },
        { name: names.hostVeth, mac: hostVethMac, ...withMtu },
        ...sandboxIfaces,
      ],
      ips: (ipamResult?.ips ?? []).map((ip) => ({ ...ip, interface: 2 })),
    };
    if (ipamResult?.routes?.length) result.routes = ipamResult.routes;
    const dns = conf.dns ?? ipamResult?.dns;
    if (dns) result.dns = dns;
    ctx.logger.info(
      { containerId: ctx.containerId, ifname: ctx.ifname, mode: conf.mode, migrationTarget, mac, ips: result.ips?.map((i) => i.address) },
      'attached',
    );
    return result;
  } catch (e) {
    await gateway?.catch(() => undefined);
    await podTc?.feed([]).catch(() => undefined);
    await runBatch(ctx.deps, ctx.netns, 'ip', undo, true).catch(() => undefined);
    // Only what this ADD reserved (or joined, with an IPAM key) is undone.
    const reserved = await ipam.then(
      (r) => r.joined,
      () => false,
    );
    if (reserved) {
      await releaseIpam(ctx, conf).catch((err: unknown) =>
        ctx.logger.error({ err: String(err), containerId: ctx.containerId }, 'rollback: IPAM DEL failed'),
      );
    }
    throw e;
  }
}
