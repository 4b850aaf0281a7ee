import { InvalidArgument } from '../../lib/errors.js';
import { quantityBytes, quantityWholeCpus } from './quantity.js';
import { SPEC_ANNOTATION, parseVmSpec, type VmSpec } from './vm-spec.js';

/** The annotation where the resolved device topology is persisted (JSON). */
export const TOPOLOGY_ANNOTATION = 'vm.podvirt.io/topology';

/** How the VM container sees a pod volume. */
export type PodVolumeRef =
  | { kind: 'block'; /** `volumeDevices[].devicePath` */ devicePath: string }
  | { kind: 'filesystem'; /** `volumeMounts[].mountPath` */ mountPath: string; readOnly: boolean };

export interface PodVmInput {
  name: string;
  namespace: string;
  uid: string | undefined;
  /** The raw annotation text. */
  specText: string;
  spec: VmSpec;
  /** The container QEMU runs in (named `compute`, else the first). */
  container: string;
  /** Volumes of that container by pod volume name. */
  volumes: Record<string, PodVolumeRef>;
  resources: {
    /** Whole CPUs from limits (== requests for Guaranteed pods); undefined when absent or fractional. */
    cpus: number | undefined;
    memoryBytes: number | undefined;
    /** Extended resources from limits (`devices.kubevirt.io/kvm: 1`). */
    extended: Record<string, number>;
    /** requests == limits for cpu and memory with whole CPUs (what the static CPU manager needs for exclusive CPUs). */
    guaranteed: boolean;
  };
  /** The stored topology annotation, parsed (not validated here: agent/plan does that). */
  topology: unknown;
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const objAt = (v: unknown): Obj => (isObj(v) ? v : {});
const listAt = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);

/**
 * Extracts the VM spec and the facts the plan needs from a Pod object (a parsed manifest or
 * an API object), and checks that every disk names a volume the container has in the right
 * form (block → `volumeDevices`, file → `volumeMounts`). Throws InvalidArgument naming the field.
 */
export function podVmInput(pod: unknown): PodVmInput {
  if (!isObj(pod) || (pod.kind !== undefined && pod.kind !== 'Pod')) throw new InvalidArgument('not a Pod object');
  const meta = objAt(pod.metadata);
  const name = typeof meta.name === 'string' ? meta.name : '';
  if (!name) throw new InvalidArgument('metadata.name: required');
  const annotations = objAt(meta.annotations);
  const specText = annotations[SPEC_ANNOTATION];
  if (typeof specText !== 'string') throw new InvalidArgument(`metadata.annotations["${SPEC_ANNOTATION}"]: required`);
  const spec = parseVmSpec(specText);

  const podSpec = objAt(pod.spec);
  const containers = listAt(podSpec.containers).filter(isObj);
  if (containers.length === 0) throw new InvalidArgument('spec.containers: required');
  const c = containers.find((x) => x.name === 'compute') ?? containers[0]!;
  const volumes: Record<string, PodVolumeRef> = {};
  for (const d of listAt(c.volumeDevices).filter(isObj)) {
    if (typeof d.name === 'string' && typeof d.devicePath === 'string') volumes[d.name] = { kind: 'block', devicePath: d.devicePath };
  }
  for (const m of listAt(c.volumeMounts).filter(isObj)) {
    if (typeof m.name === 'string' && typeof m.mountPath === 'string') {
      volumes[m.name] = { kind: 'filesystem', mountPath: m.mountPath, readOnly: m.readOnly === true };
    }
  }
  spec.disks.forEach((d, i) => {
    const v = volumes[d.volume];
    const want = d.type === 'block' ? 'volumeDevices' : 'volumeMounts';
    if (!v) throw new InvalidArgument(`spec.disks[${i}].volume: container "${String(c.name)}" has no ${want} entry "${d.volume}"`);
    if (d.type === 'block' && v.kind !== 'block') throw new InvalidArgument(`spec.disks[${i}].volume: "${d.volume}" is mounted as a filesystem, a block disk needs a volumeDevices entry`);
    if (d.type === 'file' && v.kind !== 'filesystem') throw new InvalidArgument(`spec.disks[${i}].volume: "${d.volume}" is a block device, a file disk needs a volumeMounts entry`);
    if (d.type === 'file' && v.kind === 'filesystem' && v.readOnly && !d.readonly) {
      throw new InvalidArgument(`spec.disks[${i}].readonly: volume "${d.volume}" is mounted read-only`);
    }
  });

  const res = objAt(c.resources);
  const limits = objAt(res.limits);
  const requests = { ...limits, ...objAt(res.requests) };
  const extended: Record<string, number> = {};
  for (const [k, v] of Object.entries(limits)) {
    if (k.includes('/')) extended[k] = Number(v);
  }
  const cpus = limits.cpu !== undefined ? quantityWholeCpus(limits.cpu) : undefined;
  const memoryBytes = limits.memory !== undefined ? quantityBytes(limits.memory) : undefined;
  const guaranteed =
    cpus !== undefined &&
    memoryBytes !== undefined &&
    quantityWholeCpus(requests.cpu) === cpus &&
    quantityBytes(requests.memory) === memoryBytes;

  let topology: unknown;
  const topoText = annotations[TOPOLOGY_ANNOTATION];
  if (typeof topoText === 'string' && topoText.trim()) {
    try {
      topology = JSON.parse(topoText);
    } catch {
      throw new InvalidArgument(`metadata.annotations["${TOPOLOGY_ANNOTATION}"]: not JSON`);
    }
  }
  return {
    name,
    namespace: typeof meta.namespace === 'string' ? meta.namespace : 'default',
    uid: typeof meta.uid === 'string' ? meta.uid : undefined,
    specText,
    spec,
    container: String(c.name),
    volumes,
    resources: { cpus, memoryBytes, extended, guaranteed },
    topology,
  };
}
