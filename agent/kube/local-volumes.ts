/**
 * Which of a VM pod's volumes live on the node (podvirt's own CSI volumes: a qcow2 in the node's
 * pool) and so must be copied by a migration, and which the target opens itself (anything else:
 * a shared RWX block volume, NFS, ...). The answer comes from the API, never from the pod's
 * names: PVC → bound PV → `spec.csi.driver`.
 */
import { CoreV1Api, type KubeConfig, type V1PersistentVolume, type V1PersistentVolumeClaim, type V1Pod } from '@kubernetes/client-node';
import { DRIVER_NAME } from '../../csi/ids.js';
import { FailedPrecondition, InvalidArgument, errorMessage } from '../../lib/errors.js';
import { driveNodeName } from '../plan/devices.js';
import { podVmInput } from '../spec/index.js';

export interface VolumeLookup {
  claim(namespace: string, name: string): Promise<V1PersistentVolumeClaim>;
  volume(name: string): Promise<V1PersistentVolume>;
}

export function kubeVolumeLookup(kc: KubeConfig): VolumeLookup {
  const core = kc.makeApiClient(CoreV1Api);
  return {
    claim: (namespace, name) => core.readNamespacedPersistentVolumeClaim({ namespace, name }),
    volume: (name) => core.readPersistentVolume({ name }),
  };
}

/** The claim behind a pod volume: a `persistentVolumeClaim`, or the `<pod>-<volume>` claim of a generic ephemeral volume (pure). */
export function claimOf(pod: V1Pod, volume: string): string | undefined {
  const v = pod.spec?.volumes?.find((x) => x.name === volume);
  if (v?.persistentVolumeClaim) return v.persistentVolumeClaim.claimName;
  if (v?.ephemeral) return `${pod.metadata!.name}-${volume}`;
  return undefined;
}

/** Names of the pod's volumes that are podvirt CSI volumes on the pod's node. */
export async function nodeLocalVolumes(pod: V1Pod, lookup: VolumeLookup, driver = DRIVER_NAME): Promise<Set<string>> {
  const ns = pod.metadata!.namespace ?? 'default';
  const out = new Set<string>();
  for (const v of pod.spec?.volumes ?? []) {
    if (v.csi) {
      if (v.csi.driver === driver) out.add(v.name);
      continue;
    }
    const claim = claimOf(pod, v.name);
    if (!claim) continue;
    let pvName: string | undefined;
    try {
      pvName = (await lookup.claim(ns, claim)).spec?.volumeName;
      if (!pvName) throw new FailedPrecondition('not bound yet');
      if ((await lookup.volume(pvName)).spec?.csi?.driver === driver) out.add(v.name);
    } catch (e) {
      // Not knowing is not "shared": a node-local disk taken for shared would arrive empty.
      throw new FailedPrecondition(`volume ${v.name} (claim ${ns}/${claim}${pvName ? `, PV ${pvName}` : ''}): cannot tell whether it is node-local: ${errorMessage(e)}`);
    }
  }
  return out;
}

/**
 * The VM's disks whose volume is node-local, as block node names (what the driver mirrors into
 * and exports). Only block disks can be mirrored: a file disk on a node-local filesystem volume
 * would need its file made on the target first, so such a VM is refused with a clear reason.
 */
export function nodeLocalDisks(pod: V1Pod, local: ReadonlySet<string>): Array<{ disk: string; node: string }> {
  const { spec } = podVmInput(pod);
  const out: Array<{ disk: string; node: string }> = [];
  for (const d of spec.disks) {
    if (!local.has(d.volume)) continue;
    if (d.type !== 'block') throw new InvalidArgument(`disk ${d.name}: a file disk on the node-local volume ${d.volume} cannot be migrated (use a Block volume for node-local disks)`);
    out.push({ disk: d.name, node: driveNodeName(d.name) });
  }
  return out;
}
