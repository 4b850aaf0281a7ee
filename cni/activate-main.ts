import { parseFlags } from '../lib/cli-args.js';
import { InvalidArgument } from '../lib/errors.js';
import { activateTap } from './activate.js';

/** `podvirt cni-activate --netns PATH --ifname NAME`: opens a migration target's tap. */
export async function main(argv: string[]): Promise<number> {
  const { values } = parseFlags(argv, { netns: { type: 'string' }, ifname: { type: 'string' } });
  if (!values.netns || !values.ifname) throw new InvalidArgument('--netns PATH and --ifname NAME are required');
  await activateTap({ netns: values.netns, ifname: values.ifname });
  return 0;
}
