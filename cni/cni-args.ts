import { CniCode, CniError } from './cni-error.js';

/**
 * `CNI_ARGS` keys podvirt understands. Anything else is an error unless `IgnoreUnknown=1|true`
 * (libcni `types.LoadArgs`); Kubernetes runtimes always send that.
 */
const KNOWN = new Set([
  'IgnoreUnknown',
  'MAC',
  'IP',
  'GATEWAY',
  'K8S_POD_NAMESPACE',
  'K8S_POD_NAME',
  'K8S_POD_INFRA_CONTAINER_ID',
  'K8S_POD_UID',
  'MIGRATION_TARGET',
]);

/** Our own keys: stripped before the environment is handed to the IPAM plugin, which would reject them. */
export const PODVIRT_ONLY_ARGS = ['MIGRATION_TARGET'];

export function parseBool(v: string, what: string): boolean {
  const l = v.toLowerCase();
  if (l === '1' || l === 'true') return true;
  if (l === '0' || l === 'false') return false;
  throw new CniError(CniCode.InvalidEnvironment, `invalid boolean for ${what}: ${v}`);
}

/** Splits `K=V;K2=V2`. A value containing `=` is kept whole (as Multus does), an item without `=` is an error. */
export function parseCniArgs(raw: string | undefined): Map<string, string> {
  const out = new Map<string, string>();
  if (!raw) return out;
  for (const item of raw.split(';')) {
    if (item === '') continue;
    const eq = item.indexOf('=');
    if (eq <= 0) throw new CniError(CniCode.InvalidEnvironment, `invalid CNI_ARGS pair "${item}"`);
    out.set(item.slice(0, eq), item.slice(eq + 1));
  }
  const ignore = out.has('IgnoreUnknown') && parseBool(out.get('IgnoreUnknown') as string, 'IgnoreUnknown');
  if (!ignore) {
    for (const k of out.keys()) {
      if (!KNOWN.has(k)) throw new CniError(CniCode.InvalidEnvironment, `unknown CNI_ARGS key "${k}" (set IgnoreUnknown=1 to ignore)`);
    }
  }
  return out;
}

/** `CNI_ARGS` without podvirt's own keys, for delegates. */
export function stripPodvirtArgs(raw: string | undefined): string | undefined {
  if (!raw) return raw;
  return raw
    .split(';')
    .filter((item) => !PODVIRT_ONLY_ARGS.includes(item.slice(0, item.indexOf('='))))
    .join(';');
}
