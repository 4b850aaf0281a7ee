/**
 * Node labels that let VM pods (and migration targets) be scheduled by what the host can do:
 * KVM usable, CPU vendor/model and a curated set of CPU features, NUMA nodes, hugepages, and the
 * podvirt version. Plan (facts -> labels, pure) and apply (read the host, patch the Node).
 */
import { CoreV1Api, PatchStrategy, setHeaderOptions, type KubeConfig } from '@kubernetes/client-node';
import si from 'systeminformation';
import { Sysfs } from '../../lib/sysfs.js';
import { probeKvm } from '../launch/accel.js';

export const LABEL_KVM = 'podvirt.io/kvm';
export const LABEL_VERSION = 'podvirt.io/version';
export const LABEL_NUMA_NODES = 'podvirt.io/numa-nodes';
export const LABEL_HUGEPAGES_2MI = 'podvirt.io/hugepages-2Mi';
export const LABEL_HUGEPAGES_1GI = 'podvirt.io/hugepages-1Gi';
export const LABEL_CPU_VENDOR = 'cpu.podvirt.io/vendor';
export const LABEL_CPU_MODEL = 'cpu.podvirt.io/model';
export const LABEL_CPU_FAMILY = 'cpu.podvirt.io/family';
export const CPU_FEATURE_PREFIX = 'cpu-feature.podvirt.io/';

/**
 * Features worth scheduling on: virtualisation extensions, the x86-64 micro-architecture level
 * markers guests commonly require, and crypto/large-page features. Not all of /proc/cpuinfo, which
 * would put ~150 labels on every node.
 */
export const CURATED_CPU_FEATURES = [
  'vmx', 'svm', 'hypervisor', 'lm', 'nx', 'pdpe1gb', 'x2apic', 'tsc_deadline_timer', 'invtsc', 'constant_tsc',
  'sse4_1', 'sse4_2', 'ssse3', 'popcnt', 'cx16', 'movbe', 'xsave', 'avx', 'avx2', 'fma', 'f16c', 'bmi1', 'bmi2',
  'avx512f', 'avx512dq', 'avx512bw', 'avx512vl', 'avx512cd', 'avx512_vnni', 'avx512_bf16', 'amx_tile',
  'aes', 'pclmulqdq', 'sha_ni', 'vaes', 'vpclmulqdq', 'gfni', 'rdrand', 'rdseed', 'adx', 'smep', 'smap',
  'pku', 'la57', 'sev', 'sev_es', 'tdx_guest',
] as const;

export interface NodeFacts {
  /** KVM usable for stock guests (the VM core's probe). */
  kvmUsable: boolean;
  cpuVendor: string;
  cpuModel: string;
  cpuFamily: string;
  cpuFlags: string[];
  numaNodes: number;
  hugepages2Mi: number;
  hugepages1Gi: number;
  version: string;
}

/** A string turned into a valid label value: ≤63 chars of [A-Za-z0-9._-], alphanumeric at both ends. */
export function labelValue(s: string): string {
  let v = s.replace(/[^A-Za-z0-9._-]+/g, '-').replace(/-{2,}/g, '-');
  v = v.slice(0, 63);
  v = v.replace(/^[^A-Za-z0-9]+/, '').replace(/[^A-Za-z0-9]+$/, '');
  return v;
}

export function isValidLabelValue(v: string): boolean {
  return v === '' || (v.length <= 63 && /^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$/.test(v));
}

export function isValidLabelKey(k: string): boolean {
  const i = k.lastIndexOf('/');
  const prefix = i >= 0 ? k.slice(0, i) : '';
  const name = i >= 0 ? k.slice(i + 1) : k;
  if (prefix && (prefix.length > 253 || !/^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/.test(prefix))) return false;
  return name.length > 0 && name.length <= 63 && /^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$/.test(name);
}

/** The labels for these facts (pure). Keys absent here but owned by podvirt get removed by apply. */
export function planNodeLabels(f: NodeFacts): Record<string, string> {
  const out: Record<string, string> = {
    [LABEL_KVM]: f.kvmUsable ? 'true' : 'false',
    [LABEL_VERSION]: labelValue(f.version),
    [LABEL_NUMA_NODES]: String(f.numaNodes),
    [LABEL_HUGEPAGES_2MI]: String(f.hugepages2Mi),
    [LABEL_HUGEPAGES_1GI]: String(f.hugepages1Gi),
  };
  const vendor = labelValue(f.cpuVendor);
  if (vendor) out[LABEL_CPU_VENDOR] = vendor;
  const model = labelValue(f.cpuModel);
  if (model) out[LABEL_CPU_MODEL] = model;
  const family = labelValue(f.cpuFamily);
  if (family) out[LABEL_CPU_FAMILY] = family;
  const flags = new Set(f.cpuFlags.map((x) => x.toLowerCase()));
  for (const feat of CURATED_CPU_FEATURES) {
    if (flags.has(feat)) out[CPU_FEATURE_PREFIX + feat] = 'true';
  }
  return out;
}

const FIXED_LABELS = new Set([LABEL_KVM, LABEL_VERSION, LABEL_NUMA_NODES, LABEL_HUGEPAGES_2MI, LABEL_HUGEPAGES_1GI]);

/**
 * True for label keys this module owns (so stale ones can be removed): its fixed keys and the
 * CPU prefixes. Other `podvirt.io/` labels (an operator's node selector, say) are not touched.
 */
export function ownedLabel(k: string): boolean {
  return FIXED_LABELS.has(k) || k.startsWith('cpu.podvirt.io/') || k.startsWith(CPU_FEATURE_PREFIX);
}

/** Merge-patch body: new labels set, owned labels no longer planned removed (pure). */
export function labelPatch(current: Record<string, string>, planned: Record<string, string>): Record<string, string | null> {
  const patch: Record<string, string | null> = {};
  for (const [k, v] of Object.entries(planned)) if (current[k] !== v) patch[k] = v;
  for (const k of Object.keys(current)) if (ownedLabel(k) && !(k in planned)) patch[k] = null;
  return patch;
}

export interface HostRoots {
  sysRoot?: string;
  devRoot?: string;
}

/** Reads the facts from the host (sysfs, /dev/kvm, systeminformation for the CPU). */
export async function gatherNodeFacts(version: string, roots: HostRoots = {}): Promise<NodeFacts> {
  const sys = new Sysfs(roots.sysRoot ?? '/sys');
  // The VM core's probe: opens /dev/kvm, asks the API version, and rejects PVM-only hosts.
  const kvmUsable = (await probeKvm({ dev: roots.devRoot ?? '/dev', sys: roots.sysRoot ?? '/sys' })).usable;
  const cpu = await si.cpu();
  const flags = (await si.cpuFlags()).split(/\s+/).filter(Boolean);
  const nodes = (await sys.list('devices/system/node')).filter((n) => /^node\d+$/.test(n)).length;
  const pages = async (size: string) => Number((await sys.read(`kernel/mm/hugepages/hugepages-${size}/nr_hugepages`)) ?? '0') || 0;
  return {
    kvmUsable,
    cpuVendor: cpu.manufacturer || cpu.vendor,
    cpuModel: [cpu.manufacturer, cpu.brand].filter(Boolean).join(' '),
    cpuFamily: cpu.family,
    cpuFlags: flags,
    numaNodes: Math.max(1, nodes),
    hugepages2Mi: await pages('2048kB'),
    hugepages1Gi: await pages('1048576kB'),
    version,
  };
}

/** Patches the node's labels to the plan; returns the labels set or removed. */
export async function applyNodeLabels(kc: KubeConfig, node: string, planned: Record<string, string>): Promise<Record<string, string | null>> {
  const core = kc.makeApiClient(CoreV1Api);
  const cur = await core.readNode({ name: node });
  const patch = labelPatch(cur.metadata?.labels ?? {}, planned);
  if (Object.keys(patch).length === 0) return patch;
  await core.patchNode({ name: node, body: { metadata: { labels: patch } } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch));
  return patch;
}
