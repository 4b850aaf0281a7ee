import { statSync } from 'node:fs';
import { parseBool } from './cni-args.js';
import { CniCode, CniError } from './cni-error.js';
import type { CniContext } from './context.js';
import { normalizeMac, type NetConf } from './netconf.js';

/** MAC of the VM's interface: runtimeConfig.mac > args.cni.mac > CNI_ARGS MAC > config `mac`. */
export function requestedMac(ctx: CniContext, conf: NetConf): string | undefined {
  const fromArgs = ctx.cniArgs.get('MAC');
  return conf.runtimeConfig.mac ?? conf.args.mac ?? (fromArgs ? normalizeMac(fromArgs, 'CNI_ARGS MAC') : undefined) ?? conf.mac;
}

/** Migration target flag: runtimeConfig > args.cni > CNI_ARGS MIGRATION_TARGET > config. */
export function isMigrationTarget(ctx: CniContext, conf: NetConf): boolean {
  const fromArgs = ctx.cniArgs.get('MIGRATION_TARGET');
  return (
    conf.runtimeConfig.migrationTarget ??
    conf.args.migrationTarget ??
    (fromArgs !== undefined ? parseBool(fromArgs, 'CNI_ARGS MIGRATION_TARGET') : undefined) ??
    conf.migrationTarget
  );
}

/** The netns must exist, and ADD must not target the plugin's own netns (libcni ErrInvalidNetNS). */
export function checkNetns(ctx: CniContext, forAdd: boolean): void {
  let ns;
  try {
    ns = statSync(ctx.netns);
  } catch {
    throw new CniError(CniCode.UnknownContainer, `network namespace ${ctx.netns} does not exist`);
  }
  if (!forAdd) return;
  const override = ctx.env.CNI_NETNS_OVERRIDE;
  if (override === '1' || override === 'true') return;
  try {
    const own = statSync('/proc/self/ns/net');
    if (own.ino === ns.ino && own.dev === ns.dev) {
      throw new CniError(CniCode.InvalidNetNs, `CNI_NETNS ${ctx.netns} is the plugin's own network namespace`);
    }
  } catch (e) {
    if (e instanceof CniError) throw e;
  }
}
