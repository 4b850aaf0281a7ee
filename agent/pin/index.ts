export { setThreadAffinity, AffinityError } from './affinity.js';
export { listTasks, parseTaskStatus, mapVcpuTids, readCgroupCpus, type TaskInfo } from './threads.js';
export { applyPins, checkPins, type PinReport, type VcpuThread, type PinnerOptions } from './pinner.js';
