#!/usr/bin/env bash
# Every check podvirt has: set-up, typecheck, lint, then the whole mocha suite.
# Ends with the plain line "N passed, N failed, N skipped".
set -uo pipefail
cd "$(dirname "$0")/.."
bash hack/setup.sh || { echo "setup failed"; echo "0 passed, 1 failed"; exit 1; }

fail=0
echo "== typecheck"; npx --no-install tsc -p tsconfig.json --noEmit || fail=1
echo "== lint"; npx --no-install eslint . || fail=1
echo "== tests"
out=$(mktemp)
# Spec files live here, not in .mocharc.json, so `npx mocha FILE` runs just that file.
if (($#)); then specs=("$@"); else
  specs=('test/**/*.test.ts' 'lib/**/*.test.ts' 'agent/**/*.test.ts' 'plugins/**/*.test.ts' 'csi/**/*.test.ts' 'cni/**/*.test.ts')
fi
npx --no-install mocha "${specs[@]}" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$out" | tail -1)
rm -f "$out"
if [[ -z "$summary" ]]; then echo "mocha produced no summary"; rc=1; summary="0 passed, 1 failed"; fi
if ((fail)); then
  passed=${summary%% passed*}; rest=${summary#*, }; failed=${rest%% failed*}
  summary="$passed passed, $((failed + 1)) failed${summary#*failed}"
  echo "typecheck or lint failed (counted as one failure)"
fi
echo "$summary"
((rc == 0 && fail == 0))
