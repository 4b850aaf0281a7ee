/**
 * Field and label selector matching with the apiserver's grammar, for the fake API server.
 * Field selectors: `a.b=v`, `a.b==v`, `a.b!=v`, comma-joined. Label selectors additionally:
 * `k`, `!k`, `k in (a,b)`, `k notin (a,b)`.
 */
export type Obj = Record<string, unknown>;

export class SelectorError extends Error {}

/** Value at a dotted path (`spec.nodeName`), as the apiserver's field label conversion sees it. */
export function fieldValue(obj: Obj, path: string): string {
  let cur: unknown = obj;
  for (const part of path.split('.')) {
    if (typeof cur !== 'object' || cur === null) return '';
    cur = (cur as Obj)[part];
  }
  if (cur === undefined || cur === null) return '';
  return String(cur);
}

type Requirement = { key: string; op: '=' | '!=' | 'in' | 'notin' | 'exists' | '!exists'; values: string[] };

/** Splits on commas that are not inside parentheses. */
function splitTerms(s: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let cur = '';
  for (const ch of s) {
    if (ch === '(') depth++;
    if (ch === ')') depth--;
    if (ch === ',' && depth === 0) {
      out.push(cur);
      cur = '';
    } else cur += ch;
  }
  if (cur.trim() !== '') out.push(cur);
  return out.map((t) => t.trim()).filter((t) => t !== '');
}

function parseTerm(term: string, allowSets: boolean): Requirement {
  const setm = /^([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)$/.exec(term);
  if (setm) {
    if (!allowSets) throw new SelectorError(`field selector does not support set operators: "${term}"`);
    return { key: setm[1]!, op: setm[2] as 'in' | 'notin', values: setm[3]!.split(',').map((v) => v.trim()) };
  }
  const eq = /^([^\s!=]+)\s*(==|!=|=)\s*(.*)$/.exec(term);
  if (eq) return { key: eq[1]!, op: eq[2] === '!=' ? '!=' : '=', values: [eq[3]!.trim()] };
  if (allowSets && /^![^\s!=()]+$/.test(term)) return { key: term.slice(1), op: '!exists', values: [] };
  if (allowSets && /^[^\s!=()]+$/.test(term)) return { key: term, op: 'exists', values: [] };
  throw new SelectorError(`invalid selector term "${term}"`);
}

export type Matcher = (obj: Obj) => boolean;

export function parseFieldSelector(s: string | null): Matcher {
  if (!s) return () => true;
  const reqs = splitTerms(s).map((t) => parseTerm(t, false));
  return (obj) =>
    reqs.every((r) => {
      const v = fieldValue(obj, r.key);
      return r.op === '=' ? v === r.values[0] : v !== r.values[0];
    });
}

export function parseLabelSelector(s: string | null): Matcher {
  if (!s) return () => true;
  const reqs = splitTerms(s).map((t) => parseTerm(t, true));
  return (obj) => {
    const meta = (obj.metadata ?? {}) as Obj;
    const labels = (meta.labels ?? {}) as Record<string, string>;
    return reqs.every((r) => {
      const has = Object.prototype.hasOwnProperty.call(labels, r.key);
      const v = labels[r.key];
      switch (r.op) {
        case '=':
          return has && v === r.values[0];
        case '!=':
          return !has || v !== r.values[0];
        case 'in':
          return has && r.values.includes(v!);
        case 'notin':
          return !has || !r.values.includes(v!);
        case 'exists':
          return has;
        case '!exists':
          return !has;
      }
    });
  };
}
