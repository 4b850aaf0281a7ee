/** `podvirt device-plugin`: flags -> startDevicePlugin -> run until SIGTERM/SIGINT. */
import { parseFlags } from '../lib/cli-args.js';
import { createLogger } from '../lib/log.js';
import { DEFAULT_CDI_DIR } from './cdi.js';
import { startDevicePlugin } from './device-plugin.js';

export const USAGE = `usage: podvirt device-plugin [--kubelet-dir DIR] [--dev-root DIR] [--sys-root DIR] [--config FILE] [--cdi-dir DIR]`;

export async function main(argv: string[]): Promise<number> {
  const { values: f } = parseFlags(argv, {
    'kubelet-dir': { type: 'string', default: '/var/lib/kubelet/device-plugins' },
    'dev-root': { type: 'string', default: '/dev' },
    'sys-root': { type: 'string', default: '/sys' },
    config: { type: 'string' },
    'cdi-dir': { type: 'string', default: DEFAULT_CDI_DIR },
    help: { type: 'boolean', short: 'h' },
  });
  if (f.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const logger = createLogger('device-plugin');
  // Listen before starting: a SIGTERM during start-up must still end in a clean stop.
  const signal = new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
  const dp = await startDevicePlugin({
    kubeletDir: f['kubelet-dir'],
    devRoot: f['dev-root'],
    sysRoot: f['sys-root'],
    configFile: f.config,
    cdiDir: f['cdi-dir'],
    logger,
  });
  logger.info({ signal: await signal }, 'shutting down');
  await dp.stop();
  return 0;
}
