import { formatCpuList } from '../../lib/sysfs.js';
import type { VmDiskSpec, VmSpec } from '../spec/vm-spec.js';
import { bootDiskName } from '../spec/vm-spec.js';
import { blockdevNodes, diskDeviceProps, hostDevices, netdevProps, nicDeviceProps, rootPortProps } from './devices.js';
import type { PlanOptions, PodFacts, VmPlan, VmTopology } from './types.js';

/** seccomp: no obsolete syscalls, no setuid/setgid, no fork/exec, no affinity/priority changes (the agent pins). */
export const SANDBOX = 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny';

/** QEMU's `-opt a=b,c=d` values double commas inside a value. */
const esc = (v: string) => v.replace(/,/g, ',,');
const json = (o: object) => JSON.stringify(o);

export interface ArgvInput {
  spec: VmSpec;
  facts: PodFacts;
  accel: 'kvm' | 'tcg';
  topology: VmTopology;
  hostNodes: Record<number, number[]>;
  paths: VmPlan['paths'];
  opts: PlanOptions;
  diskSource: (d: VmDiskSpec) => { file: string; block: boolean };
}

export function buildArgv(a: ArgvInput): string[] {
  const { spec, facts, topology: t } = a;
  const argv: string[] = [facts.qemuBinary ?? 'qemu-system-x86_64'];
  const add = (...xs: string[]) => argv.push(...xs);

  add('-name', `guest=${esc(facts.vmName)},debug-threads=on`);
  add('-machine', `${t.machine},usb=off,vmport=off,dump-guest-core=off`);
  add('-accel', a.accel);
  add('-cpu', t.cpuModel);
  const threads = t.threadsPerCore ?? 1;
  add('-smp', `${t.cpus},sockets=${t.cpus / threads},cores=1,threads=${threads}`);
  add('-m', `${t.memoryBytes / 2 ** 20}M`);
  for (const c of t.numaCells) {
    // A node list is written as repeated host-nodes= ranges ("host-nodes=0-1,host-nodes=3").
    const nodes = formatCpuList(a.hostNodes[c.id] ?? [0])
      .split(',')
      .map((r) => `host-nodes=${r}`)
      .join(',');
    const base = `id=mem${c.id},size=${c.memoryBytes},${nodes},policy=bind`;
    if (spec.hugepages) {
      const hs = spec.hugepages.pageSize === '1Gi' ? '1G' : '2M';
      add('-object', `memory-backend-memfd,${base},hugetlb=on,hugetlbsize=${hs},prealloc=on`);
    } else {
      add('-object', `memory-backend-ram,${base}`);
    }
    add('-numa', `node,nodeid=${c.id},memdev=mem${c.id}`);
  }
  // One entry per guest socket (a core's threads share its socket, hence its cell).
  for (const c of t.numaCells) {
    for (const s of [...new Set(c.vcpus.map((v) => Math.floor(v / threads)))]) add('-numa', `cpu,node-id=${c.id},socket-id=${s}`);
  }

  add('-sandbox', SANDBOX);
  add('-nodefaults', '-no-user-config', '-display', 'none');
  add('-msg', 'timestamp=on');
  // Native PCIe hotplug in the root ports (ACPI hotplug is q35's default since 6.1): Linux handles
  // it with pciehp, and a slot the guest never powered (firmware only) unplugs at once.
  add('-global', 'ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off');
  add('-qmp', `unix:${esc(a.paths.qmpSocket)},server=on,wait=off`);
  add('-pidfile', a.paths.pidFile);
  if (a.paths.serialSocket && a.paths.serialLog) {
    add('-chardev', `socket,id=serial0,path=${esc(a.paths.serialSocket)},server=on,wait=off,logfile=${esc(a.paths.serialLog)},logappend=on`);
    add('-serial', 'chardev:serial0');
  }

  if (spec.kernel) {
    add('-kernel', spec.kernel);
    if (spec.initrd) add('-initrd', spec.initrd);
    if (spec.cmdline !== undefined) add('-append', spec.cmdline);
  } else {
    add('-boot', 'strict=on');
  }

  // pvpanic (ISA, I/O port 0x505): a guest kernel panic becomes a GUEST_PANICKED event.
  add('-device', json({ driver: 'pvpanic', id: 'pvpanic0', ioport: 0x505 }));
  for (const p of t.rootPorts) add('-device', json(rootPortProps(p)));

  const boot = bootDiskName(spec);
  for (const td of t.devices) {
    if (td.kind === 'scsi-controller') {
      add('-device', json({ driver: td.driver, id: td.id, bus: td.bus, addr: `0x${td.addr.toString(16)}` }));
    }
  }
  for (const td of t.devices) {
    if (td.kind !== 'disk') continue;
    const d = spec.disks.find((x) => `disk:${x.name}` === td.key)!;
    const src = a.diskSource(d);
    for (const node of blockdevNodes(d, src)) add('-blockdev', json(node));
    const bootIndex = d.bootIndex ?? (boot === d.name ? 0 : undefined);
    add('-device', json(diskDeviceProps(td, d, src.block, bootIndex)));
  }
  for (const td of t.devices) {
    if (td.kind !== 'nic') continue;
    const n = spec.interfaces.find((x) => `nic:${x.name}` === td.key)!;
    const backend =
      n.binding === 'tap' ? { tap: facts.taps![n.name]!, vhost: facts.vhostNet === true } : { passtSocket: facts.passtSockets![n.name]! };
    add('-netdev', netdevArg(netdevProps(n.name, backend)));
    add('-device', json(nicDeviceProps(td, n.name)));
  }
  const hds = hostDevices(facts.deviceEnv ?? {});
  for (const td of t.devices) {
    if (td.kind !== 'hostdev') continue;
    const h = hds.find((x) => x.key === td.key)!;
    const props: Record<string, unknown> = { driver: 'vfio-pci', id: td.id, bus: td.bus, addr: `0x${td.addr.toString(16)}` };
    if (h.host) props.host = h.host;
    else props.sysfsdev = `/sys/bus/mdev/devices/${h.mdev}`;
    add('-device', json(props));
  }

  if (a.opts.incoming) add('-incoming', 'defer');
  else if (a.opts.startPaused !== false) add('-S');
  return argv;
}

/** `-netdev` as key=value (JSON `-netdev` is newer than some QEMUs we meet). */
function netdevArg(p: Record<string, unknown>): string {
  const parts: string[] = [String(p.type)];
  for (const [k, v] of Object.entries(p)) {
    if (k === 'type') continue;
    if (typeof v === 'object' && v !== null) {
      for (const [k2, v2] of Object.entries(v)) parts.push(`${k}.${k2}=${esc(String(v2))}`);
    } else {
      parts.push(`${k}=${esc(typeof v === 'boolean' ? (v ? 'on' : 'off') : String(v))}`);
    }
  }
  return parts.join(',');
}
