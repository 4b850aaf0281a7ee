import koffi from 'koffi';

/** 1024 CPUs, like glibc's cpu_set_t. */
const MASK_BYTES = 128;

type SetAff = (pid: number, size: number, mask: Buffer) => number;
let setAff: SetAff | undefined;
let errnoFn: (() => number) | undefined;

function bind(): SetAff {
  if (!setAff) {
    const libc = koffi.load('libc.so.6');
    setAff = libc.func('int sched_setaffinity(int pid, size_t size, uint8_t *mask)') as SetAff;
    const loc = libc.func('int *__errno_location()') as () => unknown;
    errnoFn = () => koffi.decode(loc(), 'int') as number;
  }
  return setAff;
}

/**
 * Sets a thread's CPU affinity by host tid (sched_setaffinity takes a tid, and a tid is
 * namespace-independent from the host's view). No CAP_SYS_NICE needed in the pod: the agent does it.
 */
export function setThreadAffinity(tid: number, cpus: readonly number[]): void {
  const mask = Buffer.alloc(MASK_BYTES);
  for (const c of cpus) {
    if (!Number.isInteger(c) || c < 0 || c >= MASK_BYTES * 8) throw new Error(`cpu ${c} out of range`);
    mask[c >> 3]! |= 1 << (c & 7);
  }
  const rc = bind()(tid, MASK_BYTES, mask);
  if (rc !== 0) {
    const errno = errnoFn?.() ?? 0;
    const why = errno === 3 ? 'no such thread (ESRCH)' : errno === 22 ? 'CPUs outside the thread\'s cpuset (EINVAL)' : errno === 1 ? 'not permitted (EPERM)' : `errno ${errno}`;
    throw new AffinityError(tid, cpus, why);
  }
}

export class AffinityError extends Error {
  constructor(
    readonly tid: number,
    readonly cpus: readonly number[],
    readonly why: string,
  ) {
    super(`sched_setaffinity(${tid}, [${cpus.join(',')}]): ${why}`);
    this.name = 'AffinityError';
  }
}
