import { exec, type Exec } from '../../lib/exec.js';
import { InvalidArgument } from '../../lib/errors.js';

/** Where `ip netns` keeps its named namespaces (fixed in iproute2). */
export const NETNS_DIR = '/run/netns';

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;

/**
 * Named network namespaces through `ip netns` child processes: the Node process never enters one
 * (a setns moves only the calling thread, see style.md).
 */
export class Netns {
  constructor(private readonly run: Exec = exec) {}

  static path(name: string): string {
    return `${NETNS_DIR}/${name}`;
  }

  /** Creates the namespace with its loopback up; an existing one of that name is an error, not reused. */
  async create(name: string): Promise<string> {
    if (!NAME.test(name)) throw new InvalidArgument(`netns name "${name}" is not valid`);
    await this.run('ip', ['netns', 'add', name]);
    try {
      await this.run('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
    } catch (e) {
      await this.delete(name);
      throw e;
    }
    return Netns.path(name);
  }

  async exists(name: string): Promise<boolean> {
    const r = await this.run('ip', ['netns', 'list'], { allowFailure: true });
    return r.stdout.split('\n').some((l) => l.split(' ')[0] === name);
  }

  /** Deletes the namespace; already gone is fine. */
  async delete(name: string): Promise<void> {
    if (!(await this.exists(name))) return;
    await this.run('ip', ['netns', 'delete', name]);
  }
}
