/**
 * Where the per-migration token lives while a migration runs: a Secret in the agents' own
 * namespace (the chart's release namespace), never on the pods. Whoever can read or patch VM pods
 * therefore can neither talk to a migration's control endpoint nor make a source agent send a VM
 * to an endpoint of their choosing: a request on a pod counts only if its token is in a Secret
 * here, which only the agents' service account can create.
 *
 * The target agent creates the Secret (named after the migration id, labelled with its node),
 * and deletes it when the migration ends either way; at start it deletes what an earlier run of
 * itself left (a migration does not survive its target agent). The Secret is owned by the
 * target's agent pod when that is known, so a node that goes away takes its Secrets along.
 */
import { CoreV1Api, type KubeConfig, type V1OwnerReference, type V1Secret } from '@kubernetes/client-node';
import { FailedPrecondition, InvalidArgument, errorMessage } from '../../lib/errors.js';
import type { Logger } from '../../lib/log.js';

export const SECRET_PREFIX = 'podvirt-migration-';
export const LABEL_MIGRATION_ID = 'migration.podvirt.io/id';
export const LABEL_TARGET_NODE = 'migration.podvirt.io/target-node';
const LABEL_MANAGED = 'app.kubernetes.io/managed-by';
const MANAGER = 'podvirt-agent';

export interface MigrationSecretStoreOptions {
  kc: KubeConfig;
  /** The agents' namespace (`$POD_NAMESPACE`). */
  namespace: string;
  /** This agent's node: the label its own Secrets carry. */
  node: string;
  /** This agent's pod (`$POD_NAME`), the Secrets' owner; none outside a pod (tests, manual runs). */
  ownerPod?: string | undefined;
  log: Logger;
}

/** Secret name for a migration id (pure); ids are made by the agent, but a pod annotation is input. */
export function secretNameOf(migrationId: string): string {
  if (!/^[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?$/.test(migrationId)) throw new InvalidArgument(`migration id ${JSON.stringify(migrationId)} is not a valid name part`);
  return `${SECRET_PREFIX}${migrationId}`;
}

/** Label values must be ≤ 63 characters of [A-Za-z0-9._-] with alphanumeric ends (pure). */
export function labelValue(s: string): string {
  const v = s.replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 63).replace(/^[^A-Za-z0-9]+|[^A-Za-z0-9]+$/g, '');
  return v || 'x';
}

export class MigrationSecretStore {
  private readonly core: CoreV1Api;
  private owner: V1OwnerReference | undefined | null = null;

  constructor(private readonly o: MigrationSecretStoreOptions) {
    this.core = o.kc.makeApiClient(CoreV1Api);
  }

  get namespace(): string {
    return this.o.namespace;
  }

  private async ownerRef(): Promise<V1OwnerReference | undefined> {
    if (this.owner !== null) return this.owner;
    this.owner = undefined;
    if (this.o.ownerPod) {
      try {
        const pod = await this.core.readNamespacedPod({ namespace: this.o.namespace, name: this.o.ownerPod });
        this.owner = { apiVersion: 'v1', kind: 'Pod', name: this.o.ownerPod, uid: pod.metadata!.uid!, blockOwnerDeletion: false };
      } catch (e) {
        this.o.log.warn({ pod: this.o.ownerPod, err: errorMessage(e) }, 'cannot read the agent pod; migration Secrets get no owner');
      }
    }
    return this.owner;
  }

  /** Target side: stores the token; returns the Secret's name. */
  async create(migrationId: string, token: string, about: { source: string; target: string }): Promise<string> {
    const name = secretNameOf(migrationId);
    const owner = await this.ownerRef();
    const body: V1Secret = {
      apiVersion: 'v1',
      kind: 'Secret',
      type: 'Opaque',
      metadata: {
        name,
        namespace: this.o.namespace,
        labels: { [LABEL_MANAGED]: MANAGER, [LABEL_MIGRATION_ID]: migrationId, [LABEL_TARGET_NODE]: labelValue(this.o.node) },
        annotations: { 'migration.podvirt.io/source': about.source, 'migration.podvirt.io/target': about.target },
        ...(owner ? { ownerReferences: [owner] } : {}),
      },
      data: { token: Buffer.from(token).toString('base64') },
    };
    await this.core.createNamespacedSecret({ namespace: this.o.namespace, body });
    return name;
  }

  /** Source side: the token of a migration, checked against the Secret's own label. */
  async token(migrationId: string, secretName: string): Promise<string> {
    if (secretName !== secretNameOf(migrationId)) throw new InvalidArgument(`migration ${migrationId}: Secret ${JSON.stringify(secretName)} is not this migration's`);
    let s: V1Secret;
    try {
      s = await this.core.readNamespacedSecret({ namespace: this.o.namespace, name: secretName });
    } catch (e) {
      if (isNotFound(e)) throw new FailedPrecondition(`no migration Secret ${this.o.namespace}/${secretName}: the request was not made by a podvirt agent, or its migration has ended`);
      throw e;
    }
    if (s.metadata?.labels?.[LABEL_MIGRATION_ID] !== migrationId || s.metadata.labels[LABEL_MANAGED] !== MANAGER) {
      throw new FailedPrecondition(`Secret ${this.o.namespace}/${secretName} is not a podvirt migration Secret`);
    }
    const raw = s.data?.token;
    if (!raw) throw new FailedPrecondition(`Secret ${this.o.namespace}/${secretName} has no token`);
    return Buffer.from(raw, 'base64').toString('utf8');
  }

  /** Idempotent. */
  async delete(migrationId: string): Promise<void> {
    try {
      await this.core.deleteNamespacedSecret({ namespace: this.o.namespace, name: secretNameOf(migrationId) });
    } catch (e) {
      if (!isNotFound(e)) throw e;
    }
  }

  /** Agent start: no migration into this node survives its agent, so every Secret of this node's is stale. */
  async collectStale(keep: ReadonlySet<string> = new Set()): Promise<number> {
    const list = await this.core.listNamespacedSecret({
      namespace: this.o.namespace,
      labelSelector: `${LABEL_MANAGED}=${MANAGER},${LABEL_TARGET_NODE}=${labelValue(this.o.node)}`,
    });
    let n = 0;
    for (const s of list.items) {
      const id = s.metadata?.labels?.[LABEL_MIGRATION_ID];
      if (!id || keep.has(id)) continue;
      try {
        await this.core.deleteNamespacedSecret({ namespace: this.o.namespace, name: s.metadata!.name! });
        n++;
      } catch (e) {
        if (!isNotFound(e)) throw e;
      }
    }
    return n;
  }
}

function isNotFound(e: unknown): boolean {
  return typeof e === 'object' && e !== null && (e as { code?: number }).code === 404;
}
