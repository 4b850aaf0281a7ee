import { parseFlags } from '../lib/cli-args.js';
import { createLogger } from '../lib/log.js';
import { DEFAULT_CNI_SOCKET, startCniServer } from './server.js';

/** `podvirt cni-server [--socket PATH]`: serves the podvirt-cni shim until SIGTERM/SIGINT. */
export async function main(argv: string[]): Promise<number> {
  const { values } = parseFlags(argv, { socket: { type: 'string', default: DEFAULT_CNI_SOCKET } });
  const logger = createLogger('cni-server');
  const server = await startCniServer({ socketPath: values.socket, logger });
  await new Promise<void>((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
  await server.stop();
  logger.info({}, 'CNI server stopped');
  return 0;
}
