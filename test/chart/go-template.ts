/**
 * A deliberately small evaluator for the subset of Go text/template + Sprig that
 * charts/podvirt/templates uses (the subset is listed in docs/chart.md). No faithful Go
 * template renderer exists on npm, so the chart tests run the real template files through
 * this one. Anything outside the subset is an error, never a silent guess: an unknown
 * function, keyword or construct throws with the template name and line.
 *
 * Value model (mirrors what Helm hands the Go engine):
 * - values parsed from YAML are JS numbers and stand for Go float64 (Helm decodes values
 *   through JSON); number literals written in a template are bigint and stand for Go int;
 * - plain objects are map[string]interface{}: a missing key yields nil, a field of nil throws
 *   ("nil pointer evaluating"), as Helm does with missingkey=zero;
 * - GoStruct instances stand for Helm's structs (.Release, .Chart, .Capabilities): a missing
 *   field throws; a field holding a function is a method and is called with the arguments.
 */
import { stringify as yamlStringify } from 'yaml';

export class GoStruct {
  constructor(fields: Record<string, unknown>) {
    Object.assign(this, fields);
  }
}

export class TemplateError extends Error {}

type Value = unknown;

// ---------------------------------------------------------------- lexing

type Tok =
  | { k: 'field'; names: string[] } // .a.b (names empty for bare ".")
  | { k: 'var'; name: string; names: string[] } // $x.a.b, $ alone has name "$"
  | { k: 'ident'; name: string }
  | { k: 'str'; v: string }
  | { k: 'num'; v: bigint | number }
  | { k: 'bool'; v: boolean }
  | { k: 'nil' }
  | { k: 'lp' }
  | { k: 'rp' }
  | { k: 'pipe' }
  | { k: 'decl' } // :=
  | { k: 'assign' } // =
  | { k: 'comma' };

interface RawAction {
  toks: Tok[];
  line: number;
}

type Piece = { t: 'text'; s: string } | { t: 'action'; a: RawAction };

const SPACE = new Set([' ', '\t', '\r', '\n']);

function lex(src: string, name: string): Piece[] {
  const pieces: Piece[] = [];
  let i = 0;
  let trimNextText = false;
  const lineAt = (pos: number): number => src.slice(0, pos).split('\n').length;
  const fail = (pos: number, msg: string): never => {
    throw new TemplateError(`${name}:${lineAt(pos)}: ${msg}`);
  };
  while (i < src.length) {
    const open = src.indexOf('{{', i);
    let text = open < 0 ? src.slice(i) : src.slice(i, open);
    if (trimNextText) text = text.replace(/^[ \t\r\n]+/, '');
    trimNextText = false;
    if (open < 0) {
      if (text) pieces.push({ t: 'text', s: text });
      break;
    }
    let p = open + 2;
    if (src[p] === '-' && SPACE.has(src[p + 1] ?? '')) {
      text = text.replace(/[ \t\r\n]+$/, '');
      p += 2;
    }
    if (text) pieces.push({ t: 'text', s: text });
    while (SPACE.has(src[p] ?? '')) p++;
    if (src.startsWith('/*', p)) {
      const end = src.indexOf('*/', p + 2);
      if (end < 0) fail(open, 'unclosed comment');
      p = end + 2;
      let q = p;
      while (SPACE.has(src[q] ?? '')) q++;
      if (src[q] === '-' && src.startsWith('}}', q + 1) && q > p) {
        trimNextText = true;
        i = q + 3;
      } else if (src.startsWith('}}', p)) {
        i = p + 2;
      } else fail(p, 'comment must be followed directly by }} or " -}}"');
      continue;
    }
    const toks: Tok[] = [];
    for (;;) {
      while (SPACE.has(src[p] ?? '')) {
        if (src[p + 1] === '-' && src.startsWith('}}', p + 2)) {
          trimNextText = true;
          p += 4;
          break;
        }
        p++;
      }
      if (trimNextText) break;
      if (p >= src.length) fail(open, 'unclosed action');
      if (src.startsWith('}}', p)) {
        p += 2;
        break;
      }
      const c = src[p] as string;
      if (c === '"') {
        let q = p + 1;
        let out = '';
        for (;;) {
          const d = src[q];
          if (d === undefined || d === '\n') fail(p, 'unterminated string');
          if (d === '"') break;
          if (d === '\\') {
            const e = src[q + 1];
            const map: Record<string, string> = { n: '\n', t: '\t', r: '\r', '\\': '\\', '"': '"' };
            if (e === undefined || !(e in map)) fail(q, `unsupported escape \\${e ?? ''}`);
            out += map[e as string];
            q += 2;
            continue;
          }
          out += d;
          q++;
        }
        toks.push({ k: 'str', v: out });
        p = q + 1;
      } else if (c === '`') {
        const end = src.indexOf('`', p + 1);
        if (end < 0) fail(p, 'unterminated raw string');
        toks.push({ k: 'str', v: src.slice(p + 1, end) });
        p = end + 1;
      } else if (c === '(') {
        toks.push({ k: 'lp' });
        p++;
      } else if (c === ')') {
        toks.push({ k: 'rp' });
        p++;
      } else if (c === '|') {
        toks.push({ k: 'pipe' });
        p++;
      } else if (c === ',') {
        toks.push({ k: 'comma' });
        p++;
      } else if (c === ':' && src[p + 1] === '=') {
        toks.push({ k: 'decl' });
        p += 2;
      } else if (c === '=') {
        toks.push({ k: 'assign' });
        p++;
      } else if (c === '.' || c === '$') {
        const m = /^(\$[A-Za-z0-9_]*)?((?:\.[A-Za-z_][A-Za-z0-9_]*)*)(\.)?/.exec(src.slice(p));
        const whole = m?.[0] ?? '';
        if (!whole) fail(p, `unexpected ${c}`);
        const names = (m?.[2] ?? '').split('.').filter(Boolean);
        if (m?.[1]) toks.push({ k: 'var', name: m[1], names });
        else toks.push({ k: 'field', names });
        p += whole.length;
      } else if (/[0-9-]/.test(c)) {
        const m = /^-?[0-9]+(\.[0-9]+)?/.exec(src.slice(p));
        if (!m) fail(p, `unexpected ${c}`);
        const lit = (m as RegExpExecArray)[0];
        toks.push({ k: 'num', v: lit.includes('.') ? Number(lit) : BigInt(lit) });
        p += lit.length;
      } else if (/[A-Za-z_]/.test(c)) {
        const m = /^[A-Za-z_][A-Za-z0-9_]*/.exec(src.slice(p)) as RegExpExecArray;
        const w = m[0];
        if (w === 'true' || w === 'false') toks.push({ k: 'bool', v: w === 'true' });
        else if (w === 'nil') toks.push({ k: 'nil' });
        else toks.push({ k: 'ident', name: w });
        p += w.length;
      } else fail(p, `unexpected character ${JSON.stringify(c)}`);
    }
    pieces.push({ t: 'action', a: { toks, line: lineAt(open) } });
    i = p;
  }
  return pieces;
}

// ---------------------------------------------------------------- parsing

type Operand =
  | { o: 'field'; names: string[] }
  | { o: 'var'; name: string; names: string[] }
  | { o: 'lit'; v: Value }
  | { o: 'ident'; name: string }
  | { o: 'sub'; pipe: Pipeline };

interface Pipeline {
  decl: string[]; // variable names declared with :=
  assign: boolean; // true for "=" (re-assignment)
  cmds: Operand[][];
  line: number;
}

type Node =
  | { n: 'text'; s: string }
  | { n: 'out'; pipe: Pipeline }
  | { n: 'if'; branches: { pipe: Pipeline; body: Node[] }[]; else: Node[] | null }
  | { n: 'range'; pipe: Pipeline; body: Node[]; else: Node[] | null }
  | { n: 'with'; pipe: Pipeline; body: Node[]; else: Node[] | null };

const KEYWORDS = new Set(['if', 'else', 'end', 'range', 'with', 'define', 'template', 'block', 'break', 'continue']);

class Parser {
  private pos = 0;
  readonly defines = new Map<string, Node[]>();
  constructor(
    private readonly pieces: Piece[],
    private readonly name: string,
  ) {}

  private fail(line: number, msg: string): never {
    throw new TemplateError(`${this.name}:${line}: ${msg}`);
  }

  parseTop(): Node[] {
    const { nodes, stop } = this.parseList(true);
    if (stop) this.fail(stop.line, `unexpected {{${kw(stop)}}}`);
    return nodes;
  }

  /** Parses until {{end}} / {{else ...}} (returned as stop) or the end of input. */
  private parseList(top: boolean): { nodes: Node[]; stop: RawAction | null } {
    const nodes: Node[] = [];
    while (this.pos < this.pieces.length) {
      const piece = this.pieces[this.pos++] as Piece;
      if (piece.t === 'text') {
        nodes.push({ n: 'text', s: piece.s });
        continue;
      }
      const a = piece.a;
      const first = a.toks[0];
      const word = first?.k === 'ident' && KEYWORDS.has(first.name) ? first.name : null;
      if (word === 'end' || word === 'else') return { nodes, stop: a };
      if (word === 'define') {
        if (!top) this.fail(a.line, 'define is only allowed at the top level');
        const nameTok = a.toks[1];
        if (nameTok?.k !== 'str' || a.toks.length !== 2) this.fail(a.line, 'define needs exactly one string name');
        const body = this.parseList(false);
        if (!body.stop || kw(body.stop) !== 'end' || body.stop.toks.length !== 1) this.fail(a.line, 'define without {{end}}');
        this.defines.set(nameTok.v, body.nodes);
        continue;
      }
      if (word === 'if') {
        const branches: { pipe: Pipeline; body: Node[] }[] = [];
        let cond = this.pipeline(a.toks.slice(1), a.line);
        for (;;) {
          const body = this.parseList(false);
          if (!body.stop) this.fail(a.line, 'if without {{end}}');
          branches.push({ pipe: cond, body: body.nodes });
          const s = body.stop;
          if (kw(s) === 'end') {
            nodes.push({ n: 'if', branches, else: null });
            break;
          }
          if (s.toks[1]?.k === 'ident' && s.toks[1].name === 'if') {
            cond = this.pipeline(s.toks.slice(2), s.line);
            continue;
          }
          if (s.toks.length !== 1) this.fail(s.line, 'only "else" and "else if" are supported');
          const tail = this.parseList(false);
          if (!tail.stop || kw(tail.stop) !== 'end') this.fail(s.line, 'else without {{end}}');
          nodes.push({ n: 'if', branches, else: tail.nodes });
          break;
        }
        continue;
      }
      if (word === 'range' || word === 'with') {
        const pipe = this.pipeline(a.toks.slice(1), a.line);
        if (word === 'with' && pipe.decl.length > 0) this.fail(a.line, 'variable declarations in with are outside the subset');
        if (word === 'range' && pipe.decl.length > 2) this.fail(a.line, 'range declares at most two variables');
        const body = this.parseList(false);
        if (!body.stop) this.fail(a.line, `${word} without {{end}}`);
        let elseNodes: Node[] | null = null;
        if (kw(body.stop) === 'else') {
          if (body.stop.toks.length !== 1) this.fail(body.stop.line, `only plain else is supported in ${word}`);
          const tail = this.parseList(false);
          if (!tail.stop || kw(tail.stop) !== 'end') this.fail(body.stop.line, 'else without {{end}}');
          elseNodes = tail.nodes;
        }
        nodes.push({ n: word, pipe, body: body.nodes, else: elseNodes });
        continue;
      }
      if (word) this.fail(a.line, `{{${word}}} is outside the supported subset`);
      nodes.push({ n: 'out', pipe: this.pipeline(a.toks, a.line) });
    }
    return { nodes, stop: null };
  }

  private pipeline(toks: Tok[], line: number): Pipeline {
    let decl: string[] = [];
    let assign = false;
    const declAt = toks.findIndex((t) => t.k === 'decl' || t.k === 'assign');
    if (declAt >= 0) {
      const head = toks.slice(0, declAt);
      assign = toks[declAt]?.k === 'assign';
      for (let j = 0; j < head.length; j++) {
        const t = head[j] as Tok;
        if (j % 2 === 1) {
          if (t.k !== 'comma') this.fail(line, 'bad variable declaration');
          continue;
        }
        if (t.k !== 'var' || t.names.length > 0) this.fail(line, 'bad variable declaration');
        decl.push(t.name);
      }
      toks = toks.slice(declAt + 1);
    }
    if (toks.length === 0) this.fail(line, 'missing value');
    const cmds: Operand[][] = [];
    let cur: Operand[] = [];
    let j = 0;
    const operand = (): Operand => {
      const t = toks[j++] as Tok;
      switch (t.k) {
        case 'field':
          return { o: 'field', names: t.names };
        case 'var':
          return { o: 'var', name: t.name, names: t.names };
        case 'str':
        case 'num':
        case 'bool':
          return { o: 'lit', v: t.v };
        case 'nil':
          return { o: 'lit', v: null };
        case 'ident':
          if (KEYWORDS.has(t.name)) this.fail(line, `unexpected keyword ${t.name}`);
          return { o: 'ident', name: t.name };
        case 'lp': {
          let depth = 1;
          const start = j;
          while (j < toks.length && depth > 0) {
            const u = toks[j++] as Tok;
            if (u.k === 'lp') depth++;
            if (u.k === 'rp') depth--;
          }
          if (depth !== 0) this.fail(line, 'unbalanced parentheses');
          return { o: 'sub', pipe: this.pipeline(toks.slice(start, j - 1), line) };
        }
        default:
          return this.fail(line, `unexpected ${t.k}`);
      }
    };
    while (j < toks.length) {
      if (toks[j]?.k === 'pipe') {
        if (cur.length === 0) this.fail(line, 'empty command in pipeline');
        cmds.push(cur);
        cur = [];
        j++;
        continue;
      }
      cur.push(operand());
    }
    if (cur.length === 0) this.fail(line, 'empty command in pipeline');
    cmds.push(cur);
    if (decl.length === 0) decl = [];
    return { decl, assign, cmds, line };
  }
}

function kw(a: RawAction): string {
  const t = a.toks[0];
  return t?.k === 'ident' ? t.name : '';
}

// ---------------------------------------------------------------- values

function isMap(v: Value): v is Record<string, Value> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof GoStruct);
}

/** Go's truth(): zero values and empty collections are false. */
export function truthy(v: Value): boolean {
  if (v === null || v === undefined) return false;
  if (typeof v === 'boolean') return v;
  if (typeof v === 'number') return v !== 0;
  if (typeof v === 'bigint') return v !== 0n;
  if (typeof v === 'string') return v.length > 0;
  if (Array.isArray(v)) return v.length > 0;
  if (isMap(v)) return Object.keys(v).length > 0;
  return true;
}

/** fmt's %v for a float64: strconv 'g' with the shortest digits, exponent form from 1e6 up or below 1e-4 (1000000 prints as 1e+06). */
export function formatGoFloat(x: number): string {
  if (!Number.isFinite(x)) return x > 0 ? '+Inf' : x < 0 ? '-Inf' : 'NaN';
  if (x === 0) return Object.is(x, -0) ? '-0' : '0';
  const [mant, expStr] = x.toExponential().split('e') as [string, string];
  const exp = Number(expStr);
  if (exp < -4 || exp >= 6) {
    const e = Math.abs(exp);
    return `${mant}e${exp < 0 ? '-' : '+'}${e < 10 ? `0${e}` : e}`;
  }
  return String(x);
}

/** How text/template prints a value (fmt.Sprint); maps and lists are outside the subset. */
function printValue(v: Value, where: string): string {
  if (v === null || v === undefined) return '<no value>';
  if (typeof v === 'string') return v;
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (typeof v === 'bigint') return v.toString();
  if (typeof v === 'number') return formatGoFloat(v);
  throw new TemplateError(`${where}: printing a ${Array.isArray(v) ? 'list' : 'map'} directly is outside the subset (use toYaml/toJson)`);
}

/** Sprig's strval (used by quote). */
function strval(v: Value, where: string): string {
  if (typeof v === 'string') return v;
  return printValue(v, where);
}

function sortKeys(v: Value): Value {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (isMap(v)) {
    const out: Record<string, Value> = {};
    for (const k of Object.keys(v).sort()) out[k] = sortKeys(v[k]);
    return out;
  }
  if (typeof v === 'bigint') return Number(v);
  return v;
}

/** encoding/json's output: sorted map keys, HTML-safe escapes. */
export function goJson(v: Value): string {
  return JSON.stringify(sortKeys(v))
    .replace(/</g, '\\u003c')
    .replace(/>/g, '\\u003e')
    .replace(/&/g, '\\u0026')
    .replace(/\u2028/g, '\\u2028')
    .replace(/\u2029/g, '\\u2029');
}

/**
 * Helm's toYaml (sigs.k8s.io/yaml over go-yaml v2): sorted keys, block style, unindented
 * sequences, no trailing newline, and strings that YAML 1.1 would read as something else
 * ("yes", "on", "0x1f", "12:30") quoted.
 */
export function goYaml(v: Value): string {
  if (v === null || v === undefined) return 'null';
  return yamlStringify(sortKeys(v), { version: '1.1', sortMapEntries: true, indentSeq: false, lineWidth: 0 }).replace(/\n$/, '');
}

function toInt(v: Value, fn: string, where: string): number {
  if (typeof v === 'bigint') return Number(v);
  if (typeof v === 'number' && Number.isInteger(v)) return v;
  throw new TemplateError(`${where}: ${fn} needs an integer, got ${JSON.stringify(v)}`);
}

function needString(v: Value, fn: string, where: string): string {
  if (typeof v !== 'string') throw new TemplateError(`${where}: ${fn} needs a string, got ${v === null ? 'nil' : typeof v}`);
  return v;
}

function goEq(a: Value, b: Value, where: string): boolean {
  const kind = (x: Value): string => (x === null || x === undefined ? 'nil' : typeof x);
  const ka = kind(a);
  const kb = kind(b);
  if (ka === 'number' || ka === 'bigint' || kb === 'number' || kb === 'bigint') {
    throw new TemplateError(`${where}: numeric comparison is outside the subset (Go int/float64 mismatches)`);
  }
  if (ka === 'object' || kb === 'object') throw new TemplateError(`${where}: comparing maps or lists is not allowed`);
  if (ka !== kb) {
    if (ka === 'nil' || kb === 'nil') return false;
    throw new TemplateError(`${where}: incompatible types for comparison (${ka} vs ${kb})`);
  }
  return a === b;
}

// ---------------------------------------------------------------- execution

interface Scope {
  dot: Value;
  vars: Map<string, Value>[];
  tpl: string;
}

type Fn = (args: Value[], where: string) => Value;

export class TemplateSet {
  private readonly defines = new Map<string, { nodes: Node[]; file: string }>();
  private readonly files = new Map<string, Node[]>();
  private depth = 0;

  /** Parses one template file; its {{define}}s become visible to every file in the set. */
  add(name: string, src: string): void {
    const parser = new Parser(lex(src, name), name);
    const nodes = parser.parseTop();
    for (const [k, body] of parser.defines) {
      if (this.defines.has(k)) throw new TemplateError(`${name}: template ${JSON.stringify(k)} defined twice`);
      this.defines.set(k, { nodes: body, file: name });
    }
    this.files.set(name, nodes);
  }

  render(name: string, data: Value): string {
    const nodes = this.files.get(name);
    if (!nodes) throw new TemplateError(`no template file ${name}`);
    return this.exec(nodes, { dot: data, vars: [new Map([['$', data]])], tpl: name });
  }

  include(name: string, data: Value, where: string): string {
    const d = this.defines.get(name);
    if (!d) throw new TemplateError(`${where}: include of undefined template ${JSON.stringify(name)}`);
    if (++this.depth > 100) throw new TemplateError(`${where}: include recursion too deep`);
    try {
      return this.exec(d.nodes, { dot: data, vars: [new Map([['$', data]])], tpl: d.file });
    } finally {
      this.depth--;
    }
  }

  private exec(nodes: Node[], sc: Scope): string {
    let out = '';
    for (const node of nodes) {
      switch (node.n) {
        case 'text':
          out += node.s;
          break;
        case 'out': {
          const v = this.pipe(node.pipe, sc);
          if (node.pipe.decl.length === 0) out += printValue(v, `${sc.tpl}:${node.pipe.line}`);
          break;
        }
        case 'if': {
          let done = false;
          for (const b of node.branches) {
            if (truthy(this.pipe(b.pipe, sc))) {
              out += this.scoped(b.body, sc, sc.dot);
              done = true;
              break;
            }
          }
          if (!done && node.else) out += this.scoped(node.else, sc, sc.dot);
          break;
        }
        case 'with': {
          const v = this.pipe(node.pipe, sc);
          if (truthy(v)) out += this.scoped(node.body, sc, v);
          else if (node.else) out += this.scoped(node.else, sc, sc.dot);
          break;
        }
        case 'range': {
          const where = `${sc.tpl}:${node.pipe.line}`;
          const declared = node.pipe.decl;
          const v = this.evalPipe(node.pipe.cmds, sc, where);
          let entries: [Value, Value][] = [];
          if (Array.isArray(v)) entries = v.map((x, i) => [BigInt(i), x]);
          else if (isMap(v)) entries = Object.keys(v).sort().map((k) => [k, v[k]]);
          else if (v !== null && v !== undefined) throw new TemplateError(`${where}: range over ${typeof v} is outside the subset`);
          if (entries.length === 0) {
            if (node.else) out += this.scoped(node.else, sc, sc.dot);
            break;
          }
          for (const [k, x] of entries) {
            const vars = new Map<string, Value>();
            if (declared.length === 1) vars.set(declared[0] as string, x);
            if (declared.length === 2) {
              vars.set(declared[0] as string, k);
              vars.set(declared[1] as string, x);
            }
            out += this.exec(node.body, { dot: x, vars: [...sc.vars, vars], tpl: sc.tpl });
          }
          break;
        }
      }
    }
    return out;
  }

  private scoped(nodes: Node[], sc: Scope, dot: Value): string {
    return this.exec(nodes, { dot, vars: [...sc.vars, new Map()], tpl: sc.tpl });
  }

  private pipe(p: Pipeline, sc: Scope): Value {
    const where = `${sc.tpl}:${p.line}`;
    const v = this.evalPipe(p.cmds, sc, where);
    if (p.decl.length === 1) {
      const name = p.decl[0] as string;
      if (p.assign) {
        const frame = [...sc.vars].reverse().find((f) => f.has(name));
        if (!frame) throw new TemplateError(`${where}: assignment to undeclared ${name}`);
        frame.set(name, v);
      } else (sc.vars[sc.vars.length - 1] as Map<string, Value>).set(name, v);
    } else if (p.decl.length > 1) throw new TemplateError(`${where}: multiple variables only in range`);
    return v;
  }

  private evalPipe(cmds: Operand[][], sc: Scope, where: string): Value {
    let prev: Value | typeof NONE = NONE;
    for (const cmd of cmds) prev = this.command(cmd, sc, prev, where);
    return prev;
  }

  private command(cmd: Operand[], sc: Scope, piped: Value | typeof NONE, where: string): Value {
    const [head, ...rest] = cmd as [Operand, ...Operand[]];
    if (head.o === 'ident') {
      const name = head.name;
      // and/or return the deciding operand like Go, but evaluate every operand: Go before 1.18
      // (helm before 3.9) did not short-circuit, so a template relying on it breaks there.
      if (name === 'and' || name === 'or') {
        const vals = rest.map((a) => this.operand(a, sc, where));
        if (piped !== NONE) vals.push(piped);
        if (vals.length < 2) throw new TemplateError(`${where}: ${name} needs at least two arguments`);
        for (const v of vals) if (name === 'and' ? !truthy(v) : truthy(v)) return v;
        return vals[vals.length - 1];
      }
      const fn = this.fns[name];
      if (!fn) throw new TemplateError(`${where}: function ${JSON.stringify(name)} is outside the supported subset`);
      const args = rest.map((a) => this.operand(a, sc, where));
      if (piped !== NONE) args.push(piped);
      return fn(args, where);
    }
    const target = head.o === 'field' || head.o === 'var' ? this.resolve(head, sc, where, true) : this.operand(head, sc, where);
    if (typeof target === 'function') {
      const args = rest.map((a) => this.operand(a, sc, where));
      if (piped !== NONE) args.push(piped);
      return (target as (...a: Value[]) => Value)(...args);
    }
    if (rest.length > 0 || piped !== NONE) throw new TemplateError(`${where}: can't give argument to non-function`);
    return target;
  }

  private operand(op: Operand, sc: Scope, where: string): Value {
    switch (op.o) {
      case 'lit':
        return op.v;
      case 'sub':
        return this.evalPipe(op.pipe.cmds, sc, where);
      case 'ident': {
        const fn = this.fns[op.name];
        if (!fn) throw new TemplateError(`${where}: function ${JSON.stringify(op.name)} is outside the supported subset`);
        return fn([], where);
      }
      default: {
        const v = this.resolve(op, sc, where, false);
        if (typeof v === 'function') return (v as () => Value)();
        return v;
      }
    }
  }

  private resolve(op: { o: 'field' | 'var'; names: string[]; name?: string }, sc: Scope, where: string, allowMethod: boolean): Value {
    let v: Value;
    if (op.o === 'var') {
      const frame = [...sc.vars].reverse().find((f) => f.has(op.name as string));
      if (!frame) throw new TemplateError(`${where}: undefined variable ${op.name}`);
      v = frame.get(op.name as string);
    } else v = sc.dot;
    const names = op.names;
    for (let i = 0; i < names.length; i++) {
      const n = names[i] as string;
      const path = names.slice(0, i + 1).join('.');
      if (v === null || v === undefined) throw new TemplateError(`${where}: nil pointer evaluating interface {}.${n} (.${path})`);
      if (v instanceof GoStruct) {
        if (!Object.hasOwn(v, n)) throw new TemplateError(`${where}: can't evaluate field ${n} (.${path})`);
        v = (v as unknown as Record<string, Value>)[n];
        if (typeof v === 'function' && !(allowMethod && i === names.length - 1)) v = (v as () => Value)();
        continue;
      }
      if (!isMap(v)) throw new TemplateError(`${where}: can't evaluate field ${n} in type ${Array.isArray(v) ? 'list' : typeof v}`);
      v = Object.hasOwn(v, n) ? v[n] : null;
    }
    return v;
  }

  private readonly fns: Record<string, Fn> = {
    include: ([name, data], w) => this.include(needString(name, 'include', w), data, w),
    dict: (args, w) => {
      if (args.length % 2 !== 0) throw new TemplateError(`${w}: dict needs key/value pairs`);
      const out: Record<string, Value> = {};
      for (let i = 0; i < args.length; i += 2) out[needString(args[i], 'dict key', w)] = args[i + 1];
      return out;
    },
    list: (args) => [...args],
    default: (args, w) => {
      if (args.length !== 2) throw new TemplateError(`${w}: default takes a default and a value`);
      return truthy(args[1]) ? args[1] : args[0];
    },
    empty: ([v]) => !truthy(v),
    not: ([v]) => !truthy(v),
    eq: (args, w) => {
      if (args.length < 2) throw new TemplateError(`${w}: eq needs two arguments`);
      return args.slice(1).some((b) => goEq(args[0], b, w));
    },
    ne: (args, w) => {
      if (args.length !== 2) throw new TemplateError(`${w}: ne needs two arguments`);
      return !goEq(args[0], args[1], w);
    },
    quote: (args, w) =>
      args
        .filter((a) => a !== null && a !== undefined)
        .map((a) => JSON.stringify(strval(a, w)))
        .join(' '),
    toYaml: ([v]) => goYaml(v),
    toJson: ([v]) => goJson(v),
    indent: ([n, s], w) => {
      const pad = ' '.repeat(toInt(n, 'indent', w));
      return pad + needString(s, 'indent', w).replace(/\n/g, `\n${pad}`);
    },
    nindent: ([n, s], w) => {
      const pad = ' '.repeat(toInt(n, 'nindent', w));
      return `\n${pad}${needString(s, 'nindent', w).replace(/\n/g, `\n${pad}`)}`;
    },
    trunc: ([n, s], w) => {
      const c = toInt(n, 'trunc', w);
      const str = needString(s, 'trunc', w);
      if (c < 0 && str.length + c > 0) return str.slice(str.length + c);
      if (c >= 0 && str.length > c) return str.slice(0, c);
      return str;
    },
    trimSuffix: ([suf, s], w) => {
      const str = needString(s, 'trimSuffix', w);
      const x = needString(suf, 'trimSuffix', w);
      return x && str.endsWith(x) ? str.slice(0, -x.length) : str;
    },
    contains: ([sub, s], w) => needString(s, 'contains', w).includes(needString(sub, 'contains', w)),
    replace: ([a, b, s], w) => needString(s, 'replace', w).split(needString(a, 'replace', w)).join(needString(b, 'replace', w)),
    printf: ([fmt, ...rest], w) => {
      let i = 0;
      return needString(fmt, 'printf', w).replace(/%[sdv%]/g, (m) => {
        if (m === '%%') return '%';
        if (i >= rest.length) throw new TemplateError(`${w}: printf has too few arguments`);
        const a = rest[i++];
        if (m === '%d' && typeof a !== 'bigint' && !(typeof a === 'number' && Number.isInteger(a))) {
          throw new TemplateError(`${w}: printf %d needs an integer`);
        }
        if (m === '%d') return String(a);
        return printValue(a, w);
      });
    },
    required: ([msg, v], w) => {
      if (v === null || v === undefined || v === '') throw new TemplateError(`${w}: ${needString(msg, 'required', w)}`);
      return v;
    },
    fail: ([msg], w) => {
      throw new TemplateError(`${w}: ${needString(msg, 'fail', w)}`);
    },
  };
}

const NONE = Symbol('no piped value');
