/**
 * `podvirt agent`: the node agent in a cluster (DaemonSet). `podvirt agent --local` is local mode's
 * daemon (agent/local/agent-main.ts) and is handed over untouched.
 */
import { KubeConfig } from '@kubernetes/client-node';
import { parseFlags } from '../../lib/cli-args.js';
import { InvalidArgument } from '../../lib/errors.js';
import { createLogger } from '../../lib/log.js';
import { PACKAGE_VERSION } from '../../lib/project-root.js';
import { ClusterAgent } from './cluster-agent.js';
import { buildServers, buildVmRuntime, buildMigration, csiVolumeFigures } from './compose.js';

export const CLUSTER_AGENT_USAGE = `usage: podvirt agent [--node-name NODE] [--kubeconfig FILE] [--state-dir DIR] [--run-dir DIR]
                     [--metrics-addr [HOST]:PORT] [--cni-bin-dir DIR] [--kubelet-dir DIR]
                     [--device-plugin-config FILE] [--csi-endpoint unix:///PATH] [--csi-state-dir DIR]
                     [--disable SERVER[,SERVER...]] [--stop-timeout SECONDS] [--no-node-labels]
                     [--migration-address IP]
       podvirt agent --local ...   (local mode; see podvirt agent --local --help)
SERVER: device-plugin, csi, cni, dhcp, cni-install`;

export async function main(argv: string[]): Promise<number> {
  if (argv.includes('--local')) return (await import('../local/agent-main.js')).agentMain(argv);
  const { values: f } = parseFlags(argv, {
    'node-name': { type: 'string' },
    kubeconfig: { type: 'string' },
    'state-dir': { type: 'string', default: '/var/lib/podvirt' },
    'run-dir': { type: 'string', default: '/run/podvirt' },
    'metrics-addr': { type: 'string', default: ':9477' },
    'cni-bin-dir': { type: 'string', default: '/opt/cni/bin' },
    'kubelet-dir': { type: 'string', default: '/var/lib/kubelet' },
    'device-plugin-config': { type: 'string' },
    'csi-endpoint': { type: 'string' },
    'csi-state-dir': { type: 'string' },
    disable: { type: 'string', default: '' },
    'stop-timeout': { type: 'string', default: '30' },
    'migration-address': { type: 'string' },
    'no-node-labels': { type: 'boolean' },
    'proc-root': { type: 'string', default: '/proc' },
    'sys-root': { type: 'string', default: '/sys' },
    'dev-root': { type: 'string', default: '/dev' },
    help: { type: 'boolean', short: 'h' },
  });
  if (f.help) {
    process.stdout.write(CLUSTER_AGENT_USAGE + '\n');
    return 0;
  }
  const node = f['node-name'] ?? process.env.NODE_NAME;
  if (!node) throw new InvalidArgument('--node-name (or $NODE_NAME, from the downward API) is required');
  const stopTimeout = Number(f['stop-timeout']);
  if (!(stopTimeout > 0)) throw new InvalidArgument(`--stop-timeout must be a positive number of seconds, got "${f['stop-timeout']}"`);
  const kc = new KubeConfig();
  if (f.kubeconfig) kc.loadFromFile(f.kubeconfig);
  else if (process.env.KUBERNETES_SERVICE_HOST) kc.loadFromCluster();
  else kc.loadFromDefault();
  const log = createLogger('agent');
  const disabled = new Set(f.disable.split(',').map((s) => s.trim()).filter(Boolean));
  const cfg = {
    node,
    stateDir: f['state-dir'],
    runDir: f['run-dir'],
    cniBinDir: f['cni-bin-dir'],
    kubeletDir: f['kubelet-dir'],
    devicePluginConfig: f['device-plugin-config'],
    csiEndpoint: f['csi-endpoint'] ?? process.env.CSI_ENDPOINT,
    csiStateDir: f['csi-state-dir'],
    procRoot: f['proc-root'],
    sysRoot: f['sys-root'],
    devRoot: f['dev-root'],
    disabled,
    log,
    migrationAddress: f['migration-address'] ?? process.env.POD_IP,
    // Migrations read claims and volumes (which disks are node-local).
    kc,
  };
  const runtime = await buildVmRuntime(cfg);
  const migration = await buildMigration(cfg, runtime);
  const agent = new ClusterAgent({
    kc,
    node,
    runtime,
    ...(migration ? { migration } : {}),
    ...(process.env.POD_NAMESPACE ? { namespace: process.env.POD_NAMESPACE } : {}),
    ...(process.env.POD_NAME ? { agentPod: process.env.POD_NAME } : {}),
    log,
    version: PACKAGE_VERSION,
    metricsAddr: f['metrics-addr'],
    procRoot: f['proc-root'],
    sysRoot: f['sys-root'],
    devRoot: f['dev-root'],
    labelNode: !f['no-node-labels'],
    servers: await buildServers(cfg),
    ...(disabled.has('csi') ? {} : { volumes: csiVolumeFigures(cfg) }),
    stopTimeoutMs: stopTimeout * 1000,
  });
  await agent.start();
  await new Promise<void>((resolve) => {
    const bye = () => resolve();
    process.once('SIGTERM', bye);
    process.once('SIGINT', bye);
  });
  log.info('shutting down (VMs keep running)');
  await agent.stop();
  return 0;
}
