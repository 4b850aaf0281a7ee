/**
 * Validates Kubernetes manifests: built-in kinds against the OpenAPI schemas shipped in
 * kubernetes-models 4.5.1 (Kubernetes 1.27), plus a strict unknown-field check the models'
 * schemas lack (every key the validator never reads is unknown to the schema, so a misspelt
 * `mountPropagaton` is caught); CRD kinds the chart and examples use against JSON schemas
 * written here from their documented fields.
 */
import { Ajv, type ValidateFunction } from 'ajv';
import { ConfigMap, PersistentVolumeClaim, Pod, Service, ServiceAccount, Namespace } from 'kubernetes-models/v1';
import { DaemonSet } from 'kubernetes-models/apps/v1';
import { ClusterRole, ClusterRoleBinding, Role, RoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1';
import { CSIDriver, StorageClass } from 'kubernetes-models/storage.k8s.io/v1';

interface ModelClass {
  apiVersion: string;
  kind: string;
  prototype: { validate(this: unknown): void };
}

const MODELS: ModelClass[] = [
  ConfigMap,
  PersistentVolumeClaim,
  Pod,
  Service,
  ServiceAccount,
  Namespace,
  DaemonSet,
  ClusterRole,
  ClusterRoleBinding,
  Role,
  RoleBinding,
  CSIDriver,
  StorageClass,
] as unknown as ModelClass[];

const DNS_SUBDOMAIN = '^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$';
const DNS_LABEL = '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$';
const QUALIFIED_KEY = '^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$';

const objectMeta = (namespaced: boolean): object => ({
  type: 'object',
  additionalProperties: false,
  required: namespaced ? ['name', 'namespace'] : ['name'],
  properties: {
    name: { type: 'string', pattern: DNS_SUBDOMAIN, maxLength: 253 },
    ...(namespaced ? { namespace: { type: 'string', pattern: DNS_LABEL, maxLength: 63 } } : {}),
    labels: {
      type: 'object',
      propertyNames: { pattern: QUALIFIED_KEY },
      additionalProperties: { type: 'string', pattern: '^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$', maxLength: 63 },
    },
    annotations: { type: 'object', propertyNames: { pattern: QUALIFIED_KEY }, additionalProperties: { type: 'string' } },
  },
});

/** k8snetworkplumbingwg network-attachment-definition-client types.go: spec.config is a string. */
const NAD_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  required: ['apiVersion', 'kind', 'metadata', 'spec'],
  properties: {
    apiVersion: { const: 'k8s.cni.cncf.io/v1' },
    kind: { const: 'NetworkAttachmentDefinition' },
    metadata: objectMeta(true),
    spec: { type: 'object', additionalProperties: false, required: ['config'], properties: { config: { type: 'string', minLength: 2 } } },
  },
};

/** external-snapshotter client/config/crd snapshot.storage.k8s.io_volumesnapshotclasses.yaml (v1). */
const VSC_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  required: ['apiVersion', 'kind', 'metadata', 'driver', 'deletionPolicy'],
  properties: {
    apiVersion: { const: 'snapshot.storage.k8s.io/v1' },
    kind: { const: 'VolumeSnapshotClass' },
    metadata: objectMeta(false),
    driver: { type: 'string', minLength: 1 },
    deletionPolicy: { enum: ['Delete', 'Retain'] },
    parameters: { type: 'object', additionalProperties: { type: 'string' } },
  },
};

/** prometheus-operator monitoring.coreos.com/v1 ServiceMonitor: the fields the chart uses. */
const SERVICE_MONITOR_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  required: ['apiVersion', 'kind', 'metadata', 'spec'],
  properties: {
    apiVersion: { const: 'monitoring.coreos.com/v1' },
    kind: { const: 'ServiceMonitor' },
    metadata: objectMeta(true),
    spec: {
      type: 'object',
      additionalProperties: false,
      required: ['selector', 'endpoints'],
      properties: {
        selector: {
          type: 'object',
          additionalProperties: false,
          properties: { matchLabels: { type: 'object', additionalProperties: { type: 'string' } } },
        },
        namespaceSelector: {
          type: 'object',
          additionalProperties: false,
          properties: { any: { type: 'boolean' }, matchNames: { type: 'array', items: { type: 'string', pattern: DNS_LABEL } } },
        },
        endpoints: {
          type: 'array',
          minItems: 1,
          items: {
            type: 'object',
            additionalProperties: false,
            properties: {
              port: { type: 'string', minLength: 1 },
              path: { type: 'string', pattern: '^/' },
              interval: { type: 'string', pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$' },
              relabelings: {
                type: 'array',
                items: {
                  type: 'object',
                  additionalProperties: false,
                  properties: { sourceLabels: { type: 'array', items: { type: 'string' } }, targetLabel: { type: 'string' }, action: { type: 'string' } },
                },
              },
            },
          },
        },
      },
    },
  },
};

/** The podvirt CNI network config (cli.md 4), as a NAD's spec.config carries it. */
export const PODVIRT_CNI_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  required: ['cniVersion', 'name', 'type'],
  properties: {
    cniVersion: { enum: ['1.0.0', '1.1.0'] },
    name: { type: 'string', minLength: 1 },
    type: { const: 'podvirt' },
    mode: { enum: ['tap', 'migration'] },
    bridge: { type: 'string', pattern: '^[A-Za-z0-9_.-]{1,15}$' },
    isGateway: { type: 'boolean' },
    mtu: { type: 'integer', minimum: 576, maximum: 65535 },
    multiQueue: { type: 'boolean' },
    owner: { type: 'integer', minimum: 0 },
    group: { type: 'integer', minimum: 0 },
    capabilities: { type: 'object', additionalProperties: { type: 'boolean' } },
    ipam: { type: 'object', required: ['type'], properties: { type: { type: 'string', minLength: 1 } } },
  },
};

const ajv = new Ajv({ allErrors: true, strict: true });
const CRDS = new Map<string, ValidateFunction>([
  ['k8s.cni.cncf.io/v1/NetworkAttachmentDefinition', ajv.compile(NAD_SCHEMA)],
  ['snapshot.storage.k8s.io/v1/VolumeSnapshotClass', ajv.compile(VSC_SCHEMA)],
  ['monitoring.coreos.com/v1/ServiceMonitor', ajv.compile(SERVICE_MONITOR_SCHEMA)],
]);
const cniConfig = ajv.compile(PODVIRT_CNI_SCHEMA);

/** Problems of a podvirt CNI config (JSON text); tap-only keys are refused in migration mode. */
export function validateCniConfig(text: string): string[] {
  let conf: unknown;
  try {
    conf = JSON.parse(text);
  } catch (e) {
    return [`config is not JSON: ${(e as Error).message}`];
  }
  const problems = cniConfig(conf) ? [] : (cniConfig.errors ?? []).map((e) => `config${e.instancePath}: ${e.message ?? 'invalid'}`);
  const c = conf as Record<string, unknown>;
  if (c.mode === 'migration') {
    for (const k of ['bridge', 'multiQueue', 'owner', 'group']) if (k in c) problems.push(`config.${k} is a tap-mode key`);
  }
  return problems;
}

/** Wraps obj so that every key the schema validator reads is recorded. */
function tracked(obj: unknown, at: string, seen: Set<string>, all: Set<string>): unknown {
  if (Array.isArray(obj)) return obj.map((v, i) => tracked(v, `${at}[${i}]`, seen, all));
  if (obj && typeof obj === 'object') {
    const copy: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(obj)) {
      all.add(`${at}.${k}`);
      copy[k] = tracked(v, `${at}.${k}`, seen, all);
    }
    return new Proxy(copy, {
      get(target, prop, recv) {
        if (typeof prop === 'string' && Object.hasOwn(target, prop)) seen.add(`${at}.${prop}`);
        return Reflect.get(target, prop, recv) as unknown;
      },
    });
  }
  return obj;
}

/** Returns the problems of one manifest (empty when valid). */
export function validateManifest(m: { apiVersion?: unknown; kind?: unknown }): string[] {
  const key = `${String(m.apiVersion)}/${String(m.kind)}`;
  const crd = CRDS.get(key);
  if (crd) {
    if (crd(m)) return [];
    return (crd.errors ?? []).map((e) => `${key}${e.instancePath}: ${e.message ?? 'invalid'}`);
  }
  const model = MODELS.find((c) => `${c.apiVersion}/${c.kind}` === key);
  if (!model) return [`${key}: no schema known for this kind`];
  const seen = new Set<string>();
  const all = new Set<string>();
  try {
    model.prototype.validate.call(tracked(m, '', seen, all));
  } catch (e) {
    return [`${key}: ${(e as Error).message}`];
  }
  const unknown = [...all].filter((k) => !seen.has(k));
  return unknown.map((k) => `${key}: unknown field ${k}`);
}
