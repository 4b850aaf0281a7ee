import { parseAllDocuments } from 'yaml';
import { InvalidArgument } from '../../lib/errors.js';
import { parseBytes, wholeCpus } from './quantity.js';

export const SPEC_ANNOTATION = 'vm.podvirt.io/spec';
export const NETWORKS_ANNOTATION = 'k8s.v1.cni.cncf.io/networks';

/** A claim the pod uses: from a PersistentVolumeClaim document in FILE, or an inline ephemeral template. */
export interface ClaimSpec {
  /** Claim name (`<pod>-<volume>` for ephemeral ones, as Kubernetes names them). */
  name: string;
  sizeBytes: number;
  volumeMode: 'Block' | 'Filesystem';
  /** Deleted with the pod (ephemeral) or kept across stop/run (a PVC). */
  ephemeral: boolean;
  /** StorageClass parameters passed to CreateVolume (from the claim's `podvirt.io/parameters` annotation). */
  parameters: Record<string, string>;
}

/** A pod volume backed by a claim, and where the container sees it. */
export interface PodVolume {
  name: string;
  claim: string;
  /** `volumeDevices[].devicePath` (Block) or `volumeMounts[].mountPath` (Filesystem) of the container. */
  containerPath: string | undefined;
}

/** One entry of the Multus networks annotation. */
export interface NetworkSelection {
  name: string;
  namespace: string | undefined;
  interface: string | undefined;
  mac: string | undefined;
  ips: string[] | undefined;
}

export interface LocalPod {
  name: string;
  namespace: string;
  uid: string | undefined;
  /** The raw `vm.podvirt.io/spec` text (parsed by agent/spec). */
  vmSpec: string;
  annotations: Record<string, string>;
  volumes: PodVolume[];
  claims: ClaimSpec[];
  networks: NetworkSelection[];
  /** NetworkAttachmentDefinitions in FILE: name → CNI config JSON text. */
  nads: Map<string, string>;
  /** Whole CPUs from the first container's limits (Guaranteed QoS), if given. */
  cpuLimit: number | undefined;
  memoryLimitBytes: number | undefined;
  /** Extended resources requested (`devices.kubevirt.io/kvm: 1`, ...). */
  deviceResources: Record<string, number>;
  /** The Pod object as parsed (for agent/spec's pod-level checks). */
  raw: Record<string, unknown>;
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?$/;

function obj(v: unknown, what: string): Obj {
  if (v === undefined || v === null) return {};
  if (!isObj(v)) throw new InvalidArgument(`${what} must be a mapping`);
  return v;
}
function list(v: unknown, what: string): unknown[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw new InvalidArgument(`${what} must be a list`);
  return v;
}
function str(v: unknown, what: string): string {
  if (typeof v !== 'string' || v === '') throw new InvalidArgument(`${what} must be a non-empty string`);
  return v;
}

/**
 * Parses FILE: one Pod plus, optionally, the PersistentVolumeClaims and NetworkAttachmentDefinitions
 * it refers to (multi-document YAML or one JSON object), as `kubectl apply -f` would take them.
 */
export function parseLocalManifest(text: string): LocalPod {
  const docs = parseAllDocuments(text);
  const objs: Obj[] = [];
  for (const [i, d] of docs.entries()) {
    if (d.errors.length) throw new InvalidArgument(`FILE document ${i + 1}: ${d.errors[0]!.message}`);
    const v: unknown = d.toJS();
    if (v === null || v === undefined) continue;
    if (!isObj(v)) throw new InvalidArgument(`FILE document ${i + 1} is not a Kubernetes object`);
    objs.push(v);
  }
  const pods = objs.filter((o) => o.kind === 'Pod');
  if (pods.length !== 1) throw new InvalidArgument(`FILE must hold exactly one Pod (found ${pods.length})`);
  const pod = pods[0]!;
  const meta = obj(pod.metadata, 'metadata');
  const name = str(meta.name, 'metadata.name');
  if (!DNS_LABEL.test(name)) throw new InvalidArgument(`metadata.name "${name}" must be a DNS label of at most 42 characters`);
  const annotations: Record<string, string> = {};
  for (const [k, v] of Object.entries(obj(meta.annotations, 'metadata.annotations'))) {
    annotations[k] = typeof v === 'string' ? v : JSON.stringify(v);
  }
  const vmSpec = annotations[SPEC_ANNOTATION];
  if (!vmSpec) throw new InvalidArgument(`metadata.annotations["${SPEC_ANNOTATION}"] is required`);

  const spec = obj(pod.spec, 'spec');
  const containers = list(spec.containers, 'spec.containers');
  const c0 = obj(containers[0], 'spec.containers[0]');
  const paths = new Map<string, string>();
  for (const [i, d] of list(c0.volumeDevices, 'spec.containers[0].volumeDevices').entries()) {
    const e = obj(d, `volumeDevices[${i}]`);
    paths.set(str(e.name, `volumeDevices[${i}].name`), str(e.devicePath, `volumeDevices[${i}].devicePath`));
  }
  for (const [i, d] of list(c0.volumeMounts, 'spec.containers[0].volumeMounts').entries()) {
    const e = obj(d, `volumeMounts[${i}]`);
    paths.set(str(e.name, `volumeMounts[${i}].name`), str(e.mountPath, `volumeMounts[${i}].mountPath`));
  }

  const claimDocs = new Map<string, ClaimSpec>();
  for (const o of objs.filter((x) => x.kind === 'PersistentVolumeClaim')) {
    const c = claimFrom(o, false, undefined);
    claimDocs.set(c.name, c);
  }
  const volumes: PodVolume[] = [];
  const claims: ClaimSpec[] = [];
  for (const [i, v] of list(spec.volumes, 'spec.volumes').entries()) {
    const vol = obj(v, `spec.volumes[${i}]`);
    const vname = str(vol.name, `spec.volumes[${i}].name`);
    let claim: ClaimSpec | undefined;
    if (vol.persistentVolumeClaim !== undefined) {
      const cn = str(obj(vol.persistentVolumeClaim, 'persistentVolumeClaim').claimName, `spec.volumes[${i}].persistentVolumeClaim.claimName`);
      claim = claimDocs.get(cn) ?? { name: cn, sizeBytes: 0, volumeMode: 'Block', ephemeral: false, parameters: {} };
    } else if (vol.ephemeral !== undefined) {
      const tpl = obj(obj(vol.ephemeral, `spec.volumes[${i}].ephemeral`).volumeClaimTemplate, `spec.volumes[${i}].ephemeral.volumeClaimTemplate`);
      claim = claimFrom({ ...tpl, metadata: { ...obj(tpl.metadata, 'metadata'), name: `${name}-${vname}` } }, true, `spec.volumes[${i}].ephemeral.volumeClaimTemplate`);
    } else if (vol.emptyDir !== undefined) {
      // A cluster pod with a read-only root gives QEMU's run dir an emptyDir; in local mode QEMU's
      // run dir is the agent's, so the same manifest runs here with the volume unused.
      continue;
    } else {
      throw new InvalidArgument(`spec.volumes[${i}] (${vname}): local mode supports persistentVolumeClaim, ephemeral and emptyDir volumes only`);
    }
    volumes.push({ name: vname, claim: claim.name, containerPath: paths.get(vname) });
    claims.push(claim);
  }

  const nads = new Map<string, string>();
  for (const o of objs.filter((x) => x.kind === 'NetworkAttachmentDefinition')) {
    const n = str(obj(o.metadata, 'NetworkAttachmentDefinition.metadata').name, 'NetworkAttachmentDefinition.metadata.name');
    nads.set(n, str(obj(o.spec, `NetworkAttachmentDefinition ${n} spec`).config, `NetworkAttachmentDefinition ${n} spec.config`));
  }

  const res = obj(c0.resources, 'spec.containers[0].resources');
  const limits = obj(res.limits, 'resources.limits');
  const deviceResources: Record<string, number> = {};
  for (const [k, v] of Object.entries(limits)) {
    if (k.includes('/')) {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 0) throw new InvalidArgument(`resources.limits["${k}"] must be a whole number`);
      deviceResources[k] = n;
    }
  }
  return {
    name,
    namespace: typeof meta.namespace === 'string' ? meta.namespace : 'default',
    uid: typeof meta.uid === 'string' ? meta.uid : undefined,
    vmSpec,
    annotations,
    volumes,
    claims,
    networks: parseNetworks(annotations[NETWORKS_ANNOTATION]),
    nads,
    cpuLimit: limits.cpu !== undefined ? wholeCpus(limits.cpu) : undefined,
    memoryLimitBytes: limits.memory !== undefined ? parseBytes(limits.memory, 'resources.limits.memory') : undefined,
    deviceResources,
    raw: pod,
  };
}

function claimFrom(o: Obj, ephemeral: boolean, where: string | undefined): ClaimSpec {
  const meta = obj(o.metadata, 'metadata');
  const name = str(meta.name, `${where ?? 'PersistentVolumeClaim'}.metadata.name`);
  const at = where ?? `PersistentVolumeClaim ${name}`;
  const spec = obj(o.spec, `${at}.spec`);
  const mode = spec.volumeMode ?? 'Filesystem';
  if (mode !== 'Block' && mode !== 'Filesystem') throw new InvalidArgument(`${at}.spec.volumeMode must be Block or Filesystem`);
  const storage = obj(obj(spec.resources, `${at}.spec.resources`).requests, `${at}.spec.resources.requests`).storage;
  const params = obj(meta.annotations, `${at}.metadata.annotations`)['podvirt.io/parameters'];
  let parameters: Record<string, string> = {};
  if (typeof params === 'string') {
    try {
      parameters = JSON.parse(params) as Record<string, string>;
    } catch {
      throw new InvalidArgument(`${at}: annotation podvirt.io/parameters must be a JSON object of strings`);
    }
  }
  return { name, sizeBytes: parseBytes(storage, `${at}.spec.resources.requests.storage`), volumeMode: mode, ephemeral, parameters };
}

/** The Multus annotation: `a, ns/b@eth1` or a JSON list of selection objects. */
export function parseNetworks(text: string | undefined): NetworkSelection[] {
  if (text === undefined || text.trim() === '') return [];
  const t = text.trim();
  if (t.startsWith('[')) {
    let raw: unknown;
    try {
      raw = JSON.parse(t);
    } catch (e) {
      throw new InvalidArgument(`annotation ${NETWORKS_ANNOTATION}: bad JSON: ${(e as Error).message}`);
    }
    return list(raw, NETWORKS_ANNOTATION).map((v, i) => {
      const e = obj(v, `${NETWORKS_ANNOTATION}[${i}]`);
      const ips = e.ips === undefined ? undefined : list(e.ips, `${NETWORKS_ANNOTATION}[${i}].ips`).map((x) => str(x, 'ips[]'));
      return {
        name: str(e.name, `${NETWORKS_ANNOTATION}[${i}].name`),
        namespace: typeof e.namespace === 'string' ? e.namespace : undefined,
        interface: typeof e.interface === 'string' ? e.interface : undefined,
        mac: typeof e.mac === 'string' ? e.mac : undefined,
        ips,
      };
    });
  }
  return t.split(',').map((part) => {
    const m = /^\s*(?:([a-z0-9-]+)\/)?([a-z0-9][a-z0-9.-]*)(?:@([A-Za-z0-9_.-]+))?\s*$/.exec(part);
    if (!m) throw new InvalidArgument(`annotation ${NETWORKS_ANNOTATION}: cannot parse "${part.trim()}"`);
    return { name: m[2]!, namespace: m[1], interface: m[3], mac: undefined, ips: undefined };
  });
}
