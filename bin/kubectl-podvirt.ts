#!/usr/bin/env node
import { kubectlMain } from '../agent/kube/kubectl/main.js';

// kubectl finds plugins as `kubectl-<name>` on PATH: `kubectl podvirt ps` runs this.
kubectlMain(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`kubectl-podvirt: ${String(e)}\n`);
    process.exitCode = 1;
  },
);
