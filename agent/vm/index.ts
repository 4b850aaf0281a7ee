export { VmController, type VmPhase, type VmStatus, type VmState, type VmControllerOptions, type StartOptions, type HotplugDisk, type HotplugNic } from './controller.js';
