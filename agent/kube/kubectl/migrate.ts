/**
 * `kubectl podvirt migrate NAME`: creates the migration target pod (a copy of the source pod with
 * `vm.podvirt.io/migrate-from`, kept off the source node) and follows it: the target node's agent
 * reports progress in `vm.podvirt.io/migration`, and success as the `podvirt.io/VMReady` condition.
 *
 * Node-local claims (podvirt CSI volumes) cannot follow the VM: the target gets a fresh claim of
 * the same class and size for each (provisioned on the target node, filled by the disk mirror),
 * owned by the target pod until the migration succeeds, so a failed attempt takes them along.
 */
import { randomBytes } from 'node:crypto';
import { CoreV1Api, PatchStrategy, Watch, setHeaderOptions, type KubeConfig, type V1PersistentVolumeClaim, type V1Pod } from '@kubernetes/client-node';
import { DRIVER_NAME } from '../../../csi/ids.js';
import { parseFlags } from '../../../lib/cli-args.js';
import { DeadlineExceeded, FailedPrecondition, InvalidArgument, errorMessage } from '../../../lib/errors.js';
import { parse as parseYaml } from 'yaml';
import { ANN_MIGRATE_FROM, ANN_MIGRATION, ANN_SPEC, ANN_STATUS, ANN_TOPOLOGY, COND_VM_READY } from '../names.js';
import { KUBE_FLAG_OPTIONS, isVmPod, loadKubeConfig, type Io } from './common.js';
import { ProgressBar, type Progress } from './progress-bar.js';

export interface TargetOptions {
  name?: string | undefined;
  targetNode?: string | undefined;
  suffix?: string;
}

const ANN_NETWORKS = 'k8s.v1.cni.cncf.io/networks';
const ANN_NETWORK_STATUS = 'k8s.v1.cni.cncf.io/network-status';
/** Where the pod names its `"mode": "migration"` network (agent/kube/kube-migration.ts). */
const ANN_MIGRATION_NETWORK = 'vm.podvirt.io/migration-network';

type Selection = Record<string, unknown> & { name: string; namespace?: string; interface?: string };

/** Multus' selection annotation in either form (`a, ns/b@eth1` or a JSON list), as JSON elements. */
function selections(text: string): Selection[] {
  const t = text.trim();
  if (t.startsWith('[')) {
    let list: unknown;
    try {
      list = JSON.parse(t);
    } catch (e) {
      throw new InvalidArgument(`annotation ${ANN_NETWORKS} is not valid JSON: ${(e as Error).message}`);
    }
    if (!Array.isArray(list) || !list.every((e) => typeof e === 'object' && e !== null && typeof (e as Selection).name === 'string')) {
      throw new InvalidArgument(`annotation ${ANN_NETWORKS} is not a list of network selections`);
    }
    return list as Selection[];
  }
  return t.split(',').map((part) => {
    const m = /^\s*(?:([^/@\s]+)\/)?([^/@\s]+)(?:@(\S+))?\s*$/.exec(part);
    if (!m) throw new InvalidArgument(`annotation ${ANN_NETWORKS}: cannot parse "${part.trim()}"`);
    return { name: m[2]!, ...(m[1] ? { namespace: m[1] } : {}), ...(m[3] ? { interface: m[3] } : {}) };
  });
}

/**
 * The VM's IPAM owner key and addresses on every network that carries one of its taps (pure), so
 * the target pod's podvirt-cni reserves the guest's addresses for the same key (cni/ipam-owner.ts)
 * instead of the pod's sandbox: `cni-args.ipamKey` (Multus hands `cni-args` to the plugin as
 * `args.cni`) and `ips` (the source's network-status addresses, unless the selection names some).
 * A key already there is kept, so it never changes across successive migrations; a first one is
 * derived from the source pod's UID. The migration network and non-tap networks are left alone:
 * both pods need their own addresses there at the same time.
 */
export function stickyNetworks(src: V1Pod): string | undefined {
  const ann = src.metadata?.annotations ?? {};
  const text = ann[ANN_NETWORKS];
  if (!text?.trim()) return text;
  const ns = src.metadata?.namespace ?? 'default';
  const full = (name: string, namespace?: string) => (name.includes('/') ? name : `${namespace ?? ns}/${name}`);
  // Only the interfaces are needed (binding defaults to tap, as in agent/spec); the agent judges the rest.
  let tapNets: Set<string>;
  try {
    const spec = parseYaml(ann[ANN_SPEC] ?? '') as { interfaces?: Array<{ network?: unknown; binding?: unknown }> } | null;
    tapNets = new Set(
      (spec?.interfaces ?? [])
        .filter((i) => typeof i.network === 'string' && i.network !== 'pod' && (i.binding ?? 'tap') === 'tap')
        .map((i) => full(i.network as string)),
    );
  } catch {
    return text; // no VM spec to tell tap networks apart: change nothing
  }
  const migrationNet = ann[ANN_MIGRATION_NETWORK] ? full(ann[ANN_MIGRATION_NETWORK]) : undefined;
  let status: Array<{ name?: string; interface?: string; ips?: string[] }> = [];
  try {
    const parsed = JSON.parse(ann[ANN_NETWORK_STATUS] ?? '[]') as unknown;
    if (Array.isArray(parsed)) status = parsed as typeof status;
  } catch {
    /* no addresses to carry; the key alone still keeps a same-node reservation */
  }
  const uid = src.metadata?.uid;
  const derived = uid ? `podvirt-vm-${uid}` : `podvirt-vm-${ns}-${src.metadata!.name!.replace(/-mig-[0-9a-f]{5}$/, '')}`.slice(0, 128);
  const out = selections(text).map((sel) => {
    const name = full(sel.name, sel.namespace);
    if (!tapNets.has(name) || name === migrationNet) return sel;
    const args = typeof sel['cni-args'] === 'object' && sel['cni-args'] !== null ? (sel['cni-args'] as Record<string, unknown>) : {};
    const key = typeof args.ipamKey === 'string' && args.ipamKey ? args.ipamKey : derived;
    const st = status.find((x) => x.name === name && (sel.interface === undefined || x.interface === sel.interface));
    const ips = Array.isArray(sel.ips) && sel.ips.length ? sel.ips : st?.ips?.length ? st.ips : undefined;
    // migrationTarget: a silent tap and a provisional hold from the first ADD; the target agent
    // opens the tap at switch-over, before QEMU announces the VM there.
    return { ...sel, 'cni-args': { ...args, ipamKey: key, migrationTarget: true }, ...(ips ? { ips } : {}) };
  });
  return JSON.stringify(out);
}

/** The target pod for migrating `src` (pure). */
export function planTargetPod(src: V1Pod, o: TargetOptions = {}): V1Pod {
  const ns = src.metadata!.namespace!;
  const srcNode = src.spec?.nodeName;
  if (!srcNode) throw new FailedPrecondition(`pod ${ns}/${src.metadata!.name} is not scheduled yet: nothing to migrate`);
  if (o.targetNode === srcNode) throw new InvalidArgument(`--target-node ${o.targetNode} is the node the VM already runs on`);
  const ann = { ...(src.metadata?.annotations ?? {}) };
  delete ann[ANN_STATUS];
  delete ann[ANN_MIGRATION];
  ann[ANN_MIGRATE_FROM] = `${ns}/${src.metadata!.name}`;
  if (!ann[ANN_TOPOLOGY]) throw new FailedPrecondition(`pod ${ns}/${src.metadata!.name} has no recorded topology yet (is its VM running?)`);
  // The guest keeps its addresses: the target's reservations belong to the VM, not to the pod.
  const networks = stickyNetworks(src);
  if (networks !== undefined) ann[ANN_NETWORKS] = networks;
  delete ann[ANN_NETWORK_STATUS];
  const spec = structuredClone(src.spec!);
  delete spec.nodeName;
  // Never back onto the source node; onto --target-node when given.
  const terms = [{ matchExpressions: [{ key: 'kubernetes.io/hostname', operator: 'NotIn', values: [srcNode] }, ...(o.targetNode ? [{ key: 'kubernetes.io/hostname', operator: 'In', values: [o.targetNode] }] : [])] }];
  spec.affinity = { ...(spec.affinity ?? {}), nodeAffinity: { ...(spec.affinity?.nodeAffinity ?? {}), requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: terms } } };
  const base = src.metadata!.name!.replace(/-mig-[0-9a-f]{5}$/, '');
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      name: o.name ?? `${base.slice(0, 53)}-mig-${o.suffix ?? randomBytes(3).toString('hex').slice(0, 5)}`,
      namespace: ns,
      labels: { ...(src.metadata?.labels ?? {}) },
      annotations: ann,
      ...(src.metadata?.ownerReferences ? { ownerReferences: src.metadata.ownerReferences } : {}),
    },
    spec,
  };
}

const PROVISIONER_ANNOTATIONS = ['volume.kubernetes.io/storage-provisioner', 'volume.beta.kubernetes.io/storage-provisioner'];
export const ANN_FROM_CLAIM = 'migration.podvirt.io/from-claim';

/** Whether a bound claim is a podvirt (node-local) volume: from the claim's provisioner annotation, else its PV when readable. */
async function isNodeLocalClaim(core: CoreV1Api, pvc: V1PersistentVolumeClaim): Promise<boolean> {
  const ann = pvc.metadata?.annotations ?? {};
  if (PROVISIONER_ANNOTATIONS.some((k) => ann[k] === DRIVER_NAME)) return true;
  if (PROVISIONER_ANNOTATIONS.some((k) => ann[k])) return false;
  if (!pvc.spec?.volumeName) return false;
  try {
    return (await core.readPersistentVolume({ name: pvc.spec.volumeName })).spec?.csi?.driver === DRIVER_NAME;
  } catch {
    // Users often may not read PVs: a statically bound claim without the annotation counts as shared.
    return false;
  }
}

/** The target's fresh copies of the source's node-local claims (pure): claim name → new claim. */
export function planTargetClaims(claims: ReadonlyArray<V1PersistentVolumeClaim>, suffix: string): Map<string, V1PersistentVolumeClaim> {
  const out = new Map<string, V1PersistentVolumeClaim>();
  for (const c of claims) {
    const name = c.metadata!.name!;
    const base = name.replace(/-mig-[0-9a-f]{5}$/, '');
    const storage = c.spec?.resources?.requests?.storage;
    if (!storage) throw new FailedPrecondition(`claim ${c.metadata!.namespace}/${name} requests no storage size`);
    out.set(name, {
      apiVersion: 'v1',
      kind: 'PersistentVolumeClaim',
      metadata: {
        name: `${base.slice(0, 200)}-mig-${suffix}`,
        namespace: c.metadata!.namespace!,
        labels: { ...(c.metadata?.labels ?? {}) },
        annotations: { [ANN_FROM_CLAIM]: `${c.metadata!.namespace}/${name}` },
      },
      spec: {
        accessModes: c.spec?.accessModes ?? ['ReadWriteOnce'],
        ...(c.spec?.volumeMode ? { volumeMode: c.spec.volumeMode } : {}),
        ...(c.spec?.storageClassName ? { storageClassName: c.spec.storageClassName } : {}),
        resources: { requests: { storage } },
      },
    });
  }
  return out;
}

/** The source's claims that must be copied (bound podvirt volumes used through `persistentVolumeClaim`). */
async function nodeLocalClaimsOf(core: CoreV1Api, src: V1Pod): Promise<V1PersistentVolumeClaim[]> {
  const out: V1PersistentVolumeClaim[] = [];
  for (const v of src.spec?.volumes ?? []) {
    if (!v.persistentVolumeClaim) continue;
    const pvc = await core.readNamespacedPersistentVolumeClaim({ namespace: src.metadata!.namespace!, name: v.persistentVolumeClaim.claimName });
    if (await isNodeLocalClaim(core, pvc)) out.push(pvc);
  }
  return out;
}

export type MigrationOutcome = { done: true; ok: boolean; message: string } | { done: false; progress: Progress };

/** What the target pod says about the migration (pure). */
export function migrationState(target: V1Pod): MigrationOutcome {
  const cond = target.status?.conditions?.find((c) => c.type === COND_VM_READY);
  let m: Progress & { message?: string } = { phase: 'pending' };
  const raw = target.metadata?.annotations?.[ANN_MIGRATION];
  if (raw) {
    try {
      m = JSON.parse(raw) as Progress & { message?: string };
    } catch {
      /* keep pending */
    }
  }
  if (cond?.status === 'True' && cond.reason === 'Migrated') return { done: true, ok: true, message: cond.message ?? 'migrated' };
  if (m.phase === 'failed' || m.phase === 'cancelled') return { done: true, ok: false, message: m.message ?? `migration ${m.phase}` };
  if (cond?.status === 'False' && cond.reason && /Migration|Failed/.test(cond.reason)) return { done: true, ok: false, message: cond.message ?? cond.reason };
  if (!raw && !target.spec?.nodeName) m = { ...m, phase: 'scheduling' };
  return { done: false, progress: m };
}

/** Follows the target pod until the migration ends or `timeoutMs` passes. */
export async function followMigration(kc: KubeConfig, namespace: string, name: string, bar: ProgressBar, timeoutMs: number): Promise<{ ok: boolean; message: string }> {
  const core = kc.makeApiClient(CoreV1Api);
  return new Promise((resolve, reject) => {
    let ctl: AbortController | undefined;
    let finished = false;
    const finish = (r: { ok: boolean; message: string } | Error) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      ctl?.abort();
      bar.done();
      if (r instanceof Error) reject(r);
      else resolve(r);
    };
    const timer = setTimeout(() => finish(new DeadlineExceeded(`migration did not finish within ${timeoutMs / 1000} s (target pod ${namespace}/${name} left in place)`)), timeoutMs);
    const look = (p: V1Pod) => {
      const s = migrationState(p);
      if (s.done) finish({ ok: s.ok, message: s.message });
      else bar.update(s.progress);
    };
    const start = async (): Promise<void> => {
      const p = await core.readNamespacedPod({ namespace, name });
      look(p);
      if (finished) return;
      ctl = await new Watch(kc).watch(
        `/api/v1/namespaces/${namespace}/pods`,
        { fieldSelector: `metadata.name=${name}`, resourceVersion: p.metadata!.resourceVersion! },
        (type, obj: V1Pod) => {
          if (type === 'DELETED') finish(new FailedPrecondition(`target pod ${namespace}/${name} was deleted`));
          else if (type === 'ADDED' || type === 'MODIFIED') look(obj);
        },
        (err: unknown) => {
          // Streams end (timeouts, proxies): read again and re-watch.
          if (!finished) setTimeout(() => start().catch((e: unknown) => finish(e instanceof Error ? e : new Error(String(e)))), err ? 500 : 0);
        },
      );
    };
    start().catch((e: unknown) => finish(e instanceof Error ? e : new Error(String(e))));
  });
}

const SOURCE_RELEASE_TIMEOUT_MS = 60_000;

/** Whether the source pod's agent finished its side (phase Migrated / Stopped) or the pod is gone. */
export async function sourceReleased(core: CoreV1Api, namespace: string, name: string, timeoutMs: number): Promise<{ ok: boolean; message: string }> {
  const deadline = Date.now() + timeoutMs;
  let phase: string;
  for (let delay = 100; ; delay = Math.min(delay * 2, 2000)) {
    let pod: V1Pod;
    try {
      pod = await core.readNamespacedPod({ namespace, name });
    } catch (e) {
      if ((e as { code?: number }).code === 404) return { ok: true, message: 'source pod already gone' };
      throw e;
    }
    try {
      phase = String((JSON.parse(pod.metadata?.annotations?.[ANN_STATUS] ?? '{}') as { phase?: unknown }).phase ?? 'unknown');
    } catch {
      phase = 'unreadable';
    }
    if (phase === 'Migrated' || phase === 'Stopped') return { ok: true, message: phase };
    if (Date.now() + delay > deadline) return { ok: false, message: `its agent did not report Migrated within ${Math.round(timeoutMs / 1000)} s (phase ${phase})` };
    await new Promise((r) => setTimeout(r, delay));
  }
}

export async function migrate(argv: string[], io: Io): Promise<number> {
  const { values, positionals } = parseFlags(
    argv,
    { ...KUBE_FLAG_OPTIONS, 'target-node': { type: 'string' }, 'target-name': { type: 'string' }, 'no-wait': { type: 'boolean' }, 'keep-source': { type: 'boolean' }, timeout: { type: 'string', default: '600' } },
    true,
  );
  if (positionals.length !== 1) throw new InvalidArgument('usage: kubectl podvirt migrate NAME [-n NAMESPACE] [--target-node NODE] [--no-wait] [--keep-source] [--timeout SECONDS]');
  const timeoutS = Number(values.timeout);
  if (!(timeoutS > 0)) throw new InvalidArgument(`--timeout must be a positive number of seconds, got "${values.timeout}"`);
  const { kc, namespace } = loadKubeConfig(values);
  const core = kc.makeApiClient(CoreV1Api);
  const src = await core.readNamespacedPod({ namespace, name: positionals[0]! });
  if (!isVmPod(src)) throw new InvalidArgument(`pod ${namespace}/${positionals[0]} is not a VM pod`);
  const suffix = randomBytes(3).toString('hex').slice(0, 5);
  const fresh = planTargetClaims(await nodeLocalClaimsOf(core, src), suffix);
  const body = planTargetPod(src, { name: values['target-name'], targetNode: values['target-node'], suffix });
  for (const v of body.spec?.volumes ?? []) {
    const c = v.persistentVolumeClaim && fresh.get(v.persistentVolumeClaim.claimName);
    if (c) v.persistentVolumeClaim!.claimName = c.metadata!.name!;
  }
  const target = await core.createNamespacedPod({ namespace, body });
  const tname = target.metadata!.name!;
  io.stderr.write(`migration target pod ${namespace}/${tname} created\n`);
  const owner = { apiVersion: 'v1', kind: 'Pod', name: tname, uid: target.metadata!.uid!, blockOwnerDeletion: false };
  for (const [from, c] of fresh) {
    try {
      await core.createNamespacedPersistentVolumeClaim({ namespace, body: { ...c, metadata: { ...c.metadata, ownerReferences: [owner] } } });
    } catch (e) {
      // Without its claims the target can never run: take it down (owned claims go with it).
      await core.deleteNamespacedPod({ namespace, name: tname }).catch(() => undefined);
      throw new FailedPrecondition(`cannot create claim ${c.metadata!.name} for the target: ${errorMessage(e)}`, { cause: e });
    }
    io.stderr.write(`claim ${namespace}/${c.metadata!.name} created for it (a fresh node-local copy of ${from}, filled by the migration)\n`);
  }
  if (values['no-wait']) {
    io.stdout.write(`${tname}\n`);
    return 0;
  }
  const r = await followMigration(kc, namespace, tname, new ProgressBar(io.stderr), timeoutS * 1000);
  if (!r.ok) {
    io.stderr.write(`migration failed: ${r.message}\n`);
    return 1;
  }
  io.stdout.write(`${namespace}/${positionals[0]} migrated to ${tname}: ${r.message}\n`);
  for (const [from, c] of fresh) {
    // They hold the VM's disks now: no longer tied to this pod's lifetime (as the source's were not).
    await core.patchNamespacedPersistentVolumeClaim({ namespace, name: c.metadata!.name!, body: { metadata: { ownerReferences: null } } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch));
    io.stderr.write(`claim ${namespace}/${from} is no longer used by the VM; delete it when you no longer need its old copy\n`);
  }
  if (!values['keep-source']) {
    // The source agent hands the VM's IPAM reservation over when its side completes; deleting the
    // pod earlier lets its CNI DEL free the address the guest now uses on the target.
    const released = await sourceReleased(core, namespace, positionals[0]!, SOURCE_RELEASE_TIMEOUT_MS);
    if (!released.ok) {
      io.stderr.write(`source pod ${namespace}/${positionals[0]} kept: ${released.message}; delete it once its status says Migrated\n`);
      return 1;
    }
    // The source pod's VM is gone; its pod would hold its CPUs and devices until deleted.
    await core.deleteNamespacedPod({ namespace, name: positionals[0]! });
    io.stderr.write(`source pod ${namespace}/${positionals[0]} deleted\n`);
  }
  return 0;
}
