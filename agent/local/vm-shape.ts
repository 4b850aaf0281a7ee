import { parseVmSpec } from '../spec/index.js';

/** What the pod around a VM needs from its spec: CPUs to carve, memory, implied device resources. */
export interface VmShape {
  cpus: number;
  memoryBytes: number;
  /** One more exclusive CPU for the emulator and I/O threads (`isolateEmulatorThread`). */
  extraCpus: number;
  wantsTun: boolean;
  wantsKvm: boolean;
  /** Networks the VM's interfaces name (`pod` is the pod network). */
  networks: string[];
}

/** Validates the spec (errors name the field) and derives the pod-level shape. */
export function vmShape(text: string): VmShape {
  const s = parseVmSpec(text);
  const taps = s.interfaces.filter((i) => i.binding === 'tap');
  return {
    cpus: s.cpus,
    memoryBytes: s.memory,
    extraCpus: s.isolateEmulatorThread ? 1 : 0,
    wantsTun: taps.length > 0,
    wantsKvm: s.accel === 'kvm',
    networks: [...new Set(s.interfaces.map((i) => i.network))],
  };
}
