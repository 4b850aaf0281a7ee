/**
 * The agent's HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (liveness: the event loop
 * answers and no check declared the process wedged) and `/readyz` (readiness: the pod informer has
 * synced and every in-process server is up). Each check's verdict is listed in the body.
 */
import * as http from 'node:http';
import type { Registry } from 'prom-client';

export type Check = () => { ok: boolean; detail?: string };

export interface HealthServerOptions {
  /** `host:port`, `:port` (all interfaces) or `port`. */
  addr: string;
  registry: Registry;
  liveness: Record<string, Check>;
  readiness: Record<string, Check>;
}

export function parseListenAddr(addr: string): { host: string | undefined; port: number } {
  const m = /^(?:\[?([^\]]*)\]?:)?(\d+)$/.exec(addr.trim());
  if (!m) throw new Error(`listen address "${addr}" is not [host]:port`);
  return { host: m[1] ? m[1] : undefined, port: Number(m[2]) };
}

function run(checks: Record<string, Check>): { ok: boolean; body: string } {
  let ok = true;
  const lines: string[] = [];
  for (const [name, c] of Object.entries(checks)) {
    let r: { ok: boolean; detail?: string };
    try {
      r = c();
    } catch (e) {
      r = { ok: false, detail: String(e) };
    }
    ok &&= r.ok;
    lines.push(`[${r.ok ? '+' : '-'}]${name} ${r.ok ? 'ok' : 'failed'}${r.detail ? `: ${r.detail}` : ''}`);
  }
  return { ok, body: lines.join('\n') + `\n${ok ? 'ok' : 'not ok'}\n` };
}

export class HealthServer {
  private server: http.Server | undefined;

  constructor(private readonly o: HealthServerOptions) {}

  async start(): Promise<{ host: string; port: number }> {
    const { host, port } = parseListenAddr(this.o.addr);
    this.server = http.createServer((req, res) => {
      const url = (req.url ?? '/').split('?')[0];
      if (url === '/metrics') {
        this.o.registry
          .metrics()
          .then((text) => {
            res.writeHead(200, { 'Content-Type': this.o.registry.contentType });
            res.end(text);
          })
          .catch((e: unknown) => {
            res.writeHead(500, { 'Content-Type': 'text/plain' });
            res.end(String(e));
          });
        return;
      }
      const checks = url === '/healthz' || url === '/livez' ? this.o.liveness : url === '/readyz' ? this.o.readiness : undefined;
      if (!checks) {
        res.writeHead(404, { 'Content-Type': 'text/plain' });
        res.end('not found\n');
        return;
      }
      const r = run(checks);
      res.writeHead(r.ok ? 200 : 503, { 'Content-Type': 'text/plain' });
      res.end(r.body);
    });
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(port, host, () => resolve());
    });
    const a = this.server.address() as { address: string; port: number };
    return { host: a.address, port: a.port };
  }

  async stop(): Promise<void> {
    if (!this.server) return;
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server!.close(() => r()));
  }
}
