/** Annotation, condition and label names the agent reads and writes on pods and nodes. */
export const ANN_SPEC = 'vm.podvirt.io/spec';
export const ANN_TOPOLOGY = 'vm.podvirt.io/topology';
export const ANN_STATUS = 'vm.podvirt.io/status';
export const ANN_MIGRATE_FROM = 'vm.podvirt.io/migrate-from';
/** Progress of a migration into this (target) pod, written by the agent: JSON. */
export const ANN_MIGRATION = 'vm.podvirt.io/migration';
/**
 * On a migration source pod, written by the target node's agent: where and how to send the VM
 * (JSON `PublishedMigrationRequest`). No secret on the pod: it names the Secret in the agents'
 * namespace that holds the migration's token (see agent/kube/migration-secrets.ts).
 */
export const ANN_MIGRATION_REQUEST = 'vm.podvirt.io/migration-request';
/** Which container's namespaces and cgroup QEMU joins (default `compute`, else the first). */
export const ANN_CONTAINER = 'vm.podvirt.io/container';

export const COND_VM_READY = 'podvirt.io/VMReady';

export const AGENT_COMPONENT = 'podvirt-agent';
export const DEFAULT_CONTAINER = 'compute';
