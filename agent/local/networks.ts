import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { InvalidArgument, NotFound, sysErrorCode } from '../../lib/errors.js';

/** The embedded default network: a podvirt tap on bridge `podvirt0`, host-local addresses in 10.89.0.0/24. */
export const DEFAULT_NETWORK = 'podvirt0';
export function defaultNetworkConfig(): Record<string, unknown> {
  return {
    cniVersion: '1.0.0',
    name: DEFAULT_NETWORK,
    type: 'podvirt',
    mode: 'tap',
    bridge: 'podvirt0',
    mtu: 1500,
    ipam: { type: 'host-local', ranges: [[{ subnet: '10.89.0.0/24', gateway: '10.89.0.1' }]], routes: [{ dst: '0.0.0.0/0' }] },
  };
}

/**
 * The CNI config of a NetworkAttachmentDefinition, looked up in order: a NAD document in FILE, then
 * `<networks dir>/<name>.json` (or `.conf`; the NAD's `spec.config` text), then the embedded
 * default for `podvirt0`. host-local IPAM without a `dataDir` gets one under the state dir, and a
 * podvirt config without a `stateDir` (its IPAM owner records) gets `<state dir>/cni` next to it, so
 * local mode never writes to /var/lib/cni and separate state dirs never share reservations.
 */
export async function resolveNetworkConfig(
  name: string,
  inFile: ReadonlyMap<string, string>,
  networksDir: string,
  ipamDir: string,
): Promise<Record<string, unknown>> {
  let text = inFile.get(name);
  if (text === undefined) {
    for (const ext of ['.json', '.conf']) {
      try {
        text = await fs.readFile(path.join(networksDir, `${name}${ext}`), 'utf8');
        break;
      } catch (e) {
        if (sysErrorCode(e) !== 'ENOENT') throw e;
      }
    }
  }
  let conf: Record<string, unknown>;
  if (text !== undefined) {
    try {
      conf = JSON.parse(text) as Record<string, unknown>;
    } catch (e) {
      throw new InvalidArgument(`network ${name}: config is not JSON: ${(e as Error).message}`);
    }
    if (typeof conf !== 'object' || conf === null || Array.isArray(conf)) throw new InvalidArgument(`network ${name}: config must be a JSON object`);
  } else if (name === DEFAULT_NETWORK) {
    conf = defaultNetworkConfig();
  } else {
    throw new NotFound(`network ${name}: no NetworkAttachmentDefinition in FILE and no ${path.join(networksDir, `${name}.json`)}`);
  }
  if (conf.plugins !== undefined) throw new InvalidArgument(`network ${name}: conflists are not supported in local mode; give one plugin config`);
  conf = { ...conf, name: typeof conf.name === 'string' ? conf.name : name };
  const ipam = conf.ipam as Record<string, unknown> | undefined;
  if (ipam && ipam.type === 'host-local' && ipam.dataDir === undefined) {
    conf.ipam = { ...ipam, dataDir: ipamDir };
  }
  // Kept with host-local's store: a record and the reservation it counts must live and die together.
  if (conf.type === 'podvirt' && conf.stateDir === undefined) conf.stateDir = path.join(path.dirname(ipamDir), 'cni');
  return conf;
}

/**
 * The VM's IPAM owner key in local mode (cni/ipam-owner.ts): the guest's address belongs to the VM,
 * not to whichever pod runs it, so a migration target on this machine shares the source's
 * reservation and the source's DEL does not free it. A migration target carries its source's key
 * here (agent/migration/local.ts `targetManifest`); a first pod's key is derived from its name.
 */
export const IPAM_KEY_ANNOTATION = 'vm.podvirt.io/ipam-key';

export function vmIpamKey(pod: { name: string; annotations: Record<string, string> }): string {
  return pod.annotations[IPAM_KEY_ANNOTATION] ?? `podvirt-vm-${pod.name}`;
}

/** `ip/prefix` → parts. */
export function splitCidr(cidr: string): { ip: string; prefix: number } {
  const [ip, p] = cidr.split('/');
  const prefix = Number(p);
  if (!ip || !Number.isInteger(prefix)) throw new InvalidArgument(`not a CIDR: ${cidr}`);
  return { ip, prefix };
}
