#!/usr/bin/env node
import { runStandalone } from '../cni/standalone.js';

// The CNI plugin in-process. Production hosts run the C shim (dist/cni/podvirt-cni), which
// forwards to the CNI server and falls back to the bundle built from this file.
runStandalone().then(
  (code) => {
    process.exitCode = code;
  },
  () => {
    process.exitCode = 1;
  },
);
