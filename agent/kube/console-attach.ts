/**
 * `podvirt console-attach --socket PATH`: joins stdin/stdout to a VM's serial console socket.
 * Runs in the agent pod, started through pods/exec by `kubectl podvirt console`; ends when either
 * side closes.
 */
import * as net from 'node:net';
import { parseFlags } from '../../lib/cli-args.js';
import { InvalidArgument, Unavailable, errorMessage } from '../../lib/errors.js';

export async function main(argv: string[]): Promise<number> {
  const { values } = parseFlags(argv, { socket: { type: 'string' } });
  if (!values.socket) throw new InvalidArgument('usage: podvirt console-attach --socket PATH');
  const sock = net.connect(values.socket);
  await new Promise<void>((resolve, reject) => {
    sock.once('connect', resolve);
    sock.once('error', (e) => reject(new Unavailable(`cannot open console ${values.socket}: ${errorMessage(e)}`)));
  });
  process.stdin.pipe(sock);
  sock.pipe(process.stdout);
  await new Promise<void>((resolve) => {
    sock.once('close', resolve);
    process.stdin.once('end', () => {
      sock.end();
      resolve();
    });
  });
  sock.destroy();
  process.stdin.unpipe(sock);
  process.stdin.pause();
  return 0;
}
