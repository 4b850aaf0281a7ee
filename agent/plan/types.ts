/**
 * Plain data the VM plan consumes and produces. Everything here is JSON-able: the topology
 * is persisted (pod annotation `vm.podvirt.io/topology`, or a state file) and replayed.
 */

/** Host NUMA facts (see host-facts.ts for reading them from sysfs). */
export interface HostNumaFacts {
  /** Host CPU → NUMA node. CPUs missing here count as node 0. */
  cpuNode: Record<number, number>;
  /** Host CPU → its SMT thread siblings (itself included), when known: whole cores become guest threads. */
  siblings?: Record<number, number[]>;
  /** Free hugepages per node and size, when known (checked before launch). */
  hugepagesFree?: Record<number, Partial<Record<HugepageSize, number>>>;
}

export type HugepageSize = '2Mi' | '1Gi';

/** How the VM's container sees a volume: a raw block device node, or a mounted filesystem. */
export type VolumeSource = { kind: 'block'; devicePath: string } | { kind: 'filesystem'; mountPath: string };

/** Everything about the pod and host the plan needs, gathered by the caller (apply side). */
export interface PodFacts {
  /** VM name (QEMU `-name guest=`). */
  vmName: string;
  /** Seed for generated MACs (pod uid, or the name); defaults to vmName. */
  vmId?: string;
  /** The pod's exclusive CPUs. */
  cpuset: number[];
  numa: HostNumaFacts;
  /** The container's environment from device plugins (`PCI_RESOURCE_*`, `MDEV_PCI_RESOURCE_*`). */
  deviceEnv?: Record<string, string>;
  /** Pod volumes by name. */
  volumes: Record<string, VolumeSource>;
  /** Interface name → tap device in the pod's netns (binding tap). */
  taps?: Record<string, string>;
  /** Interface name → passt unix socket (binding passt). */
  passtSockets?: Record<string, string>;
  /** Open vhost-net for taps (the pod was granted devices.kubevirt.io/vhost-net). */
  vhostNet?: boolean;
  /** `/dev/kvm` is usable for this VM (see launch/accel.ts). */
  kvmUsable: boolean;
  /** QEMU's machine aliases, e.g. `{ q35: 'pc-q35-7.2' }` (host-facts `qemuMachineAliases`). */
  machineAliases: Record<string, string>;
  /** Directory (as QEMU sees it) for the QMP socket, serial socket/log and pid file. */
  runDir: string;
  /** The stored topology to replay, if the VM ran before. */
  topology?: unknown;
  /** Default `qemu-system-x86_64`. */
  qemuBinary?: string;
}

export interface PlanOptions {
  /** Start with `-S` so vCPUs can be pinned before the guest runs (default true). */
  startPaused?: boolean;
  /** Migration target: add `-incoming defer`. */
  incoming?: boolean;
}

/** A PCIe root port on pcie.0. */
export interface TopologyPort {
  id: string;
  chassis: number;
  port: number;
  /** Slot and function on pcie.0. */
  slot: number;
  function: number;
}

export type TopologyDeviceKind = 'disk' | 'nic' | 'hostdev' | 'scsi-controller';

/** One guest-visible device and where it sits. */
export interface TopologyDevice {
  /** Stable identity: `disk:<name>`, `nic:<name>`, `hostdev:<ENV>:<i>`, `scsi:0`. */
  key: string;
  kind: TopologyDeviceKind;
  /** QEMU device id. */
  id: string;
  driver: string;
  /** Root port id (PCI devices) or SCSI bus (`scsi0.0`). */
  bus: string;
  /** PCI: slot on the root port (always 0). SCSI: scsi-id. */
  addr: number;
  mac?: string;
  serial?: string;
  /** True when it was hotplugged (not in the spec at start). */
  hotplugged?: boolean;
}

export interface NumaCell {
  id: number;
  vcpus: number[];
  memoryBytes: number;
}

/** The guest's hardware, fixed at first start and replayed after. */
export interface VmTopology {
  version: 1;
  /** Versioned machine type, e.g. `pc-q35-7.2`. */
  machine: string;
  cpuModel: string;
  cpus: number;
  /** Guest threads per core (absent = 1): set when the vCPUs sit on whole host SMT cores. */
  threadsPerCore?: number;
  memoryBytes: number;
  numaCells: NumaCell[];
  rootPorts: TopologyPort[];
  devices: TopologyDevice[];
}

export interface VcpuPin {
  index: number;
  cpu: number;
  /** Host NUMA node of `cpu`. */
  node: number;
  /** Guest NUMA cell of this vCPU. */
  cell: number;
}

export interface PinMap {
  vcpus: VcpuPin[];
  /** Where every non-vCPU QEMU thread (main loop, I/O, workers) goes. */
  emulator: number[];
}

export interface VmPlan {
  /** argv[0] is the QEMU binary. */
  argv: string[];
  accel: 'kvm' | 'tcg';
  topology: VmTopology;
  pins: PinMap;
  /** Host nodes per guest cell (memory bound with policy=bind). */
  cellHostNodes: Record<number, number[]>;
  paths: { qmpSocket: string; serialSocket: string | undefined; serialLog: string | undefined; pidFile: string };
  /** Human-readable notes (e.g. devices added to a replayed topology). */
  notes: string[];
}
