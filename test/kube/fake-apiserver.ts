/**
 * An in-process Kubernetes API server for tests: the real REST paths and the real watch protocol
 * for the few resources podvirt touches (pods with their status subresource, core and
 * events.k8s.io events, nodes, leases, secrets, claims and volumes), so the real `@kubernetes/client-node` talks to it
 * unchanged over HTTP on 127.0.0.1.
 *
 * What it keeps faithful: one global, monotonically increasing resourceVersion stamped on every
 * object and list; watches replay history after a given resourceVersion, answer a compacted one
 * with an `ERROR` event carrying a `410 Gone` Status (as kube-apiserver does once the watch cache
 * has moved on), send `BOOKMARK`s when `allowWatchBookmarks=true`, and translate objects moving in
 * or out of a field/label selector into ADDED/DELETED; updates with a stale resourceVersion get
 * `409 Conflict`; status is only written through the status subresource.
 * Test hooks: `compact()`, `dropWatches()`, `requests`, `failNext()`.
 */
import * as http from 'node:http';
import { EventEmitter } from 'node:events';
import { randomBytes, randomUUID } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import { parseFieldSelector, parseLabelSelector, SelectorError, type Matcher, type Obj } from './selectors.js';
import { jsonPatch, mergePatch, PatchError, strategicMergePatch } from './patch.js';
import { handleExecUpgrade, type ExecHandler } from './fake-exec.js';

export interface ResourceDef {
  group: string;
  version: string;
  plural: string;
  kind: string;
  namespaced: boolean;
  hasStatus: boolean;
}

export const RESOURCES: ResourceDef[] = [
  { group: '', version: 'v1', plural: 'pods', kind: 'Pod', namespaced: true, hasStatus: true },
  { group: '', version: 'v1', plural: 'events', kind: 'Event', namespaced: true, hasStatus: false },
  { group: '', version: 'v1', plural: 'nodes', kind: 'Node', namespaced: false, hasStatus: true },
  { group: '', version: 'v1', plural: 'namespaces', kind: 'Namespace', namespaced: false, hasStatus: true },
  { group: 'events.k8s.io', version: 'v1', plural: 'events', kind: 'Event', namespaced: true, hasStatus: false },
  { group: 'coordination.k8s.io', version: 'v1', plural: 'leases', kind: 'Lease', namespaced: true, hasStatus: false },
  // Migration tokens (Secrets in the agents' namespace); claims and volumes tell node-local disks.
  { group: '', version: 'v1', plural: 'secrets', kind: 'Secret', namespaced: true, hasStatus: false },
  { group: '', version: 'v1', plural: 'persistentvolumeclaims', kind: 'PersistentVolumeClaim', namespaced: true, hasStatus: true },
  { group: '', version: 'v1', plural: 'persistentvolumes', kind: 'PersistentVolume', namespaced: false, hasStatus: true },
];

const apiVersionOf = (r: ResourceDef) => (r.group ? `${r.group}/${r.version}` : r.version);
const resKey = (r: ResourceDef) => `${r.group}/${r.plural}`;

type WatchType = 'ADDED' | 'MODIFIED' | 'DELETED';
interface HistoryEntry {
  rv: number;
  type: WatchType;
  res: string;
  obj: Obj;
  old: Obj | undefined;
}

interface Watcher {
  res: ResourceDef;
  namespace: string | undefined;
  field: Matcher;
  label: Matcher;
  out: http.ServerResponse;
  bookmarkTimer: NodeJS.Timeout | undefined;
  timeoutTimer: NodeJS.Timeout | undefined;
}

export interface RequestRecord {
  method: string;
  path: string;
  query: Record<string, string>;
  contentType: string | undefined;
}

export interface FakeApiServerOptions {
  /** How often open watches with `allowWatchBookmarks=true` get a BOOKMARK. */
  bookmarkIntervalMs?: number;
  /** Pods get a deletionTimestamp on DELETE and stay until deleted with gracePeriodSeconds=0. */
  gracefulPodDeletion?: boolean;
}

export type { ExecHandler, ExecRequest } from './fake-exec.js';

interface Fault {
  method: string;
  pathIncludes: string;
  code: number;
  remaining: number;
}

class HttpError extends Error {
  constructor(
    readonly code: number,
    readonly reason: string,
    message: string,
  ) {
    super(message);
  }
}

const meta = (o: Obj): Obj => {
  if (typeof o.metadata !== 'object' || o.metadata === null) o.metadata = {};
  return o.metadata as Obj;
};
const objKey = (ns: string | undefined, name: string) => `${ns ?? ''}/${name}`;

export class FakeApiServer extends EventEmitter {
  readonly token = randomBytes(12).toString('hex');
  readonly requests: RequestRecord[] = [];
  private readonly server: http.Server;
  private readonly store = new Map<string, Map<string, Obj>>();
  private readonly history: HistoryEntry[] = [];
  private readonly watchers = new Set<Watcher>();
  private readonly faults: Fault[] = [];
  private rv = 100;
  private compactedRv = 0;
  private port = 0;
  private readonly opts: Required<FakeApiServerOptions>;
  /** Runs pods/exec commands (the test plays the container runtime); exec is refused without one. */
  execHandler: ExecHandler | undefined;

  constructor(opts: FakeApiServerOptions = {}) {
    super();
    this.opts = { bookmarkIntervalMs: 1000, gracefulPodDeletion: false, ...opts };
    for (const r of RESOURCES) this.store.set(resKey(r), new Map());
    this.server = http.createServer((req, res) => {
      this.handle(req, res).catch((e: unknown) => this.sendStatus(res, 500, 'InternalError', String(e)));
    });
    this.server.on('upgrade', (req: http.IncomingMessage, socket: import('node:stream').Duplex) => {
      this.requests.push({ method: 'GET', path: new URL(req.url ?? '/', 'http://x').pathname, query: {}, contentType: undefined });
      if (!handleExecUpgrade(req, socket, this.token, this.execHandler)) socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n');
    });
  }

  async start(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as { port: number }).port;
    return this.url;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async stop(): Promise<void> {
    this.dropWatches();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  /** A kubeconfig for this server (plain HTTP needs `insecure-skip-tls-verify` in client-node). */
  kubeconfigYaml(namespace = 'default'): string {
    return [
      'apiVersion: v1',
      'kind: Config',
      'clusters:',
      `- name: fake`,
      `  cluster: {server: "${this.url}", insecure-skip-tls-verify: true}`,
      'users:',
      `- name: tester`,
      `  user: {token: "${this.token}"}`,
      'contexts:',
      `- name: fake`,
      `  context: {cluster: fake, user: tester, namespace: ${namespace}}`,
      'current-context: fake',
      '',
    ].join('\n');
  }

  kubeConfig(): KubeConfig {
    const kc = new KubeConfig();
    kc.loadFromString(this.kubeconfigYaml());
    return kc;
  }

  async writeKubeconfig(dir?: string): Promise<string> {
    const d = dir ?? (await fs.mkdtemp(path.join(os.tmpdir(), 'pvt-kube-')));
    const file = path.join(d, 'kubeconfig');
    await fs.writeFile(file, this.kubeconfigYaml(), { mode: 0o600 });
    return file;
  }

  // ---- test hooks -------------------------------------------------------------------------

  get resourceVersion(): number {
    return this.rv;
  }

  /** Forget history: any watch from a resourceVersion before now gets 410 Gone. */
  compact(): void {
    this.compactedRv = this.rv + 1;
    this.history.length = 0;
  }

  /** Ends every open watch, cleanly (chunked stream closed) or by destroying the socket. */
  dropWatches(opts: { abrupt?: boolean } = {}): number {
    const n = this.watchers.size;
    for (const w of [...this.watchers]) this.closeWatcher(w, opts.abrupt ?? false);
    return n;
  }

  watchCount(plural?: string): number {
    return [...this.watchers].filter((w) => plural === undefined || w.res.plural === plural).length;
  }

  /** Resolves once at least `n` watches on `plural` are open. */
  async waitForWatches(plural: string, n = 1, timeoutMs = 10_000): Promise<void> {
    if (this.watchCount(plural) >= n) return;
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => {
        this.off('watch', on);
        reject(new Error(`timed out waiting for ${n} watch(es) on ${plural} (have ${this.watchCount(plural)})`));
      }, timeoutMs);
      const on = () => {
        if (this.watchCount(plural) >= n) {
          clearTimeout(t);
          this.off('watch', on);
          resolve();
        }
      };
      this.on('watch', on);
    });
  }

  /** The next `times` requests matching method and path fragment fail with `code`. */
  failNext(method: string, pathIncludes: string, code: number, times = 1): void {
    this.faults.push({ method, pathIncludes, code, remaining: times });
  }

  /** Sends a BOOKMARK on every open watch that asked for them. */
  bookmarkAll(): void {
    for (const w of this.watchers) if (w.bookmarkTimer) this.sendBookmark(w);
  }

  // ---- direct store access for tests (goes through the same bookkeeping as the REST API) ----

  getObject(plural: string, namespace: string | undefined, name: string, group = ''): Obj | undefined {
    const r = this.resource(group, plural);
    const o = this.store.get(resKey(r))!.get(objKey(r.namespaced ? namespace : undefined, name));
    return o ? structuredClone(o) : undefined;
  }

  listObjects(plural: string, group = ''): Obj[] {
    return [...this.store.get(resKey(this.resource(group, plural)))!.values()].map((o) => structuredClone(o));
  }

  createObject(plural: string, obj: Obj, group = ''): Obj {
    const r = this.resource(group, plural);
    return this.create(r, (meta(obj).namespace as string | undefined) ?? (r.namespaced ? 'default' : undefined), structuredClone(obj));
  }

  /** Replaces an object (main resource; status kept), like a PUT without a resourceVersion precondition. */
  replaceObject(plural: string, obj: Obj, group = ''): Obj {
    const r = this.resource(group, plural);
    const m = meta(obj);
    const next = structuredClone(obj);
    delete meta(next).resourceVersion;
    return this.update(r, r.namespaced ? (m.namespace as string) : undefined, m.name as string, next, undefined);
  }

  deleteObject(plural: string, namespace: string | undefined, name: string, group = ''): void {
    const r = this.resource(group, plural);
    this.remove(r, r.namespaced ? namespace : undefined, name, 0);
  }

  /** Replaces the status of an object as a kubelet would (through the status path bookkeeping). */
  setStatus(plural: string, namespace: string | undefined, name: string, status: Obj): Obj {
    const r = this.resource(group0, plural);
    const cur = this.mustGet(r, namespace, name);
    return this.update(r, namespace, name, { ...cur, status }, 'status');
  }

  // ---- internals ------------------------------------------------------------------------------

  private resource(group: string, plural: string): ResourceDef {
    const r = RESOURCES.find((x) => x.group === group && x.plural === plural);
    if (!r) throw new HttpError(404, 'NotFound', `the server could not find the requested resource (${group}/${plural})`);
    return r;
  }

  private nextRv(): string {
    this.rv++;
    return String(this.rv);
  }

  private record(type: WatchType, r: ResourceDef, obj: Obj, old: Obj | undefined): void {
    const entry: HistoryEntry = { rv: Number(meta(obj).resourceVersion), type, res: resKey(r), obj: structuredClone(obj), old };
    this.history.push(entry);
    for (const w of this.watchers) if (resKey(w.res) === entry.res) this.deliver(w, entry);
  }

  private mustGet(r: ResourceDef, ns: string | undefined, name: string): Obj {
    const o = this.store.get(resKey(r))!.get(objKey(r.namespaced ? ns : undefined, name));
    if (!o) throw new HttpError(404, 'NotFound', `${r.plural}${r.group ? '.' + r.group : ''} "${name}" not found`);
    return o;
  }

  private create(r: ResourceDef, ns: string | undefined, body: Obj): Obj {
    const m = meta(body);
    if (typeof m.name !== 'string' || m.name === '') {
      if (typeof m.generateName === 'string' && m.generateName !== '') m.name = m.generateName + randomBytes(3).toString('hex').slice(0, 5);
      else throw new HttpError(422, 'Invalid', `${r.kind} is invalid: metadata.name: Required value: name or generateName is required`);
    }
    if (!/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(m.name as string) || (m.name as string).length > 253) {
      throw new HttpError(422, 'Invalid', `${r.kind} "${m.name as string}" is invalid: metadata.name: Invalid value`);
    }
    if (r.namespaced) {
      if (m.namespace !== undefined && m.namespace !== ns)
        throw new HttpError(400, 'BadRequest', 'the namespace of the provided object does not match the namespace sent on the request');
      m.namespace = ns;
    } else delete m.namespace;
    const key = objKey(r.namespaced ? ns : undefined, m.name as string);
    const bucket = this.store.get(resKey(r))!;
    if (bucket.has(key)) throw new HttpError(409, 'AlreadyExists', `${r.plural} "${m.name as string}" already exists`);
    m.uid = randomUUID();
    m.creationTimestamp = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
    m.resourceVersion = this.nextRv();
    delete m.deletionTimestamp;
    body.apiVersion = apiVersionOf(r);
    body.kind = r.kind;
    if (r.kind === 'Pod' && body.status === undefined) body.status = { phase: 'Pending' };
    bucket.set(key, body);
    this.record('ADDED', r, body, undefined);
    return structuredClone(body);
  }

  /** Writes `next` over the stored object: only status for the status subresource, else all but status. */
  private update(r: ResourceDef, ns: string | undefined, name: string, next: Obj, sub: string | undefined): Obj {
    const cur = this.mustGet(r, ns, name);
    const wantRv = meta(next).resourceVersion;
    if (wantRv !== undefined && wantRv !== '' && wantRv !== meta(cur).resourceVersion) {
      throw new HttpError(
        409,
        'Conflict',
        `Operation cannot be fulfilled on ${r.plural} "${name}": the object has been modified; please apply your changes to the latest version and try again`,
      );
    }
    let out: Obj;
    if (sub === 'status') out = { ...structuredClone(cur), status: structuredClone(next.status) };
    else {
      out = structuredClone(next);
      if (r.hasStatus) out.status = structuredClone(cur.status);
      const m = meta(out);
      const cm = meta(cur);
      for (const k of ['uid', 'creationTimestamp', 'deletionTimestamp', 'deletionGracePeriodSeconds', 'namespace', 'name'])
        if (cm[k] !== undefined) m[k] = cm[k];
        else delete m[k];
    }
    if (JSON.stringify(stripRv(out)) === JSON.stringify(stripRv(cur))) return structuredClone(cur);
    out.apiVersion = apiVersionOf(r);
    out.kind = r.kind;
    meta(out).resourceVersion = this.nextRv();
    const key = objKey(r.namespaced ? ns : undefined, name);
    const m = meta(out);
    const hadFinalizers = Array.isArray(meta(cur).finalizers) && (meta(cur).finalizers as unknown[]).length > 0;
    // The last finalizer removed from a deleting object completes the deletion (a pod in its
    // grace period stays until deleted again with gracePeriodSeconds=0, as the kubelet does).
    if (m.deletionTimestamp && hadFinalizers && (!Array.isArray(m.finalizers) || m.finalizers.length === 0)) {
      this.store.get(resKey(r))!.delete(key);
      this.record('DELETED', r, out, cur);
      return structuredClone(out);
    }
    this.store.get(resKey(r))!.set(key, out);
    this.record('MODIFIED', r, out, cur);
    return structuredClone(out);
  }

  private remove(r: ResourceDef, ns: string | undefined, name: string, gracePeriod: number | undefined): Obj {
    const cur = this.mustGet(r, ns, name);
    const m = meta(cur);
    const hasFinalizers = Array.isArray(m.finalizers) && m.finalizers.length > 0;
    const graceful = r.kind === 'Pod' && this.opts.gracefulPodDeletion && gracePeriod !== 0;
    if (hasFinalizers || graceful) {
      if (m.deletionTimestamp) return structuredClone(cur);
      const next = structuredClone(cur);
      const nm = meta(next);
      nm.deletionTimestamp = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
      nm.deletionGracePeriodSeconds = gracePeriod ?? 30;
      nm.resourceVersion = this.nextRv();
      this.store.get(resKey(r))!.set(objKey(r.namespaced ? ns : undefined, name), next);
      this.record('MODIFIED', r, next, cur);
      return structuredClone(next);
    }
    const gone = structuredClone(cur);
    meta(gone).resourceVersion = this.nextRv();
    this.store.get(resKey(r))!.delete(objKey(r.namespaced ? ns : undefined, name));
    this.record('DELETED', r, gone, cur);
    return gone;
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://x');
    const query = Object.fromEntries(url.searchParams.entries());
    const method = req.method ?? 'GET';
    this.requests.push({ method, path: url.pathname, query, contentType: req.headers['content-type'] });
    try {
      if (req.headers.authorization !== `Bearer ${this.token}`) throw new HttpError(401, 'Unauthorized', 'Unauthorized');
      const fault = this.faults.find((f) => f.remaining > 0 && f.method === method && url.pathname.includes(f.pathIncludes));
      if (fault) {
        fault.remaining--;
        throw new HttpError(fault.code, fault.code === 409 ? 'Conflict' : 'InternalError', `injected failure ${fault.code}`);
      }
      const route = this.route(url.pathname);
      const body = method === 'POST' || method === 'PUT' || method === 'PATCH' ? await readBody(req) : undefined;
      const { r, ns, name, sub } = route;
      if (sub !== undefined && !(sub === 'status' && r.hasStatus))
        throw new HttpError(404, 'NotFound', `the server could not find the requested resource (subresource ${sub})`);
      if (method === 'GET' && name === undefined) {
        if (query.watch === 'true' || query.watch === '1') return this.startWatch(r, ns, query, res);
        return this.sendJson(res, 200, this.list(r, ns, query));
      }
      if (method === 'GET') return this.sendJson(res, 200, structuredClone(this.mustGet(r, ns, name!)));
      if (method === 'POST' && name === undefined) return this.sendJson(res, 201, this.create(r, ns, parseJson(body!)));
      if (method === 'PUT' && name !== undefined) {
        const next = parseJson(body!);
        if (meta(next).name !== undefined && meta(next).name !== name)
          throw new HttpError(400, 'BadRequest', 'the name of the object does not match the name on the URL');
        return this.sendJson(res, 200, this.update(r, ns, name, next, sub));
      }
      if (method === 'PATCH' && name !== undefined) {
        const cur = this.mustGet(r, ns, name);
        const ct = (req.headers['content-type'] ?? '').split(';')[0]!.trim();
        const patch = parseJson(body!, true);
        let next: unknown;
        try {
          if (ct === 'application/json-patch+json') next = jsonPatch(cur, patch);
          else if (ct === 'application/merge-patch+json') next = mergePatch(cur, patch);
          else if (ct === 'application/strategic-merge-patch+json') next = strategicMergePatch(cur, patch);
          else throw new HttpError(415, 'UnsupportedMediaType', `the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json`);
        } catch (e) {
          if (e instanceof PatchError) throw new HttpError(422, 'Invalid', e.message);
          throw e;
        }
        return this.sendJson(res, 200, this.update(r, ns, name, next as Obj, sub));
      }
      if (method === 'DELETE' && name !== undefined) {
        let grace: number | undefined = query.gracePeriodSeconds !== undefined ? Number(query.gracePeriodSeconds) : undefined;
        if (grace === undefined && req.headers['content-length'] && req.headers['content-length'] !== '0') {
          const b = parseJson(await readBody(req), true);
          if (typeof b.gracePeriodSeconds === 'number') grace = b.gracePeriodSeconds;
        }
        return this.sendJson(res, 200, this.remove(r, ns, name, grace));
      }
      throw new HttpError(405, 'MethodNotAllowed', `method ${method} not allowed on ${url.pathname}`);
    } catch (e) {
      if (e instanceof HttpError) return this.sendStatus(res, e.code, e.reason, e.message);
      if (e instanceof SelectorError) return this.sendStatus(res, 400, 'BadRequest', e.message);
      throw e;
    }
  }

  private route(p: string): { r: ResourceDef; ns: string | undefined; name: string | undefined; sub: string | undefined } {
    const parts = p.split('/').filter(Boolean);
    let group: string;
    let rest: string[];
    if (parts[0] === 'api' && parts[1] === 'v1') {
      group = '';
      rest = parts.slice(2);
    } else if (parts[0] === 'apis' && parts.length >= 3) {
      group = parts[1]!;
      rest = parts.slice(3);
    } else throw new HttpError(404, 'NotFound', `the server could not find the requested resource`);
    let ns: string | undefined;
    if (rest[0] === 'namespaces' && rest.length >= 3) {
      ns = rest[1];
      rest = rest.slice(2);
    }
    const [plural, name, sub] = rest;
    if (!plural || rest.length > 3) throw new HttpError(404, 'NotFound', `the server could not find the requested resource`);
    const r = this.resource(group, plural);
    if (!r.namespaced && ns !== undefined) throw new HttpError(404, 'NotFound', `${plural} is not namespaced`);
    if (r.namespaced && ns === undefined && name !== undefined) throw new HttpError(404, 'NotFound', `the server could not find the requested resource`);
    return { r, ns, name, sub };
  }

  private list(r: ResourceDef, ns: string | undefined, query: Record<string, string>): Obj {
    const field = parseFieldSelector(query.fieldSelector ?? null);
    const label = parseLabelSelector(query.labelSelector ?? null);
    const items = [...this.store.get(resKey(r))!.values()]
      .filter((o) => ns === undefined || meta(o).namespace === ns)
      .filter((o) => field(o) && label(o))
      .map((o) => structuredClone(o));
    return { apiVersion: apiVersionOf(r), kind: `${r.kind}List`, metadata: { resourceVersion: String(this.rv) }, items };
  }

  private startWatch(r: ResourceDef, ns: string | undefined, query: Record<string, string>, res: http.ServerResponse): void {
    const w: Watcher = {
      res: r,
      namespace: ns,
      field: parseFieldSelector(query.fieldSelector ?? null),
      label: parseLabelSelector(query.labelSelector ?? null),
      out: res,
      bookmarkTimer: undefined,
      timeoutTimer: undefined,
    };
    res.writeHead(200, { 'Content-Type': 'application/json', 'Transfer-Encoding': 'chunked' });
    res.flushHeaders();
    const rvParam = query.resourceVersion ?? '';
    if (rvParam !== '' && rvParam !== '0') {
      const from = Number(rvParam);
      if (!Number.isInteger(from)) {
        this.writeEvent(w, 'ERROR', statusObj(400, 'BadRequest', `invalid resourceVersion "${rvParam}"`));
        res.end();
        return;
      }
      if (from < this.compactedRv - 1) {
        // kube-apiserver answers an expired resourceVersion on an open stream, not with an HTTP 410.
        this.writeEvent(w, 'ERROR', statusObj(410, 'Expired', `too old resource version: ${from} (${this.compactedRv - 1})`));
        res.end();
        return;
      }
      this.watchers.add(w);
      for (const e of this.history) if (e.rv > from && e.res === resKey(r)) this.deliver(w, e);
    } else {
      this.watchers.add(w);
      for (const o of this.store.get(resKey(r))!.values()) if (this.matches(w, o)) this.writeEvent(w, 'ADDED', o);
    }
    if (query.allowWatchBookmarks === 'true') w.bookmarkTimer = setInterval(() => this.sendBookmark(w), this.opts.bookmarkIntervalMs);
    if (query.timeoutSeconds !== undefined) w.timeoutTimer = setTimeout(() => this.closeWatcher(w, false), Number(query.timeoutSeconds) * 1000);
    res.on('close', () => this.closeWatcher(w, false));
    this.emit('watch', r.plural);
  }

  private matches(w: Watcher, o: Obj): boolean {
    if (w.namespace !== undefined && meta(o).namespace !== w.namespace) return false;
    return w.field(o) && w.label(o);
  }

  private deliver(w: Watcher, e: HistoryEntry): void {
    const now = this.matches(w, e.obj);
    const before = e.old !== undefined && this.matches(w, e.old);
    if (e.type === 'ADDED' && now) this.writeEvent(w, 'ADDED', e.obj);
    else if (e.type === 'DELETED' && (now || before)) this.writeEvent(w, 'DELETED', e.obj);
    else if (e.type === 'MODIFIED') {
      if (now && before) this.writeEvent(w, 'MODIFIED', e.obj);
      else if (now) this.writeEvent(w, 'ADDED', e.obj);
      else if (before) this.writeEvent(w, 'DELETED', e.obj);
    }
  }

  private sendBookmark(w: Watcher): void {
    this.writeEvent(w, 'BOOKMARK', { kind: w.res.kind, apiVersion: apiVersionOf(w.res), metadata: { resourceVersion: String(this.rv) } });
  }

  private writeEvent(w: Watcher, type: string, object: Obj): void {
    if (w.out.writableEnded || w.out.destroyed) return;
    w.out.write(JSON.stringify({ type, object }) + '\n');
  }

  private closeWatcher(w: Watcher, abrupt: boolean): void {
    if (!this.watchers.delete(w)) return;
    if (w.bookmarkTimer) clearInterval(w.bookmarkTimer);
    if (w.timeoutTimer) clearTimeout(w.timeoutTimer);
    if (abrupt) w.out.socket?.destroy();
    else if (!w.out.writableEnded) w.out.end();
  }

  private sendJson(res: http.ServerResponse, code: number, body: unknown): void {
    const data = JSON.stringify(body);
    res.writeHead(code, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) });
    res.end(data);
  }

  private sendStatus(res: http.ServerResponse, code: number, reason: string, message: string): void {
    if (res.headersSent) {
      res.end();
      return;
    }
    this.sendJson(res, code, statusObj(code, reason, message));
  }
}

const group0 = '';

function statusObj(code: number, reason: string, message: string): Obj {
  return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code };
}

function stripRv(o: Obj): Obj {
  const c = structuredClone(o);
  delete meta(c).resourceVersion;
  return c;
}

function parseJson(s: string, allowArray = false): Obj {
  let v: unknown;
  try {
    v = JSON.parse(s);
  } catch (e) {
    throw new HttpError(400, 'BadRequest', `invalid JSON body: ${String(e)}`);
  }
  if (typeof v !== 'object' || v === null || (Array.isArray(v) && !allowArray)) throw new HttpError(400, 'BadRequest', 'body must be a JSON object');
  return v as Obj;
}

async function readBody(req: http.IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}
