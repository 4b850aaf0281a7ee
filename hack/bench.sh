#!/usr/bin/env bash
# Runs every benchmark under bench/ (or the ones named), each printing its own table.
set -uo pipefail
cd "$(dirname "$0")/.."
bash hack/setup.sh >/dev/null
rc=0
if (($#)); then files=("$@"); else files=(bench/*.ts); fi
for f in "${files[@]}"; do
  echo "== $f"
  npx --no-install tsx "$f" || { echo "benchmark $f failed"; rc=1; }
done
exit $rc
