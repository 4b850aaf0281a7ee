/** `kubectl podvirt status NAME`: the VM's status annotation, its condition, topology summary and recent events. */
import { CoreV1Api } from '@kubernetes/client-node';
import { parseFlags } from '../../../lib/cli-args.js';
import { InvalidArgument } from '../../../lib/errors.js';
import { ANN_MIGRATION, ANN_TOPOLOGY, COND_VM_READY } from '../names.js';
import { KUBE_FLAG_OPTIONS, age, isVmPod, loadKubeConfig, vmStatusOf, type Io } from './common.js';

export async function status(argv: string[], io: Io): Promise<number> {
  const { values, positionals } = parseFlags(argv, { ...KUBE_FLAG_OPTIONS, json: { type: 'boolean' } }, true);
  if (positionals.length !== 1) throw new InvalidArgument('usage: kubectl podvirt status NAME [-n NAMESPACE] [--json]');
  const { kc, namespace } = loadKubeConfig(values);
  const core = kc.makeApiClient(CoreV1Api);
  const name = positionals[0]!;
  const pod = await core.readNamespacedPod({ namespace, name });
  if (!isVmPod(pod)) throw new InvalidArgument(`pod ${namespace}/${name} is not a VM pod (no vm.podvirt.io/spec annotation)`);
  const s = vmStatusOf(pod);
  const cond = pod.status?.conditions?.find((c) => c.type === COND_VM_READY);
  const ann = pod.metadata?.annotations ?? {};
  let topology: unknown;
  try {
    topology = ann[ANN_TOPOLOGY] ? JSON.parse(ann[ANN_TOPOLOGY]) : undefined;
  } catch {
    topology = ann[ANN_TOPOLOGY];
  }
  const events = (await core.listNamespacedEvent({ namespace, fieldSelector: `involvedObject.name=${name},involvedObject.kind=Pod` })).items
    .filter((e) => e.involvedObject.uid === undefined || e.involvedObject.uid === pod.metadata?.uid)
    .sort((a, b) => new Date(a.lastTimestamp ?? 0).getTime() - new Date(b.lastTimestamp ?? 0).getTime());
  if (values.json) {
    io.stdout.write(
      JSON.stringify(
        {
          namespace,
          name,
          node: pod.spec?.nodeName ?? null,
          ...s,
          ready: cond ? { status: cond.status, reason: cond.reason, message: cond.message } : null,
          topology: topology ?? null,
          migration: ann[ANN_MIGRATION] ? JSON.parse(ann[ANN_MIGRATION]) : null,
          events: events.map((e) => ({ type: e.type, reason: e.reason, message: e.message, count: e.count })),
        },
        null,
        2,
      ) + '\n',
    );
    return 0;
  }
  const lines = [
    `Name:       ${name}`,
    `Namespace:  ${namespace}`,
    `Node:       ${pod.spec?.nodeName ?? '<none>'}`,
    `Phase:      ${s.phase ?? 'Pending'}`,
    `Ready:      ${cond ? `${cond.status} (${cond.reason ?? ''}${cond.message ? `: ${cond.message}` : ''})` : 'Unknown'}`,
    `QEMU pid:   ${s.qemuPid ?? '-'}`,
    `vCPUs:`,
    ...(s.vcpuThreads ?? []).map((t) => `  vcpu${t.index}  tid ${t.tid}  cpus ${t.cpus.join(',')}`),
    `Topology:   ${topology === undefined ? '<not recorded yet>' : 'recorded (vm.podvirt.io/topology)'}`,
    `Events:`,
    ...(events.length ? events.map((e) => `  ${(e.type ?? '').padEnd(8)}${(e.reason ?? '').padEnd(12)}${age(e.lastTimestamp ?? e.eventTime ?? undefined).padEnd(6)}${e.message ?? ''}`) : ['  <none>']),
  ];
  io.stdout.write(lines.join('\n') + '\n');
  return 0;
}
