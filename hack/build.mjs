#!/usr/bin/env node
// Build: tsc for the daemons and CLI into dist/, then each component's extra artefacts.
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const run = (cmd, args) => execFileSync(cmd, args, { cwd: root, stdio: 'inherit' });

run(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json']);
for (const bin of ['dist/bin/podvirt.js', 'dist/bin/podvirt-cni.js', 'dist/bin/kubectl-podvirt.js']) {
  if (existsSync(join(root, bin))) chmodSync(join(root, bin), 0o755);
}

// CNI plugin: the static C shim and the Node bundle it falls back to (hack/build-cni.mjs).
run(process.execPath, [join(root, 'hack/build-cni.mjs'), join(root, 'dist/cni')]);
