import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { strict as assert } from 'node:assert';
import { CsiClient } from '../../csi/client.js';
import { startCsiDriver, type CsiDriver } from '../../csi/server.js';
import type { VolumeCapability } from '../../proto/gen/csi/v1/csi/v1/VolumeCapability.js';

/** Everything a CSI test run creates lives under one /tmp/pvt-csi-* dir (unique per run). */
export class CsiHarness {
  private rootDir: string | undefined;
  driver: CsiDriver | undefined;
  client: CsiClient | undefined;

  constructor(readonly nodeId = 'pvt-node-a') {}

  /** Created on first use, so suites that mocha's --grep skips leave nothing behind. */
  get root(): string {
    this.rootDir ??= mkdtempSync('/tmp/pvt-csi-');
    return this.rootDir;
  }

  get stateDir(): string {
    return path.join(this.root, 'state');
  }

  get socketPath(): string {
    return path.join(this.root, 'csi.sock');
  }

  async start(): Promise<CsiClient> {
    this.driver = await startCsiDriver({ socketPath: this.socketPath, nodeId: this.nodeId, stateDir: this.stateDir });
    this.client = new CsiClient(this.socketPath);
    return this.client;
  }

  async stop(): Promise<void> {
    this.client?.close();
    this.client = undefined;
    await this.driver?.stop();
    this.driver = undefined;
  }

  get c(): CsiClient {
    if (!this.client) throw new Error('driver not started');
    return this.client;
  }

  /** A fresh CO-style directory (the CO creates staging dirs and the parent of targets). */
  dir(name: string): string {
    const d = path.join(this.root, 'co', `${name}-${Math.random().toString(16).slice(2, 8)}`);
    mkdirSync(d, { recursive: true });
    return d;
  }

  /**
   * Releases everything through CSI (unpublish, unstage, delete), then force-removes anything
   * still left under the run dir, and reports what had leaked.
   */
  async cleanup(): Promise<string[]> {
    if (this.rootDir === undefined) return [];
    if (this.client) {
      const state = JSON.parse(readFileSync(path.join(this.stateDir, 'state.json'), 'utf8')) as {
        publishes: Record<string, { volumeId: string; targetPath: string }>;
        stages: Record<string, { volumeId: string; stagingPath: string }>;
        volumes: Record<string, unknown>;
        snapshots: Record<string, unknown>;
      };
      for (const p of Object.values(state.publishes)) await this.c.node.NodeUnpublishVolume({ volume_id: p.volumeId, target_path: p.targetPath }).catch(() => undefined);
      for (const s of Object.values(state.stages)) await this.c.node.NodeUnstageVolume({ volume_id: s.volumeId, staging_target_path: s.stagingPath }).catch(() => undefined);
      for (const id of Object.keys(state.snapshots)) await this.c.controller.DeleteSnapshot({ snapshot_id: id }).catch(() => undefined);
      for (const id of Object.keys(state.volumes)) await this.c.controller.DeleteVolume({ volume_id: id }).catch(() => undefined);
    }
    await this.stop();
    const leaks = hostLeaks(this.root);
    forceClean(this.root);
    rmSync(this.root, { recursive: true, force: true });
    return leaks;
  }
}

/** Loop devices, mounts and daemons that mention `prefix`. */
export function hostLeaks(prefix: string): string[] {
  const out: string[] = [];
  for (const l of execFileSync('losetup', ['-a'], { encoding: 'utf8' }).split('\n')) if (l.includes(prefix)) out.push(`loop: ${l}`);
  for (const m of execFileSync('findmnt', ['-rn', '-o', 'TARGET'], { encoding: 'utf8' }).split('\n')) if (m.startsWith(prefix)) out.push(`mount: ${m}`);
  for (const p of qsdPids(prefix)) out.push(`qemu-storage-daemon pid ${p}`);
  return out;
}

export function qsdPids(prefix: string): number[] {
  // pgrep exits 1 when nothing matches
  const r = safe(() => execFileSync('pgrep', ['-f', `qemu-storage-daemon.*${prefix}`], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).toString(), '');
  return r
    .split('\n')
    .filter(Boolean)
    .map(Number);
}

function forceClean(prefix: string): void {
  const umountAll = () => {
    const ms = execFileSync('findmnt', ['-rn', '-o', 'TARGET'], { encoding: 'utf8' })
      .split('\n')
      .filter((m) => m.startsWith(prefix))
      .sort()
      .reverse();
    for (const m of ms) execFileSync('umount', ['-l', m], { stdio: 'ignore' });
  };
  try {
    umountAll();
    for (const l of execFileSync('losetup', ['-a'], { encoding: 'utf8' }).split('\n')) {
      if (l.includes(prefix)) execFileSync('losetup', ['-d', l.split(':')[0]!], { stdio: 'ignore' });
    }
    for (const p of safe(() => qsdPids(prefix), [])) process.kill(p, 'SIGKILL');
    umountAll();
  } catch {
    /* best effort: the leak report already failed the suite */
  }
}

function safe<T>(f: () => T, d: T): T {
  try {
    return f();
  } catch {
    return d;
  }
}

export const GiB = 1024 ** 3;
export const MiB = 1024 ** 2;

export type Access = 'block' | 'mount';

export function cap(access: Access, mode: 'SINGLE_NODE_WRITER' | 'SINGLE_NODE_MULTI_WRITER' | 'MULTI_NODE_MULTI_WRITER' | 'SINGLE_NODE_READER_ONLY' = 'SINGLE_NODE_WRITER', fsType = ''): VolumeCapability {
  return access === 'block' ? { block: {}, access_mode: { mode } } : { mount: { fs_type: fsType }, access_mode: { mode } };
}

/** Asserts that `p` rejects with gRPC `code` (and, optionally, a message matching `re`). */
export async function rejectsWith(p: Promise<unknown>, code: grpc.status, re?: RegExp): Promise<void> {
  try {
    await p;
  } catch (e) {
    const err = e as grpc.ServiceError;
    assert.equal(err.code, code, `expected ${grpc.status[code]}, got ${grpc.status[err.code]}: ${err.details}`);
    if (re) assert.match(err.details, re);
    return;
  }
  assert.fail(`expected ${grpc.status[code]}, but the call succeeded`);
}

/** Writes `text` at the start of a block device, or into `data.txt` of a mounted dir; durable. */
export function writeData(access: Access, target: string, text: string): void {
  if (access === 'block') {
    const buf = Buffer.alloc(4096);
    buf.write(text);
    execFileSync('dd', [`of=${target}`, 'bs=4096', 'count=1', 'oflag=direct', 'status=none'], { input: buf });
  } else {
    writeFileSync(path.join(target, 'data.txt'), text);
    execFileSync('sync', ['-f', path.join(target, 'data.txt')]);
  }
}

export function readData(access: Access, target: string): string {
  if (access === 'block') {
    const out = execFileSync('dd', [`if=${target}`, 'bs=4096', 'count=1', 'iflag=direct', 'status=none']);
    return out.toString('utf8').replace(/\0+$/, '');
  }
  try {
    return readFileSync(path.join(target, 'data.txt'), 'utf8');
  } catch {
    return '';
  }
}
