import { parseBool } from './cni-args.js';
import { CniCode, CniError } from './cni-error.js';
import { parseResult, type CniDns, type CniResult } from './result.js';
import { isSupportedVersion, SUPPORTED_VERSIONS } from './versions.js';

export type Mode = 'tap' | 'migration';
/** Where the IPAM plugin's reservations live: one store per node, or one for the cluster (cni/ipam-owner.ts). */
export type IpamScope = 'node' | 'cluster';

/** Rates in bits/s and bursts in bits, as the CNI `bandwidth` capability has them. */
export interface Bandwidth {
  ingressRate?: number;
  ingressBurst?: number;
  egressRate?: number;
  egressBurst?: number;
}

export interface Attachment {
  containerID: string;
  ifname: string;
}

/** The validated network configuration of one request. */
export interface NetConf {
  cniVersion: string;
  name: string;
  type: string;
  mode: Mode;
  bridge: string;
  /** The bridge carries the gateway of each IPAM address (cni/plan.ts bridgeGatewayAddrs). */
  isGateway: boolean;
  mtu: number | undefined;
  multiQueue: boolean;
  owner: number | undefined;
  group: number | undefined;
  /** MAC from the config's own `mac` key (lowest precedence). */
  mac: string | undefined;
  migrationTarget: boolean;
  ipamType: string | undefined;
  dns: CniDns | undefined;
  bandwidth: Bandwidth | undefined;
  runtimeConfig: { mac?: string; ips?: string[]; bandwidth?: Bandwidth; migrationTarget?: boolean; ipamKey?: string };
  args: { mac?: string; ips?: string[]; migrationTarget?: boolean; ipamKey?: string };
  /** Where keyed IPAM reservations are recorded (cni/ipam-owner.ts). */
  stateDir: string;
  /** Config `ipamScope`; absent: decided by the IPAM type (cni/ipam-owner.ts ipamScopeOf). */
  ipamScope?: IpamScope;
  prevResult: CniResult | undefined;
  validAttachments: Attachment[] | undefined;
  /** The config exactly as received, for delegation to IPAM. */
  raw: Record<string, unknown>;
}

export const DEFAULT_BRIDGE = 'podvirt0';
/** Next to host-local's default store (/var/lib/cni/networks): both must survive a reboot together. */
export const DEFAULT_STATE_DIR = '/var/lib/cni/podvirt';
/** An IPAM owner key becomes the delegate's CNI_CONTAINERID, so it obeys the same rules (plus a length cap for file names). */
const IPAM_KEY_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;
export const MAX_IPAM_KEY = 128;
export const MAX_CONFIG_BYTES = 1024 * 1024;

/** Keys the plugin accepts at the top level, canonical spelling. Go matches JSON keys case-insensitively; so do we. */
const TOP_KEYS = [
  'cniVersion',
  'cniVersions',
  'name',
  'type',
  'disableCheck',
  'disableGC',
  'loadOnlyInlinedPlugins',
  'capabilities',
  'runtimeConfig',
  'args',
  'prevResult',
  'ipam',
  'dns',
  'ipMasq',
  'mode',
  'bridge',
  'isGateway',
  'mtu',
  'multiQueue',
  'owner',
  'group',
  'mac',
  'migrationTarget',
  'bandwidth',
  'agentSocket',
  'stateDir',
  'ipamScope',
] as const;
type TopKey = (typeof TOP_KEYS)[number];
const CANON = new Map<string, TopKey>(TOP_KEYS.map((k) => [k.toLowerCase(), k]));

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

const invalid = (msg: string, details = ''): CniError => new CniError(CniCode.InvalidNetworkConfig, msg, details);

const NAME_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;
const MAC_RE = /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/;

/** Interface name rules of the kernel and libcni: 1-15 bytes, not `.`/`..`, no `/`, `:` or whitespace. */
export function ifnameProblem(name: string): string | undefined {
  if (name.length === 0) return 'is empty';
  if (Buffer.byteLength(name) > 15) return `"${name}" is longer than 15 characters`;
  if (name === '.' || name === '..') return `"${name}" is not allowed`;
  if (/[/:\s]/.test(name)) return `"${name}" contains "/", ":" or whitespace`;
  return undefined;
}

export function normalizeMac(v: string, what: string): string {
  if (!MAC_RE.test(v)) throw invalid(`invalid MAC address ${JSON.stringify(v)} in ${what}`);
  const mac = v.toLowerCase();
  if (parseInt(mac.slice(0, 2), 16) & 1) throw invalid(`MAC address ${mac} in ${what} is multicast`);
  if (mac === '00:00:00:00:00:00') throw invalid(`MAC address in ${what} is all zeroes`);
  return mac;
}

/** Folds keys to their canonical spelling (case-insensitive, as Go's encoding/json). */
function canonical(o: Obj, known: readonly string[]): Obj {
  const byLower = new Map(known.map((k) => [k.toLowerCase(), k]));
  const out: Obj = {};
  for (const [k, v] of Object.entries(o)) out[byLower.get(k.toLowerCase()) ?? k] = v;
  return out;
}

function optBool(v: unknown, what: string): boolean | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'boolean') throw invalid(`${what} must be a boolean`);
  return v;
}
function optInt(v: unknown, what: string, min: number, max: number): number | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw invalid(`${what} must be an integer between ${min} and ${max}`);
  }
  return v;
}
function optStr(v: unknown, what: string): string | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw invalid(`${what} must be a string`);
  return v;
}
function optIpamKey(v: unknown, what: string): string | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw invalid(`${what} must be a string`);
  if (!IPAM_KEY_RE.test(v) || v.length > MAX_IPAM_KEY) {
    throw invalid(`invalid ${what} ${JSON.stringify(v.slice(0, MAX_IPAM_KEY + 1))}`, `an IPAM key is 1-${MAX_IPAM_KEY} characters of [A-Za-z0-9_.-], starting with a letter or digit`);
  }
  return v;
}
function optIps(v: unknown, what: string): string[] | undefined {
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) throw invalid(`${what} must be a list of strings`);
  return v as string[];
}
const MAX_RATE = Number.MAX_SAFE_INTEGER;
function optBandwidth(v: unknown, what: string): Bandwidth | undefined {
  if (v === undefined || v === null) return undefined;
  if (!isObj(v)) throw invalid(`${what} must be an object`);
  const o = canonical(v, ['rate', 'burst', 'ingressRate', 'ingressBurst', 'egressRate', 'egressBurst']);
  const bw: Bandwidth = {};
  for (const k of Object.keys(o)) {
    if (!['rate', 'burst', 'ingressRate', 'ingressBurst', 'egressRate', 'egressBurst'].includes(k)) {
      throw new CniError(CniCode.UnsupportedField, `unsupported field ${what}.${k}`);
    }
  }
  const rate = optInt(o.rate, `${what}.rate`, 1, MAX_RATE);
  const burst = optInt(o.burst, `${what}.burst`, 1, MAX_RATE);
  const set = (k: keyof Bandwidth, val: number | undefined) => {
    if (val !== undefined) bw[k] = val;
  };
  set('ingressRate', optInt(o.ingressRate, `${what}.ingressRate`, 1, MAX_RATE) ?? rate);
  set('egressRate', optInt(o.egressRate, `${what}.egressRate`, 1, MAX_RATE) ?? rate);
  set('ingressBurst', optInt(o.ingressBurst, `${what}.ingressBurst`, 1, MAX_RATE) ?? burst);
  set('egressBurst', optInt(o.egressBurst, `${what}.egressBurst`, 1, MAX_RATE) ?? burst);
  return Object.keys(bw).length ? bw : undefined;
}

/** Parses stdin into a JSON object: code 6 when it is not JSON, 7 when it is not an object. */
export function decodeConfig(stdin: Buffer): Obj {
  if (stdin.length > MAX_CONFIG_BYTES) {
    throw new CniError(CniCode.DecodingFailure, 'failed to decode network config', `config is larger than ${MAX_CONFIG_BYTES} bytes`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(stdin.toString('utf8'));
  } catch (e) {
    throw new CniError(CniCode.DecodingFailure, 'failed to decode network config', (e as Error).message);
  }
  if (!isObj(raw)) throw new CniError(CniCode.DecodingFailure, 'failed to decode network config', 'not a JSON object');
  return raw;
}

/** Validates the version only (what VERSION and the early checks need). */
export function configVersion(raw: Obj): string {
  const o = canonical(raw, TOP_KEYS);
  const v = o.cniVersion;
  if (v === undefined || v === '') return '0.1.0';
  if (typeof v !== 'string') throw invalid('cniVersion must be a string');
  return v;
}

export function parseNetConf(raw: Obj): NetConf {
  const o = canonical(raw, TOP_KEYS);
  for (const k of Object.keys(o)) {
    if (!CANON.has(k.toLowerCase()) && !k.startsWith('cni.dev/')) {
      throw new CniError(CniCode.UnsupportedField, `unsupported field "${k}" in network configuration`);
    }
  }
  if (o.name === undefined || o.name === '') throw invalid('missing network name');
  if (typeof o.name !== 'string' || !NAME_RE.test(o.name)) throw invalid(`invalid network name ${JSON.stringify(o.name)}`);
  const cniVersion = configVersion(raw);
  if (!isSupportedVersion(cniVersion)) {
    throw new CniError(
      CniCode.IncompatibleVersion,
      'incompatible CNI versions',
      `config is "${cniVersion}", plugin supports ${JSON.stringify(SUPPORTED_VERSIONS)}`,
    );
  }
  const type = optStr(o.type, 'type') ?? '';
  if (o.ipMasq === true) throw new CniError(CniCode.UnsupportedField, 'unsupported field "ipMasq": true (podvirt does no NAT)');

  const mode = o.mode ?? 'tap';
  if (mode !== 'tap' && mode !== 'migration') throw invalid(`mode must be "tap" or "migration", not ${JSON.stringify(mode)}`);
  const bridge = optStr(o.bridge, 'bridge') ?? DEFAULT_BRIDGE;
  const bridgeProblem = ifnameProblem(bridge);
  if (bridgeProblem) throw invalid(`bridge name ${bridgeProblem}`);
  optStr(o.agentSocket, 'agentSocket');

  let ipamType: string | undefined;
  if (o.ipam !== undefined && o.ipam !== null) {
    if (!isObj(o.ipam)) throw invalid('ipam must be an object');
    const t = canonical(o.ipam, ['type']).type;
    if (t !== undefined) {
      if (typeof t !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(t)) throw invalid('ipam.type must be a plugin name');
      ipamType = t;
    }
  }
  if (mode === 'migration' && !ipamType) throw invalid('mode "migration" needs an ipam plugin');
  const isGateway = optBool(o.isGateway, 'isGateway') ?? false;
  if (isGateway && !ipamType) throw invalid('isGateway needs an ipam plugin: the bridge takes the gateway of its result');

  let dns: CniDns | undefined;
  if (o.dns !== undefined && o.dns !== null) {
    if (!isObj(o.dns)) throw invalid('dns must be an object');
    dns = parseResult({ cniVersion: '1.0.0', dns: o.dns }).dns;
  }

  const rcRaw = o.runtimeConfig ?? {};
  if (!isObj(rcRaw)) throw invalid('runtimeConfig must be an object');
  const rc = canonical(rcRaw, ['mac', 'ips', 'bandwidth', 'migrationTarget', 'ipamKey']);
  const runtimeConfig: NetConf['runtimeConfig'] = {};
  const rcMac = optStr(rc.mac, 'runtimeConfig.mac');
  if (rcMac) runtimeConfig.mac = normalizeMac(rcMac, 'runtimeConfig.mac');
  const rcIps = optIps(rc.ips, 'runtimeConfig.ips');
  if (rcIps) runtimeConfig.ips = rcIps;
  const rcBw = optBandwidth(rc.bandwidth, 'runtimeConfig.bandwidth');
  if (rcBw) runtimeConfig.bandwidth = rcBw;
  const rcTarget = optBool(rc.migrationTarget, 'runtimeConfig.migrationTarget');
  if (rcTarget !== undefined) runtimeConfig.migrationTarget = rcTarget;
  const rcKey = optIpamKey(rc.ipamKey, 'runtimeConfig.ipamKey');
  if (rcKey !== undefined) runtimeConfig.ipamKey = rcKey;

  const argsRaw = o.args ?? {};
  if (!isObj(argsRaw)) throw invalid('args must be an object');
  const cniArgsRaw = canonical(argsRaw, ['cni']).cni ?? {};
  if (!isObj(cniArgsRaw)) throw invalid('args.cni must be an object');
  const ca = canonical(cniArgsRaw, ['mac', 'ips', 'migrationTarget', 'ipamKey']);
  const args: NetConf['args'] = {};
  const aMac = optStr(ca.mac, 'args.cni.mac');
  if (aMac) args.mac = normalizeMac(aMac, 'args.cni.mac');
  const aIps = optIps(ca.ips, 'args.cni.ips');
  if (aIps) args.ips = aIps;
  const aTarget = typeof ca.migrationTarget === 'string' ? parseBool(ca.migrationTarget, 'args.cni.migrationTarget') : optBool(ca.migrationTarget, 'args.cni.migrationTarget');
  if (aTarget !== undefined) args.migrationTarget = aTarget;
  const aKey = optIpamKey(ca.ipamKey, 'args.cni.ipamKey');
  if (aKey !== undefined) args.ipamKey = aKey;

  const stateDir = optStr(o.stateDir, 'stateDir') ?? DEFAULT_STATE_DIR;
  if (!stateDir.startsWith('/')) throw invalid('stateDir must be an absolute path');
  const ipamScope = optStr(o.ipamScope, 'ipamScope');
  if (ipamScope !== undefined && ipamScope !== 'node' && ipamScope !== 'cluster') throw invalid(`ipamScope must be "node" or "cluster", not ${JSON.stringify(ipamScope)}`);

  const bandwidth = optBandwidth(o.bandwidth, 'bandwidth');
  if (bandwidth && mode !== 'migration') throw new CniError(CniCode.UnsupportedField, 'unsupported field "bandwidth": only mode "migration" has a bandwidth cap');

  let prevResult: CniResult | undefined;
  if (o.prevResult !== undefined && o.prevResult !== null) {
    try {
      prevResult = parseResult(o.prevResult);
    } catch (e) {
      throw invalid('invalid prevResult', (e as CniError).details || (e as Error).message);
    }
  }

  let validAttachments: Attachment[] | undefined;
  const va = raw['cni.dev/valid-attachments'] ?? raw['cni.dev/attachments'];
  if (va !== undefined) {
    if (!Array.isArray(va)) throw invalid('cni.dev/valid-attachments must be a list');
    validAttachments = va.map((a, i) => {
      if (!isObj(a)) throw invalid(`cni.dev/valid-attachments[${i}] must be an object`);
      const c = canonical(a, ['containerID', 'ifname']);
      return {
        containerID: optStr(c.containerID, `valid-attachments[${i}].containerID`) ?? '',
        ifname: optStr(c.ifname, `valid-attachments[${i}].ifname`) ?? '',
      };
    });
  }

  const macRaw = optStr(o.mac, 'mac');
  return {
    cniVersion,
    name: o.name,
    type,
    mode,
    bridge,
    isGateway,
    mtu: optInt(o.mtu, 'mtu', 68, 65535),
    multiQueue: optBool(o.multiQueue, 'multiQueue') ?? false,
    owner: optInt(o.owner, 'owner', 0, 0xffffffff),
    group: optInt(o.group, 'group', 0, 0xffffffff),
    mac: macRaw ? normalizeMac(macRaw, 'mac') : undefined,
    migrationTarget: optBool(o.migrationTarget, 'migrationTarget') ?? false,
    ipamType,
    dns,
    bandwidth,
    runtimeConfig,
    args,
    stateDir,
    ...(ipamScope ? { ipamScope } : {}),
    prevResult,
    validAttachments,
    raw,
  };
}
