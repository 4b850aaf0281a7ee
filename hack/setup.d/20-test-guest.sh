#!/usr/bin/env bash
# The test guest (kernel + busybox initramfs) used by the agent's VM tests, the demo and bench/agent.ts.
set -euo pipefail
exec bash "$(dirname "$0")/../guest/build.sh"
