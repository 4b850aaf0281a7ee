/**
 * Installs the CNI executable into the host's CNI bin dir: the static shim built under dist/cni
 * (`podvirt-cni`) as `<dir>/podvirt` (the file name is the network config's `type`), plus the
 * Node bundle `podvirt-cni.cjs` the shim falls back to when the agent's CNI socket is down. Each
 * file is written beside its destination and renamed, so a runtime executing the plugin never sees
 * a half-written file; unchanged files are left alone.
 */
import { createHash, randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { NotFound } from '../../lib/errors.js';

export const CNI_FILES: ReadonlyArray<{ from: string; to: string }> = [
  { from: 'podvirt-cni', to: 'podvirt' },
  { from: 'podvirt-cni.cjs', to: 'podvirt-cni.cjs' },
];

async function digest(file: string): Promise<string | undefined> {
  try {
    return createHash('sha256').update(await fs.readFile(file)).digest('hex');
  } catch {
    return undefined;
  }
}

/** Copies the plugin files; returns the destination paths that changed. */
export async function installCniPlugin(buildDir: string, binDir: string): Promise<string[]> {
  const changed: string[] = [];
  await fs.mkdir(binDir, { recursive: true });
  for (const f of CNI_FILES) {
    const src = path.join(buildDir, f.from);
    const dst = path.join(binDir, f.to);
    const want = await digest(src);
    if (!want) throw new NotFound(`CNI build output ${src} is missing (run npm run build)`);
    if ((await digest(dst)) === want) continue;
    const tmp = path.join(binDir, `.${f.to}.${randomBytes(4).toString('hex')}.tmp`);
    try {
      await fs.copyFile(src, tmp);
      await fs.chmod(tmp, 0o755);
      await fs.rename(tmp, dst);
    } catch (e) {
      await fs.rm(tmp, { force: true });
      throw e;
    }
    changed.push(dst);
  }
  return changed;
}
