/**
 * `kubectl podvirt console NAME`: the VM's serial console, through the Kubernetes API only.
 *
 * The console is a unix socket on the VM's node (QEMU's serial chardev, path in the pod's
 * `vm.podvirt.io/status` as `consoleSocket`). Nothing runs in the VM pod to reach it, and the
 * user's machine cannot reach a node path, so the plugin execs `podvirt console-attach` in the
 * podvirt agent pod on that node (pods/exec, the same RBAC as `kubectl exec` into the agent's
 * namespace), which bridges the exec stream and the socket. Ctrl-] detaches.
 */
import { CoreV1Api, Exec, type V1Pod, type V1Status } from '@kubernetes/client-node';
import { PassThrough, type Readable } from 'node:stream';
import { parseFlags } from '../../../lib/cli-args.js';
import { FailedPrecondition, InvalidArgument, NotFound } from '../../../lib/errors.js';
import { KUBE_FLAG_OPTIONS, isVmPod, loadKubeConfig, vmStatusOf, type Io } from './common.js';

export const AGENT_SELECTOR = 'app.kubernetes.io/name=podvirt,app.kubernetes.io/component=agent';
export const AGENT_CONTAINER = 'agent';
const DETACH = 0x1d; // Ctrl-]

/** The agent pod on `node` (pure over a pod list). */
export function pickAgentPod(pods: readonly V1Pod[], node: string): V1Pod | undefined {
  return pods.find((p) => p.spec?.nodeName === node && p.status?.phase === 'Running' && !p.metadata?.deletionTimestamp);
}

/** Passes bytes through until the detach key, then ends (pure stream logic). */
export function detachable(input: Readable): PassThrough {
  const out = new PassThrough();
  input.on('data', (b: Buffer) => {
    const i = b.indexOf(DETACH);
    if (i >= 0) {
      if (i > 0) out.write(b.subarray(0, i));
      out.end();
      input.pause();
    } else out.write(b);
  });
  input.on('end', () => out.end());
  return out;
}

export async function consoleCmd(argv: string[], io: Io): Promise<number> {
  const { values, positionals } = parseFlags(
    argv,
    { ...KUBE_FLAG_OPTIONS, 'agent-namespace': { type: 'string' }, 'agent-selector': { type: 'string', default: AGENT_SELECTOR }, 'agent-container': { type: 'string', default: AGENT_CONTAINER } },
    true,
  );
  if (positionals.length !== 1) throw new InvalidArgument('usage: kubectl podvirt console NAME [-n NAMESPACE] [--agent-namespace NS]');
  const { kc, namespace } = loadKubeConfig(values);
  const core = kc.makeApiClient(CoreV1Api);
  const name = positionals[0]!;
  const pod = await core.readNamespacedPod({ namespace, name });
  if (!isVmPod(pod)) throw new InvalidArgument(`pod ${namespace}/${name} is not a VM pod`);
  const node = pod.spec?.nodeName;
  const sock = vmStatusOf(pod).consoleSocket;
  if (!node || typeof sock !== 'string') throw new FailedPrecondition(`the VM of ${namespace}/${name} is not running (no console socket reported yet)`);
  const agents = values['agent-namespace']
    ? await core.listNamespacedPod({ namespace: values['agent-namespace'], labelSelector: values['agent-selector'], fieldSelector: `spec.nodeName=${node}` })
    : await core.listPodForAllNamespaces({ labelSelector: values['agent-selector'], fieldSelector: `spec.nodeName=${node}` });
  const agent = pickAgentPod(agents.items, node);
  if (!agent) throw new NotFound(`no running podvirt agent pod on node ${node} (selector ${values['agent-selector']})`);
  const stdin = io.stdin ?? process.stdin;
  const tty = Boolean(stdin.isTTY);
  if (tty) {
    stdin.setRawMode?.(true);
    io.stderr.write(`Connected to the serial console of ${namespace}/${name} (escape character is ^])\r\n`);
  }
  try {
    const status = await new Promise<V1Status | undefined>((resolve, reject) => {
      new Exec(kc)
        .exec(
          agent.metadata!.namespace!,
          agent.metadata!.name!,
          values['agent-container'],
          ['podvirt', 'console-attach', '--socket', sock],
          io.stdout as NodeJS.WritableStream as import('node:stream').Writable,
          io.stderr as NodeJS.WritableStream as import('node:stream').Writable,
          detachable(stdin as Readable),
          tty,
          (s) => resolve(s),
        )
        .then((ws) => {
          ws.on('close', () => resolve(undefined));
          ws.on('error', reject);
        }, reject);
    });
    if (status && status.status !== 'Success') {
      io.stderr.write(`console: ${status.message ?? status.reason ?? 'failed'}\n`);
      return 1;
    }
    return 0;
  } finally {
    if (tty) stdin.setRawMode?.(false);
  }
}
