/**
 * Directory watches that survive the directory not existing yet, or being removed and re-created
 * (a plain inotify watch dies silently with its directory: KubeVirt lost kubelet-restart detection
 * that way). While a directory is missing, its nearest existing ancestor is watched instead, and the
 * real watch is re-armed as soon as the directory appears.
 *
 * `onEvent(dir, name)` is called for every change inside a watched directory (`name` is the entry,
 * or null when unknown), and with `name` null whenever a directory (re)appears or disappears, since
 * its contents may have changed wholesale.
 */
import { existsSync, watch, type FSWatcher } from 'node:fs';
import * as path from 'node:path';

export type DirEventHandler = (dir: string, name: string | null) => void;

export class DirWatcher {
  private readonly direct = new Map<string, FSWatcher>();
  private readonly ancestor = new Map<string, FSWatcher>();
  private closed = false;

  constructor(
    dirs: readonly string[],
    private readonly onEvent: DirEventHandler,
  ) {
    for (const d of new Set(dirs.map((x) => path.resolve(x)))) this.arm(d);
  }

  /** Directories currently watched directly (the others wait for their directory to appear). */
  get watching(): string[] {
    return [...this.direct.keys()];
  }

  close(): void {
    this.closed = true;
    for (const w of [...this.direct.values(), ...this.ancestor.values()]) w.close();
    this.direct.clear();
    this.ancestor.clear();
  }

  private arm(dir: string): void {
    if (this.closed) return;
    this.ancestor.get(dir)?.close();
    this.ancestor.delete(dir);
    let w: FSWatcher;
    try {
      w = watch(dir, { persistent: false });
    } catch {
      this.waitForDir(dir);
      return;
    }
    this.direct.set(dir, w);
    w.on('change', (type, name) => {
      this.onEvent(dir, name == null ? null : String(name));
      // A 'rename' is also what a removal of the directory itself looks like.
      if (type === 'rename' && !existsSync(dir)) this.lost(dir);
    });
    w.on('error', () => this.lost(dir));
  }

  private lost(dir: string): void {
    const w = this.direct.get(dir);
    if (!w) return;
    w.close();
    this.direct.delete(dir);
    this.onEvent(dir, null);
    this.waitForDir(dir);
  }

  private waitForDir(dir: string): void {
    if (this.closed) return;
    if (existsSync(dir)) {
      this.arm(dir);
      this.onEvent(dir, null);
      return;
    }
    let anc = path.dirname(dir);
    while (!existsSync(anc) && path.dirname(anc) !== anc) anc = path.dirname(anc);
    let w: FSWatcher;
    try {
      w = watch(anc, { persistent: false });
    } catch {
      // The ancestor vanished between the check and the watch: look again.
      setImmediate(() => this.waitForDir(dir));
      return;
    }
    this.ancestor.get(dir)?.close();
    this.ancestor.set(dir, w);
    const recheck = () => {
      if (this.ancestor.get(dir) !== w) return;
      if (existsSync(dir) || !existsSync(anc) || existsSync(path.join(anc, path.relative(anc, dir).split(path.sep)[0]!))) {
        w.close();
        this.ancestor.delete(dir);
        this.waitForDir(dir);
      }
    };
    w.on('change', recheck);
    w.on('error', recheck);
    // It may have appeared between the existence check and the watch.
    recheck();
  }
}
