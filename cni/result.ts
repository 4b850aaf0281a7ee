import { CniCode, CniError } from './cni-error.js';
import { compareVersions } from './versions.js';

/** A CNI result held in the 1.1.0 shape internally; `formatResult` prints older shapes. */
export interface CniInterface {
  name: string;
  mac?: string;
  mtu?: number;
  sandbox?: string;
  socketPath?: string;
  pciID?: string;
}
export interface CniIp {
  address: string;
  gateway?: string;
  interface?: number;
}
export interface CniRoute {
  dst: string;
  gw?: string;
  mtu?: number;
  advmss?: number;
  priority?: number;
  table?: number;
  scope?: number;
}
export interface CniDns {
  nameservers?: string[];
  domain?: string;
  search?: string[];
  options?: string[];
}
export interface CniResult {
  cniVersion: string;
  interfaces?: CniInterface[];
  ips?: CniIp[];
  routes?: CniRoute[];
  dns?: CniDns;
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

function bad(what: string): never {
  throw new CniError(CniCode.DecodingFailure, 'failed to decode result', what);
}
function str(o: Obj, k: string, where: string, required = false): string | undefined {
  const v = o[k];
  if (v === undefined || v === null) return required ? bad(`${where}.${k} missing`) : undefined;
  return typeof v === 'string' ? v : bad(`${where}.${k} must be a string`);
}
function num(o: Obj, k: string, where: string): number | undefined {
  const v = o[k];
  if (v === undefined || v === null) return undefined;
  return typeof v === 'number' && Number.isInteger(v) ? v : bad(`${where}.${k} must be an integer`);
}
function strList(o: Obj, k: string, where: string): string[] | undefined {
  const v = o[k];
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) bad(`${where}.${k} must be a list of strings`);
  return v as string[];
}
function list(o: Obj, k: string): Obj[] {
  const v = o[k];
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v) || !v.every(isObj)) bad(`${k} must be a list of objects`);
  return v as Obj[];
}
function defined<T extends object>(o: T): T {
  for (const k of Object.keys(o) as (keyof T)[]) if (o[k] === undefined) delete o[k];
  return o;
}

/** Parses a 0.3.x/0.4.0/1.x result (an IPAM plugin's or a prevResult) into the internal shape. */
export function parseResult(raw: unknown): CniResult {
  if (!isObj(raw)) bad('result must be a JSON object');
  const cniVersion = str(raw, 'cniVersion', 'result') ?? '1.0.0';
  if (compareVersions(cniVersion, '0.3.0') < 0) bad(`result version ${cniVersion} is not supported`);
  const interfaces = list(raw, 'interfaces').map((i, n) =>
    defined<CniInterface>({
      name: str(i, 'name', `interfaces[${n}]`, true) as string,
      mac: str(i, 'mac', `interfaces[${n}]`),
      mtu: num(i, 'mtu', `interfaces[${n}]`),
      sandbox: str(i, 'sandbox', `interfaces[${n}]`),
      socketPath: str(i, 'socketPath', `interfaces[${n}]`),
      pciID: str(i, 'pciID', `interfaces[${n}]`),
    }),
  );
  const ips = list(raw, 'ips').map((i, n) =>
    defined<CniIp>({
      address: str(i, 'address', `ips[${n}]`, true) as string,
      gateway: str(i, 'gateway', `ips[${n}]`),
      interface: num(i, 'interface', `ips[${n}]`),
    }),
  );
  const routes = list(raw, 'routes').map((r, n) =>
    defined<CniRoute>({
      dst: str(r, 'dst', `routes[${n}]`, true) as string,
      gw: str(r, 'gw', `routes[${n}]`),
      mtu: num(r, 'mtu', `routes[${n}]`),
      advmss: num(r, 'advmss', `routes[${n}]`),
      priority: num(r, 'priority', `routes[${n}]`),
      table: num(r, 'table', `routes[${n}]`),
      scope: num(r, 'scope', `routes[${n}]`),
    }),
  );
  let dns: CniDns | undefined;
  if (raw.dns !== undefined && raw.dns !== null) {
    if (!isObj(raw.dns)) bad('dns must be an object');
    dns = defined<CniDns>({
      nameservers: strList(raw.dns, 'nameservers', 'dns'),
      domain: str(raw.dns, 'domain', 'dns'),
      search: strList(raw.dns, 'search', 'dns'),
      options: strList(raw.dns, 'options', 'dns'),
    });
  }
  return defined<CniResult>({ cniVersion, interfaces, ips, routes, dns });
}

export function ipFamily(cidr: string): '4' | '6' {
  return cidr.includes(':') ? '6' : '4';
}

/**
 * Prints a result in the requested version: 0.3.x/0.4.0 carry `ips[].version`; 1.1.0-only fields
 * (interface `mtu`/`socketPath`/`pciID`, route `mtu`/`advmss`/`priority`/`table`/`scope`) are
 * dropped for older versions.
 */
export function formatResult(r: CniResult, version: string): Record<string, unknown> {
  const v11 = compareVersions(version, '1.1.0') >= 0;
  const v1 = compareVersions(version, '1.0.0') >= 0;
  const out: Record<string, unknown> = { cniVersion: version };
  if (r.interfaces?.length) {
    out.interfaces = r.interfaces.map((i) =>
      defined({
        name: i.name,
        mac: i.mac,
        mtu: v11 ? i.mtu : undefined,
        sandbox: i.sandbox,
        socketPath: v11 ? i.socketPath : undefined,
        pciID: v11 ? i.pciID : undefined,
      }),
    );
  }
  if (r.ips?.length) {
    out.ips = r.ips.map((ip) =>
      defined({
        version: v1 ? undefined : ipFamily(ip.address),
        interface: ip.interface,
        address: ip.address,
        gateway: ip.gateway,
      }),
    );
  }
  if (r.routes?.length) {
    out.routes = r.routes.map((rt) =>
      v11 ? defined({ ...rt }) : defined({ dst: rt.dst, gw: rt.gw }),
    );
  }
  out.dns = r.dns ? defined({ ...r.dns }) : {};
  return out;
}
