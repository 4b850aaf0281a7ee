/** Shared plumbing of `kubectl podvirt`: kubeconfig loading (kubectl's flags), output, VM status parsing. */
import { KubeConfig, type V1Pod } from '@kubernetes/client-node';
import { ANN_SPEC, ANN_STATUS, COND_VM_READY } from '../names.js';

export interface Io {
  stdout: NodeJS.WritableStream & { isTTY?: boolean; columns?: number };
  stderr: NodeJS.WritableStream & { isTTY?: boolean; columns?: number };
  stdin?: NodeJS.ReadableStream & { isTTY?: boolean; setRawMode?: (raw: boolean) => unknown };
}

export interface KubeFlags {
  kubeconfig?: string | undefined;
  context?: string | undefined;
  namespace?: string | undefined;
}

/** Loads the user's kubeconfig the way kubectl does: --kubeconfig, else $KUBECONFIG, else ~/.kube/config. */
export function loadKubeConfig(f: KubeFlags): { kc: KubeConfig; namespace: string } {
  const kc = new KubeConfig();
  if (f.kubeconfig) kc.loadFromFile(f.kubeconfig);
  else kc.loadFromDefault();
  if (f.context) kc.setCurrentContext(f.context);
  const ctx = kc.getContextObject(kc.getCurrentContext());
  return { kc, namespace: f.namespace ?? ctx?.namespace ?? 'default' };
}

export const KUBE_FLAG_OPTIONS = {
  kubeconfig: { type: 'string' },
  context: { type: 'string' },
  namespace: { type: 'string', short: 'n' },
} as const;

export interface VmStatusAnnotation {
  phase?: string;
  qemuPid?: number;
  vcpuThreads?: { index: number; tid: number; cpus: number[] }[];
  reason?: string;
  message?: string;
  [k: string]: unknown;
}

export function isVmPod(p: V1Pod): boolean {
  return p.metadata?.annotations?.[ANN_SPEC] !== undefined;
}

export function vmStatusOf(p: V1Pod): VmStatusAnnotation {
  const raw = p.metadata?.annotations?.[ANN_STATUS];
  if (!raw) return {};
  try {
    return JSON.parse(raw) as VmStatusAnnotation;
  } catch {
    return { phase: 'Unknown', message: 'unparsable status annotation' };
  }
}

export function vmReady(p: V1Pod): string {
  return p.status?.conditions?.find((c) => c.type === COND_VM_READY)?.status ?? 'Unknown';
}

/** kubectl-style age: 45s, 3m, 2h, 5d. */
export function age(from: Date | string | undefined, now = Date.now()): string {
  if (!from) return '<unknown>';
  const s = Math.max(0, Math.floor((now - new Date(from).getTime()) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  if (s < 172800) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

/** Left-aligned columns separated by three spaces, as kubectl prints tables. */
export function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('   ').trimEnd()).join('\n') + '\n';
}
