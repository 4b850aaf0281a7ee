/**
 * Kubernetes Events about pods (core/v1, what `kubectl describe pod` and `kubectl get events`
 * show). Repeats of the same reason and message within a pod are folded into one Event whose
 * `count` grows, as client-go's recorder does, so a crash loop does not flood etcd.
 */
import { randomBytes } from 'node:crypto';
import { CoreV1Api, PatchStrategy, setHeaderOptions, type CoreV1Event, type KubeConfig, type V1Pod } from '@kubernetes/client-node';
import type { Logger } from '../../lib/log.js';
import { errorMessage } from '../../lib/errors.js';
import { AGENT_COMPONENT } from './names.js';

export type EventType = 'Normal' | 'Warning';

export class EventRecorder {
  private readonly core: CoreV1Api;
  private readonly seen = new Map<string, { name: string; namespace: string; count: number }>();

  constructor(
    kc: KubeConfig,
    private readonly node: string,
    private readonly log: Logger,
  ) {
    this.core = kc.makeApiClient(CoreV1Api);
  }

  /** Records an event; failures are logged, never thrown (events are best effort). */
  async record(pod: V1Pod, type: EventType, reason: string, message: string): Promise<void> {
    const ns = pod.metadata?.namespace ?? 'default';
    const podName = pod.metadata?.name ?? '';
    const key = `${pod.metadata?.uid}|${type}|${reason}|${message}`;
    const now = new Date();
    try {
      const prev = this.seen.get(key);
      if (prev) {
        prev.count++;
        await this.core.patchNamespacedEvent(
          { namespace: prev.namespace, name: prev.name, body: { count: prev.count, lastTimestamp: now } },
          setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
        );
        return;
      }
      const name = `${podName}.${now.getTime().toString(16)}${randomBytes(2).toString('hex')}`;
      const body: CoreV1Event = {
        metadata: { name, namespace: ns },
        involvedObject: { apiVersion: 'v1', kind: 'Pod', name: podName, namespace: ns, uid: pod.metadata?.uid },
        type,
        reason,
        message,
        count: 1,
        firstTimestamp: now,
        lastTimestamp: now,
        source: { component: AGENT_COMPONENT, host: this.node },
        reportingComponent: 'podvirt.io/agent',
        reportingInstance: this.node,
      };
      await this.core.createNamespacedEvent({ namespace: ns, body });
      this.seen.set(key, { name, namespace: ns, count: 1 });
      if (this.seen.size > 2000) this.seen.delete(this.seen.keys().next().value!);
    } catch (e) {
      this.log.warn({ err: errorMessage(e), reason, pod: `${ns}/${podName}` }, 'cannot record event');
    }
  }
}
