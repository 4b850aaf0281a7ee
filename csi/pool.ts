import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { exec } from '../lib/exec.js';

/**
 * The per-node pool: qcow2 layer files in one directory. Backing references are stored
 * relative (`-b <id>.qcow2`), so the pool can move with its state dir.
 */
export class Pool {
  constructor(readonly dir: string) {}

  async init(): Promise<void> {
    await fs.mkdir(this.dir, { recursive: true });
  }

  file(layer: string): string {
    return path.join(this.dir, `${layer}.qcow2`);
  }

  /**
   * Creates a layer. With a parent it is an O(1) overlay; `-u` skips opening the parent, which
   * may be held by a running daemon and whose size is irrelevant (the size is explicit).
   */
  async create(layer: string, sizeBytes: number, parent: string | null): Promise<void> {
    const args = ['create', '-q', '-f', 'qcow2'];
    if (parent !== null) args.push('-u', '-b', `${parent}.qcow2`, '-F', 'qcow2');
    await exec('qemu-img', [...args, this.file(layer), String(sizeBytes)]);
  }

  /** Offline grow (the layer must not be open in a daemon). */
  async resize(layer: string, sizeBytes: number): Promise<void> {
    await exec('qemu-img', ['resize', '-q', '-f', 'qcow2', this.file(layer), String(sizeBytes)]);
  }

  async remove(layer: string): Promise<void> {
    await fs.rm(this.file(layer), { force: true });
  }

  async listFiles(): Promise<string[]> {
    return (await fs.readdir(this.dir)).filter((f) => f.endsWith('.qcow2')).map((f) => f.slice(0, -'.qcow2'.length));
  }

  /** Bytes a new volume could still use on the pool's filesystem (statfs, unprivileged view). */
  async freeBytes(): Promise<number> {
    const s = await fs.statfs(this.dir);
    return s.bavail * s.bsize;
  }

  /** Bytes the layer really occupies on disk (thinness check). */
  async allocatedBytes(layer: string): Promise<number> {
    const st = await fs.stat(this.file(layer));
    return st.blocks * 512;
  }
}
