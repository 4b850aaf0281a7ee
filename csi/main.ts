import { parseFlags } from '../lib/cli-args.js';
import { InvalidArgument } from '../lib/errors.js';
import { createLogger } from '../lib/log.js';
import { startCsiDriver } from './server.js';

/**
 * `podvirt csi --endpoint unix:///PATH --node-id ID --state-dir DIR` (CSI_ENDPOINT as fallback)
 * `[--qsd-cgroup podvirt/qsd] [--cgroup-root /sys/fs/cgroup]`: the volume daemons join that
 * cgroup so they outlive this process's container; `--qsd-cgroup ''` keeps them in ours.
 */
export async function main(argv: string[]): Promise<number> {
  const { values } = parseFlags(argv, {
    endpoint: { type: 'string' },
    'node-id': { type: 'string' },
    'state-dir': { type: 'string' },
    'qsd-cgroup': { type: 'string' },
    'cgroup-root': { type: 'string' },
  });
  const endpoint = values.endpoint ?? process.env.CSI_ENDPOINT;
  if (!endpoint) throw new InvalidArgument('--endpoint unix:///PATH (or CSI_ENDPOINT) is required');
  if (!values['node-id']) throw new InvalidArgument('--node-id is required');
  if (!values['state-dir']) throw new InvalidArgument('--state-dir is required');
  const logger = createLogger('csi');
  const qsdCgroup = values['qsd-cgroup'] ?? 'podvirt/qsd';
  const driver = await startCsiDriver({
    endpoint,
    nodeId: values['node-id'],
    stateDir: values['state-dir'],
    logger,
    ...(qsdCgroup ? { qsdCgroup } : {}),
    ...(values['cgroup-root'] ? { cgroupRoot: values['cgroup-root'] } : {}),
  });
  await new Promise<void>((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
  await driver.stop();
  logger.info('CSI driver stopped (staged volumes stay in place)');
  return 0;
}
