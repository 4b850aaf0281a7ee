export { probeKvm, type KvmProbe } from './accel.js';
export { launcherCommand, inPodLauncher, hostCgroupNsPrefix, setprivArgs, LAUNCH_SCRIPT, type LaunchSandbox } from './launcher.js';
export { spawnQemu, logTail, type SpawnedQemu } from './spawn.js';
export { findHostPid, readNsPids } from './host-pid.js';
