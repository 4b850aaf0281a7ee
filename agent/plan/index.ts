export * from './types.js';
export { planVm, resolveAccel, generatedMac, diskSource, defaultSerial } from './plan.js';
export { planPins, planCells, guestThreadsPerCore, cellHostNodes, checkHugepages, HUGEPAGE_BYTES } from './cpu-numa.js';
export { parseTopology, placePciDevice, removeDevice, freePorts, ensureFreePorts, pciPath, makePort, MAX_ROOT_PORTS } from './topology.js';
export * from './devices.js';
export { SANDBOX } from './argv.js';
export { readNumaFacts, parseMachineHelp, qemuMachineAliases } from './host-facts.js';
