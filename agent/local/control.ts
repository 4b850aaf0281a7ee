import * as http from 'node:http';
import { promises as fs } from 'node:fs';
import { PodvirtError, Unavailable, errorMessage, isPodvirtError, sysErrorCode, type ErrorKind } from '../../lib/errors.js';

/**
 * The local agent's control API: JSON over HTTP on a unix socket (root-only by its directory's mode).
 * Plain HTTP keeps the client a few lines of node:http and lets an operator poke it with
 * `curl --unix-socket`. Typed errors cross the socket as `{error: {kind, message}}` and are rebuilt on
 * the client side, so `podvirt` maps them to exit codes exactly as if they were raised locally.
 */
export type ControlHandler = (body: unknown, params: string[]) => Promise<unknown>;

export interface Route {
  method: 'GET' | 'POST';
  /** Path with `:name` segments, e.g. `/pods/:name/stop`. */
  path: string;
  handler: ControlHandler;
}

const STATUS: Partial<Record<ErrorKind, number>> = {
  InvalidArgument: 400,
  NotFound: 404,
  AlreadyExists: 409,
  FailedPrecondition: 412,
  Aborted: 409,
  Unavailable: 503,
  ResourceExhausted: 429,
  DeadlineExceeded: 504,
  Unimplemented: 501,
};

function match(route: Route, method: string, url: string): string[] | undefined {
  if (route.method !== method) return undefined;
  const want = route.path.split('/');
  const got = url.split('?')[0]!.split('/');
  if (want.length !== got.length) return undefined;
  const params: string[] = [];
  for (let i = 0; i < want.length; i++) {
    if (want[i]!.startsWith(':')) params.push(decodeURIComponent(got[i]!));
    else if (want[i] !== got[i]) return undefined;
  }
  return params;
}

export async function serveControl(socketPath: string, routes: Route[]): Promise<http.Server> {
  await fs.rm(socketPath, { force: true });
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      void (async () => {
        let code = 200;
        let out: unknown;
        try {
          const route = routes.map((r) => ({ r, p: match(r, req.method ?? '', req.url ?? '') })).find((x) => x.p);
          if (!route) throw new PodvirtError('NotFound', `no such control endpoint: ${req.method} ${req.url}`);
          const text = Buffer.concat(chunks).toString('utf8');
          out = await route.r.handler(text ? (JSON.parse(text) as unknown) : undefined, route.p!);
        } catch (e) {
          const kind: ErrorKind = isPodvirtError(e) ? e.kind : 'Internal';
          code = STATUS[kind] ?? 500;
          out = { error: { kind, message: errorMessage(e) } };
        }
        res.writeHead(code, { 'content-type': 'application/json' });
        res.end(JSON.stringify(out ?? null));
      })();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => {
      server.off('error', reject);
      resolve();
    });
  });
  await fs.chmod(socketPath, 0o600);
  return server;
}

/** Calls the agent; throws Unavailable when nobody listens, or the agent's own typed error. */
export function callControl<T>(socketPath: string, method: 'GET' | 'POST', path: string, body?: unknown, timeoutMs = 600_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = http.request(
      { socketPath, method, path, headers: data ? { 'content-type': 'application/json' } : {}, timeout: timeoutMs },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          let parsed: unknown;
          try {
            parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
          } catch (e) {
            return reject(new Unavailable(`agent sent a bad answer: ${errorMessage(e)}`));
          }
          const err = (parsed as { error?: { kind: ErrorKind; message: string } } | null)?.error;
          if ((res.statusCode ?? 500) >= 400 && err) return reject(new PodvirtError(err.kind, err.message));
          resolve(parsed as T);
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error(`agent did not answer ${method} ${path} within ${timeoutMs} ms`)));
    req.on('error', (e) => {
      const c = sysErrorCode(e);
      if (c === 'ENOENT' || c === 'ECONNREFUSED') reject(new Unavailable(`local agent not running (${socketPath})`, { cause: e }));
      else reject(e);
    });
    req.end(data);
  });
}
