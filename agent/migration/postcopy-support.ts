import { promises as fs } from 'node:fs';

/** Where the kernel says whether unprivileged users may create userfaultfds. */
export const UNPRIVILEGED_USERFAULTFD_SYSCTL = '/proc/sys/vm/unprivileged_userfaultfd';

/**
 * Whether a QEMU running as `qemuUid` may use userfaultfd, which post-copy needs: root always can;
 * anyone else only with `vm.unprivileged_userfaultfd=1`. A kernel without the knob (before 5.2)
 * lets only privileged users, so a missing file means "no" for non-root QEMU. Each side of a
 * migration answers for its own host; the planner uses post-copy only when both say yes.
 */
export async function postCopySupported(o: { qemuUid: number; sysctlPath?: string }): Promise<boolean> {
  if (o.qemuUid === 0) return true;
  try {
    return (await fs.readFile(o.sysctlPath ?? UNPRIVILEGED_USERFAULTFD_SYSCTL, 'utf8')).trim() === '1';
  } catch {
    return false;
  }
}
