#!/usr/bin/env node
// Builds the CNI plugin into OUT_DIR (default dist/cni):
//   podvirt-cni      static C shim the runtime executes (installed as /opt/cni/bin/podvirt)
//   podvirt-cni.cjs  self-contained Node bundle the shim falls back to when no CNI server listens
//   podvirt          link named like the CNI type, so CNI_PATH=OUT_DIR works as is
//   podvirt-netns-park.so, podvirt-exec-park  helpers of the CNI server's warm process pool (cni/warm-pool.ts)
// Tests call this with a temp dir to exercise the current sources.
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, rmSync, symlinkSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = resolve(process.argv[2] ?? join(root, 'dist/cni'));
mkdirSync(out, { recursive: true });
const { build } = await import('esbuild');
await build({
  entryPoints: [join(root, 'bin/podvirt-cni.ts')],
  outfile: join(out, 'podvirt-cni.cjs'),
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  minify: true,
  legalComments: 'none', // the entry's own #! line is kept by esbuild
  logLevel: 'warning',
});
chmodSync(join(out, 'podvirt-cni.cjs'), 0o755);
execFileSync('gcc', ['-static', '-Os', '-Wall', '-Wextra', '-Werror', '-o', join(out, 'podvirt-cni'), join(root, 'cni/shim/podvirt-cni.c')], {
  stdio: 'inherit',
});
execFileSync(
  'gcc',
  ['-shared', '-fPIC', '-Os', '-Wall', '-Wextra', '-Werror', '-o', join(out, 'podvirt-netns-park.so'), join(root, 'cni/shim/netns-park.c')],
  { stdio: 'inherit' },
);
execFileSync('gcc', ['-static', '-Os', '-Wall', '-Wextra', '-Werror', '-o', join(out, 'podvirt-exec-park'), join(root, 'cni/shim/exec-park.c')], {
  stdio: 'inherit',
});
rmSync(join(out, 'podvirt'), { force: true });
symlinkSync('podvirt-cni', join(out, 'podvirt'));
