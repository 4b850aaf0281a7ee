#!/usr/bin/env node
// Build: tsc for the daemons and CLI into dist/, then each component's extra artefacts.
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const run = (cmd, args) => execFileSync(cmd, args, { cwd: root, stdio: 'inherit' });

run(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json']);
for (const bin of ['dist/bin/podvirt.js']) {
  if (existsSync(join(root, bin))) chmodSync(join(root, bin), 0o755);
}
