/**
 * Writes what the agent knows back onto pods: annotations through a JSON merge patch on the pod
 * (no resourceVersion precondition: the agent owns these keys, so last writer wins is right), and
 * conditions through a strategic merge patch on the status subresource, which merges the
 * `conditions` list by `type` and so leaves the kubelet's own conditions alone.
 */
import {
  CoreV1Api,
  PatchStrategy,
  setHeaderOptions,
  type KubeConfig,
  type V1Pod,
} from '@kubernetes/client-node';

export interface PodRef {
  namespace: string;
  name: string;
}

export interface ConditionInput {
  type: string;
  status: 'True' | 'False' | 'Unknown';
  reason: string;
  message: string;
}

export class PodWriter {
  private readonly core: CoreV1Api;
  constructor(kc: KubeConfig) {
    this.core = kc.makeApiClient(CoreV1Api);
  }

  /** Sets (string) or removes (null) annotations. */
  async annotate(ref: PodRef, annotations: Record<string, string | null>): Promise<V1Pod> {
    return this.core.patchNamespacedPod(
      { namespace: ref.namespace, name: ref.name, body: { metadata: { annotations } } },
      setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
    );
  }

  /** Sets one pod condition, keeping lastTransitionTime when the status did not change. */
  async setCondition(ref: PodRef, current: V1Pod | undefined, c: ConditionInput): Promise<V1Pod> {
    const prev = current?.status?.conditions?.find((x) => x.type === c.type);
    const now = new Date();
    const lastTransitionTime = prev && prev.status === c.status && prev.lastTransitionTime ? prev.lastTransitionTime : now;
    return this.core.patchNamespacedPodStatus(
      {
        namespace: ref.namespace,
        name: ref.name,
        body: { status: { conditions: [{ type: c.type, status: c.status, reason: c.reason, message: c.message, lastProbeTime: null, lastTransitionTime }] } },
      },
      setHeaderOptions('Content-Type', PatchStrategy.StrategicMergePatch),
    );
  }

  async read(ref: PodRef): Promise<V1Pod> {
    return this.core.readNamespacedPod(ref);
  }
}
