import * as path from 'node:path';
import { parseFlags } from '../../lib/cli-args.js';
import { InvalidArgument } from '../../lib/errors.js';
import { createLogger } from '../../lib/log.js';
import { parseCpuList } from '../../lib/sysfs.js';
import { CniBackend } from './cni-backend.js';
import { CsiBackend } from './csi-backend.js';
import { startLocalDaemon } from './daemon.js';
import { PATH_FLAGS, controlSocket, localPaths } from './paths.js';
import { callControl } from './control.js';
import { agentAlive } from './spawn-agent.js';
import { createVmBackend } from './vm-backend.js';
import { vmShape } from './vm-shape.js';
import { availableParallelism } from 'node:os';

export const AGENT_USAGE =
  'usage: podvirt agent --local [--state-dir DIR] [--run-dir DIR] [--reserved-cpus LIST] [--networks-dir DIR] [--cgroup-parent NAME] [--netns-prefix P]\n       podvirt agent --local --shutdown   (stop the daemon; VMs keep running)';

/** `podvirt agent --local`: the local-mode daemon (`podvirt run` starts it on demand). */
export async function agentMain(argv: string[]): Promise<number> {
  const { values: f } = parseFlags(argv, {
    ...PATH_FLAGS,
    local: { type: 'boolean' },
    'reserved-cpus': { type: 'string' },
    'networks-dir': { type: 'string' },
    'cgroup-parent': { type: 'string' },
    'netns-prefix': { type: 'string' },
    shutdown: { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  });
  if (f.help) {
    process.stdout.write(`${AGENT_USAGE}\n`);
    return 0;
  }
  if (!f.local) throw new InvalidArgument(`only local mode is available here: ${AGENT_USAGE}`);
  const paths = localPaths(f);
  if (f.shutdown) {
    // Ask a running daemon to exit (VMs keep running); nothing to do when none runs.
    if (await agentAlive(paths)) await callControl(controlSocket(paths), 'POST', '/shutdown');
    return 0;
  }
  const env = process.env;
  // kubelet's --reserved-cpus: by default CPU 0 stays with the system when there is more than one.
  const reservedText = f['reserved-cpus'] ?? env.PODVIRT_RESERVED_CPUS ?? (availableParallelism() > 1 ? '0' : '');
  const log = createLogger('agent-local');
  const daemon = await startLocalDaemon({
    paths,
    log,
    reservedCpus: parseCpuList(reservedText),
    networksDir: f['networks-dir'] ?? env.PODVIRT_NETWORKS_DIR ?? path.join(paths.stateDir, 'networks'),
    cgroupParent: f['cgroup-parent'] ?? env.PODVIRT_CGROUP_PARENT ?? 'podvirt',
    netnsPrefix: f['netns-prefix'] ?? env.PODVIRT_NETNS_PREFIX ?? 'podvirt-',
    volumes: new CsiBackend({
      driverStateDir: path.join(paths.stateDir, 'csi'),
      stagingDir: path.join(paths.stateDir, 'csi-staging'),
      socketPath: path.join(paths.runDir, 'csi.sock'),
      runDir: paths.runDir,
      log,
    }),
    networks: new CniBackend({ socketPath: path.join(paths.runDir, 'cni.sock') }),
    vms: await createVmBackend({ paths, log }),
    vmShape,
  });
  log.info({ pid: process.pid, ...paths }, 'local agent ready');
  const why = await Promise.race([
    daemon.shutdownRequested.then(() => 'shutdown request'),
    new Promise<string>((r) => process.once('SIGTERM', () => r('SIGTERM'))),
    new Promise<string>((r) => process.once('SIGINT', () => r('SIGINT'))),
  ]);
  log.info({ why }, 'local agent stopping; VMs keep running');
  await daemon.close();
  // Idle client channels (gRPC, QMP reconnects) must not keep a stopped daemon around.
  setTimeout(() => process.exit(0), 1000).unref();
  return 0;
}
