import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { sysErrorCode } from './errors.js';

/** sysfs reads relative to an injectable root (fake trees in tests). */
export class Sysfs {
  constructor(readonly root: string) {}

  path(...rel: string[]): string {
    return path.join(this.root, ...rel);
  }

  /** Trimmed file content, or undefined when the file does not exist. */
  async read(...rel: string[]): Promise<string | undefined> {
    try {
      return (await fs.readFile(this.path(...rel), 'utf8')).trim();
    } catch (e) {
      if (sysErrorCode(e) === 'ENOENT' || sysErrorCode(e) === 'ENOTDIR') return undefined;
      throw e;
    }
  }

  /** Basename of a symlink's target (`driver` → `vfio-pci`), or undefined. */
  async linkName(...rel: string[]): Promise<string | undefined> {
    try {
      return path.basename(await fs.readlink(this.path(...rel)));
    } catch (e) {
      const c = sysErrorCode(e);
      if (c === 'ENOENT' || c === 'EINVAL' || c === 'ENOTDIR') return undefined;
      throw e;
    }
  }

  async list(...rel: string[]): Promise<string[]> {
    try {
      return (await fs.readdir(this.path(...rel))).sort();
    } catch (e) {
      if (sysErrorCode(e) === 'ENOENT' || sysErrorCode(e) === 'ENOTDIR') return [];
      throw e;
    }
  }
}

/** Parses a kernel cpu list (`0-3,8,10-11`) into sorted CPU numbers. */
export function parseCpuList(text: string): number[] {
  const out = new Set<number>();
  for (const part of text.trim().split(',')) {
    if (part === '') continue;
    const m = /^(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (!m) throw new Error(`bad cpu list element "${part}" in "${text}"`);
    const lo = Number(m[1]);
    const hi = m[2] !== undefined ? Number(m[2]) : lo;
    if (hi < lo) throw new Error(`bad cpu range "${part}"`);
    for (let c = lo; c <= hi; c++) out.add(c);
  }
  return [...out].sort((a, b) => a - b);
}

/** Formats CPU numbers as a kernel cpu list. */
export function formatCpuList(cpus: readonly number[]): string {
  const s = [...new Set(cpus)].sort((a, b) => a - b);
  const parts: string[] = [];
  for (let i = 0; i < s.length; ) {
    let j = i;
    while (j + 1 < s.length && s[j + 1] === s[j]! + 1) j++;
    parts.push(i === j ? `${s[i]}` : `${s[i]}-${s[j]}`);
    i = j + 1;
  }
  return parts.join(',');
}
