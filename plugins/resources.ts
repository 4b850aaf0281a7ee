/**
 * Names podvirt serves under: the device-node resources and their paths, resource-name
 * validation (the kubelet's extended-resource rule) and the socket name of each resource.
 */

export const DEVICE_NODE_NAMES = ['kvm', 'tun', 'vhost-net', 'vhost-vsock'] as const;
export type DeviceNodeName = (typeof DEVICE_NODE_NAMES)[number];

export interface DeviceNodeResource {
  node: DeviceNodeName;
  resourceName: string;
  /** Path relative to the dev root; the container sees it at `/dev/<rel>`. */
  rel: string;
}

export const DEVICE_NODE_RESOURCES: Record<DeviceNodeName, DeviceNodeResource> = {
  kvm: { node: 'kvm', resourceName: 'devices.kubevirt.io/kvm', rel: 'kvm' },
  tun: { node: 'tun', resourceName: 'devices.kubevirt.io/tun', rel: 'net/tun' },
  'vhost-net': { node: 'vhost-net', resourceName: 'devices.kubevirt.io/vhost-net', rel: 'vhost-net' },
  'vhost-vsock': { node: 'vhost-vsock', resourceName: 'devices.kubevirt.io/vhost-vsock', rel: 'vhost-vsock' },
};

export const DEFAULT_MAX_DEVICES = 1000;

/** Generic device nodes: the kernel arbitrates access, so read/write is enough. */
export const DEVICE_NODE_PERMISSIONS = 'rw';
/** VFIO nodes also get mknod, as KubeVirt does (runc's cgroup v2 filter denies access() probes otherwise). */
export const VFIO_PERMISSIONS = 'mrw';

/** The API version podvirt speaks; the kubelet rejects any other in Register. */
export const DEVICE_PLUGIN_API_VERSION = 'v1beta1';
export const KUBELET_SOCKET = 'kubelet.sock';
export const HEALTHY = 'Healthy';
export const UNHEALTHY = 'Unhealthy';

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const NAME_PART = /^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;

/**
 * Why `name` is not a valid extended resource name (the kubelet's `IsExtendedResourceName`), or
 * undefined when it is: `<DNS subdomain>/<name>`, outside `kubernetes.io`, and `requests.<name>`
 * must stay a qualified name.
 */
export function extendedResourceNameProblem(name: string): string | undefined {
  const slash = name.indexOf('/');
  if (slash < 0 || slash !== name.lastIndexOf('/')) return 'must be "<domain>/<name>" with exactly one "/"';
  const prefix = name.slice(0, slash);
  const local = name.slice(slash + 1);
  if (prefix.length === 0 || prefix.length > 253) return 'domain must be 1-253 characters';
  if (!prefix.split('.').every((l) => l.length <= 63 && DNS_LABEL.test(l))) return `domain "${prefix}" is not a DNS subdomain`;
  if (prefix === 'kubernetes.io' || prefix.endsWith('.kubernetes.io')) return 'the kubernetes.io domain is reserved';
  if (prefix.startsWith('requests.')) return 'must not start with "requests."';
  if (local.length === 0 || local.length > 63 || !NAME_PART.test(local)) {
    return `name "${local}" must be 1-63 characters of [A-Za-z0-9._-], alphanumeric at both ends`;
  }
  return undefined;
}

/** The socket file name for a resource inside the kubelet dir (unique per resource, no `/`). */
export function socketNameFor(resourceName: string): string {
  return `podvirt-${resourceName.replace(/[^A-Za-z0-9._-]/g, '_')}.sock`;
}
