import { constants, promises as fs } from 'node:fs';
import * as path from 'node:path';
import koffi from 'koffi';
import { errorMessage } from '../../lib/errors.js';

/** `KVM_GET_API_VERSION` = _IO(KVMIO=0xAE, 0x00); every KVM since 2.6.22 answers 12. */
const KVM_GET_API_VERSION = 0xae00;
const KVM_API_VERSION = 12;

export interface KvmProbe {
  usable: boolean;
  /** Why not (or what was found), for logs and `accel: auto` decisions. */
  reason: string;
}

let ioctlFn: ((fd: number, req: number, arg: number) => number) | undefined;
function ioctl(fd: number, req: number, arg: number): number {
  if (!ioctlFn) {
    const libc = koffi.load('libc.so.6');
    ioctlFn = libc.func('int ioctl(int fd, unsigned long req, long arg)') as (fd: number, req: number, arg: number) => number;
  }
  return ioctlFn(fd, req, arg);
}

/**
 * Is `/dev/kvm` usable for stock guests? Opens it read-write and asks KVM_GET_API_VERSION.
 * A PVM host (`kvm_pvm` loaded: nested KVM for PVM-enlightened guest kernels only) answers the
 * ioctl fine but stock kernels die in the instruction emulator, so it counts as not usable.
 */
export async function probeKvm(roots: { dev?: string; sys?: string } = {}): Promise<KvmProbe> {
  const dev = path.join(roots.dev ?? '/dev', 'kvm');
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(dev, constants.O_RDWR);
  } catch (e) {
    return { usable: false, reason: `${dev}: ${errorMessage(e)}` };
  }
  try {
    const v = ioctl(fh.fd, KVM_GET_API_VERSION, 0);
    if (v !== KVM_API_VERSION) return { usable: false, reason: `${dev}: KVM_GET_API_VERSION returned ${v}, want ${KVM_API_VERSION}` };
  } catch (e) {
    return { usable: false, reason: `${dev}: ioctl failed: ${errorMessage(e)}` };
  } finally {
    await fh.close();
  }
  try {
    await fs.access(path.join(roots.sys ?? '/sys', 'module', 'kvm_pvm'));
    return { usable: false, reason: 'KVM here is PVM (kvm_pvm): only PVM-enlightened guest kernels run under it' };
  } catch {
    return { usable: true, reason: `${dev}: KVM API ${KVM_API_VERSION}` };
  }
}
