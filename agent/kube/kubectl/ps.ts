/** `kubectl podvirt ps`: the VM pods, their node, phase, QEMU pid, vCPUs and readiness. */
import { CoreV1Api } from '@kubernetes/client-node';
import { parseFlags } from '../../../lib/cli-args.js';
import { KUBE_FLAG_OPTIONS, age, isVmPod, loadKubeConfig, table, vmReady, vmStatusOf, type Io } from './common.js';

export async function ps(argv: string[], io: Io): Promise<number> {
  const { values } = parseFlags(argv, { ...KUBE_FLAG_OPTIONS, 'all-namespaces': { type: 'boolean', short: 'A' }, output: { type: 'string', short: 'o' } });
  const { kc, namespace } = loadKubeConfig(values);
  const core = kc.makeApiClient(CoreV1Api);
  const list = values['all-namespaces'] ? await core.listPodForAllNamespaces() : await core.listNamespacedPod({ namespace });
  const vms = list.items.filter(isVmPod).sort((a, b) => `${a.metadata!.namespace}/${a.metadata!.name}`.localeCompare(`${b.metadata!.namespace}/${b.metadata!.name}`));
  if (values.output === 'json') {
    const out = vms.map((p) => ({ namespace: p.metadata!.namespace, name: p.metadata!.name, node: p.spec?.nodeName ?? null, ready: vmReady(p), ...vmStatusOf(p) }));
    io.stdout.write(JSON.stringify(out, null, 2) + '\n');
    return 0;
  }
  if (values.output !== undefined) throw new Error(`unsupported output format "${values.output}" (json or the default table)`);
  if (vms.length === 0) {
    io.stderr.write(values['all-namespaces'] ? 'No VM pods found.\n' : `No VM pods found in ${namespace} namespace.\n`);
    return 0;
  }
  const rows = [[...(values['all-namespaces'] ? ['NAMESPACE'] : []), 'NAME', 'NODE', 'PHASE', 'READY', 'QEMU-PID', 'VCPUS', 'AGE']];
  for (const p of vms) {
    const s = vmStatusOf(p);
    rows.push([
      ...(values['all-namespaces'] ? [p.metadata!.namespace!] : []),
      p.metadata!.name!,
      p.spec?.nodeName ?? '<none>',
      s.phase ?? (p.metadata?.deletionTimestamp ? 'Terminating' : 'Pending'),
      vmReady(p),
      s.qemuPid !== undefined ? String(s.qemuPid) : '-',
      s.vcpuThreads ? String(s.vcpuThreads.length) : '-',
      age(p.metadata?.creationTimestamp),
    ]);
  }
  io.stdout.write(table(rows));
  return 0;
}
