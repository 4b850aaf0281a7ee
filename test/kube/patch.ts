/**
 * The three patch formats the apiserver accepts on JSON resources: JSON Patch (RFC 6902),
 * JSON Merge Patch (RFC 7386) and strategic merge patch (merge patch whose lists merge by key).
 */
import type { Obj } from './selectors.js';

export class PatchError extends Error {}

const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const clone = <T>(v: T): T => structuredClone(v);

export function mergePatch(target: unknown, patch: unknown): unknown {
  if (!isObj(patch)) return clone(patch);
  const out: Obj = isObj(target) ? clone(target) : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

/**
 * Merge keys of the list fields podvirt and kubectl patch, taken from the Kubernetes API's
 * `x-kubernetes-patch-merge-key` markers. Lists not named here are replaced, as upstream does for
 * lists without a merge strategy.
 */
const MERGE_KEYS: Record<string, string> = {
  conditions: 'type',
  containers: 'name',
  initContainers: 'name',
  ephemeralContainers: 'name',
  env: 'name',
  volumes: 'name',
  volumeMounts: 'mountPath',
  volumeDevices: 'devicePath',
  ports: 'containerPort',
  ownerReferences: 'uid',
  taints: 'key',
  tolerations: 'key',
  containerStatuses: 'name',
  addresses: 'type',
};

export function strategicMergePatch(target: unknown, patch: unknown, field = ''): unknown {
  if (Array.isArray(patch)) {
    const key = MERGE_KEYS[field];
    if (!key || !Array.isArray(target)) return clone(patch).filter((e) => !(isObj(e) && '$patch' in e));
    const out = clone(target) as unknown[];
    for (const item of patch) {
      if (!isObj(item) || !(key in item)) throw new PatchError(`strategic merge: list ${field} item lacks merge key ${key}`);
      const idx = out.findIndex((e) => isObj(e) && e[key] === item[key]);
      if (item.$patch === 'delete') {
        if (idx >= 0) out.splice(idx, 1);
        continue;
      }
      if (idx >= 0) out[idx] = strategicMergePatch(out[idx], item);
      else out.push(clone(item));
    }
    return out;
  }
  if (!isObj(patch)) return clone(patch);
  if (patch.$patch === 'replace') {
    const rest = clone(patch);
    delete rest.$patch;
    return rest;
  }
  const out: Obj = isObj(target) ? clone(target) : {};
  for (const [k, v] of Object.entries(patch)) {
    if (k.startsWith('$')) continue;
    if (v === null) delete out[k];
    else out[k] = strategicMergePatch(out[k], v, k);
  }
  return out;
}

function unescape(tok: string): string {
  return tok.replace(/~1/g, '/').replace(/~0/g, '~');
}

function parsePointer(p: string): string[] {
  if (p === '') return [];
  if (!p.startsWith('/')) throw new PatchError(`JSON pointer must start with "/": "${p}"`);
  return p.slice(1).split('/').map(unescape);
}

function parentOf(doc: unknown, toks: string[], path: string): { parent: Obj | unknown[]; key: string } {
  let cur: unknown = doc;
  for (const t of toks.slice(0, -1)) {
    if (Array.isArray(cur)) cur = cur[Number(t)];
    else if (isObj(cur)) cur = cur[t];
    else cur = undefined;
    if (cur === undefined) throw new PatchError(`path not found: ${path}`);
  }
  if (!Array.isArray(cur) && !isObj(cur)) throw new PatchError(`path not found: ${path}`);
  return { parent: cur, key: toks[toks.length - 1]! };
}

function getAt(doc: unknown, path: string): unknown {
  let cur: unknown = doc;
  for (const t of parsePointer(path)) {
    if (Array.isArray(cur)) cur = cur[Number(t)];
    else if (isObj(cur)) cur = cur[t];
    else return undefined;
  }
  return cur;
}

type Op = { op: string; path: string; value?: unknown; from?: string };

export function jsonPatch(doc: unknown, ops: unknown): unknown {
  if (!Array.isArray(ops)) throw new PatchError('JSON patch must be an array of operations');
  let out = clone(doc);
  for (const raw of ops as Op[]) {
    const toks = parsePointer(raw.path);
    const remove = () => {
      const { parent, key } = parentOf(out, toks, raw.path);
      if (Array.isArray(parent)) {
        const i = Number(key);
        if (!(i >= 0 && i < parent.length)) throw new PatchError(`path not found: ${raw.path}`);
        parent.splice(i, 1);
      } else {
        if (!(key in parent)) throw new PatchError(`path not found: ${raw.path}`);
        delete parent[key];
      }
    };
    const add = (value: unknown) => {
      if (toks.length === 0) {
        out = clone(value);
        return;
      }
      const { parent, key } = parentOf(out, toks, raw.path);
      if (Array.isArray(parent)) {
        const i = key === '-' ? parent.length : Number(key);
        if (!(i >= 0 && i <= parent.length)) throw new PatchError(`index out of range: ${raw.path}`);
        parent.splice(i, 0, clone(value));
      } else parent[key] = clone(value);
    };
    switch (raw.op) {
      case 'add':
        add(raw.value);
        break;
      case 'remove':
        remove();
        break;
      case 'replace':
        remove();
        add(raw.value);
        break;
      case 'test':
        if (JSON.stringify(getAt(out, raw.path)) !== JSON.stringify(raw.value)) throw new PatchError(`test failed at ${raw.path}`);
        break;
      case 'move':
      case 'copy': {
        const v = getAt(out, raw.from ?? '');
        if (v === undefined) throw new PatchError(`path not found: ${raw.from}`);
        if (raw.op === 'move') {
          const fromToks = parsePointer(raw.from ?? '');
          const { parent, key } = parentOf(out, fromToks, raw.from ?? '');
          if (Array.isArray(parent)) parent.splice(Number(key), 1);
          else delete parent[key];
        }
        add(v);
        break;
      }
      default:
        throw new PatchError(`unknown JSON patch op "${raw.op}"`);
    }
  }
  return out;
}
