/**
 * Shared set-up for the CNI integration tests: builds the shim and the bundle from the current
 * sources into a temp dir, runs a CNI server on a temp socket, and tracks every netns, link and
 * directory a test makes so `cleanup()` removes them even after a failure.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { invokeCni, type InvokeOptions, type InvokeOutcome } from '../../cni/invoke.js';
import { stderrLogger } from '../../cni/logger.js';
import { startCniServer, type CniServer } from '../../cni/server.js';
import { PROJECT_ROOT } from '../../lib/project-root.js';

export type Transport = 'shim+server' | 'bundle';

export class CniHarness {
  // Made in start() (a before hook), not at load time: mocha loads files whose tests it then skips.
  private tmp: string | undefined;
  get dir(): string {
    if (!this.tmp) throw new Error('CniHarness.start() has not run');
    return this.tmp;
  }
  get bin(): string {
    return path.join(this.dir, 'bin');
  }
  get socket(): string {
    return path.join(this.dir, 'cni.sock');
  }
  get dataDir(): string {
    return path.join(this.dir, 'ipam');
  }
  readonly tag = randomBytes(3).toString('hex');
  /** A /24 unlikely to collide with other helpers' tests. */
  readonly subnetBase = `10.${200 + (randomBytes(1)[0] ?? 0) % 50}.${randomBytes(1)[0] ?? 0}`;
  readonly bridge = `pvt-cni-${this.tag.slice(0, 5)}`;
  private server: CniServer | undefined;
  private netnses = new Set<string>();
  private links = new Set<string>();

  async start(): Promise<void> {
    this.tmp = mkdtempSync(path.join(tmpdir(), 'pvt-cni-'));
    execFileSync(process.execPath, [path.join(PROJECT_ROOT, 'hack/build-cni.mjs'), this.bin], { stdio: ['ignore', 'ignore', 'inherit'] });
    this.server = await startCniServer({ socketPath: this.socket, logger: stderrLogger('error'), helperDir: this.bin });
    this.links.add(this.bridge);
  }

  get subnet(): string {
    return `${this.subnetBase}.0/24`;
  }

  netns(): string {
    const name = `pvt-cni-${this.tag}-${randomBytes(3).toString('hex')}`;
    execFileSync('ip', ['netns', 'add', name]);
    this.netnses.add(name);
    return name;
  }

  dropNetns(name: string): void {
    execFileSync('ip', ['netns', 'del', name]);
    this.netnses.delete(name);
  }

  trackLink(name: string): void {
    this.links.add(name);
  }

  /** `name` of the network in configs (also namespaces the host-local store). */
  config(extra: Record<string, unknown> = {}, version = '1.1.0'): Record<string, unknown> {
    return {
      cniVersion: version,
      name: `pvt-cni-net-${this.tag}`,
      type: 'podvirt',
      bridge: this.bridge,
      ipam: { type: 'host-local', dataDir: this.dataDir, ranges: [[{ subnet: this.subnet }]] },
      ...extra,
    };
  }

  /** Runs the plugin like a runtime: via the shim and the server, or the shim falling back to the bundle. */
  invoke(transport: Transport, opts: Omit<InvokeOptions, 'plugin' | 'path'> & { path?: string[] }): Promise<InvokeOutcome> {
    const env: Record<string, string | undefined> = {
      PODVIRT_CNI_SOCKET: transport === 'shim+server' ? this.socket : path.join(this.dir, 'no-server.sock'),
      ...opts.env,
    };
    return invokeCni({ ...opts, plugin: path.join(this.bin, 'podvirt'), path: opts.path ?? [this.bin, '/usr/lib/cni'], env });
  }

  /** IPs host-local holds for this network. */
  reservations(): string[] {
    const dir = path.join(this.dataDir, `pvt-cni-net-${this.tag}`);
    if (!existsSync(dir)) return [];
    return readdirSync(dir).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f));
  }

  /** Links in a netns other than lo. */
  nsLinks(ns: string): string[] {
    const out = JSON.parse(execFileSync('ip', ['-n', ns, '-j', 'link', 'show']).toString()) as { ifname: string }[];
    return out.map((l) => l.ifname).filter((n) => n !== 'lo');
  }

  /** Ports of the test bridge (the host ends of our veths). */
  hostVeths(): string[] {
    if (!existsSync(`/sys/class/net/${this.bridge}`)) return [];
    const out = JSON.parse(execFileSync('ip', ['-j', 'link', 'show', 'master', this.bridge]).toString() || '[]') as { ifname: string }[];
    return out.map((l) => l.ifname);
  }

  async cleanup(): Promise<void> {
    for (const ns of this.netnses) {
      try {
        execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
      } catch {
        /* gone */
      }
    }
    this.netnses.clear();
    for (const l of this.links) {
      try {
        execFileSync('ip', ['link', 'del', l], { stdio: 'ignore' });
      } catch {
        /* gone */
      }
    }
    await this.server?.stop();
    if (this.tmp) rmSync(this.tmp, { recursive: true, force: true });
  }
}
