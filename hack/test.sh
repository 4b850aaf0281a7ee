#!/usr/bin/env bash
# Every check podvirt has: set-up, typecheck, lint, the whole mocha suite on the system Node, then
# a compatibility subset on each other supported Node major (installed by
# hack/setup.d/30-node-matrix.sh into .cache/node/<major>; see docs/compat.md).
# Prints one count line per run, then ends with the plain line "N passed, N failed, N skipped":
# the sum over all runs. A typecheck or lint failure, a run with no summary, or a missing Node
# major each count as one failure.
#   bash hack/test.sh                 everything
#   bash hack/test.sh FILE...         those spec files on the system Node only (PODVIRT_COMPAT=1: also the subset)
#   PODVIRT_COMPAT=0 bash hack/test.sh    without the compatibility runs (said so in the output)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
bash hack/setup.sh || { echo "setup failed"; echo "0 passed, 1 failed, 0 skipped"; exit 1; }

# The runtime-sensitive parts, without long VM boots (about a minute per Node major): gRPC over
# unix sockets (device plugin against a kubelet emulator, CSI conformance), koffi syscalls
# (affinity, KVM probe), QMP, @kubernetes/client-node against the fake API server (REST, watch,
# the agent process, WebSocket exec), the CNI bundle built by esbuild and the C shim, TLS with
# the Node's own OpenSSL, and the built CLI from dist/.
COMPAT_MAJORS=(22 24)
COMPAT_SPECS=(
  test/compat/dist-cli.test.ts
  test/device-plugin/device-plugin.test.ts test/device-plugin/kubelet-side.test.ts
  test/csi/conformance.test.ts
  test/agent-core/pin.test.ts test/agent-core/qmp.test.ts
  test/kube/fake-apiserver.test.ts test/kube/kubectl-podvirt.test.ts test/kube/agent-process.test.ts test/kube/console.test.ts
  test/cni/plugin.test.ts test/cni/server.test.ts test/cni/warm-pool.test.ts
  test/migration/tls-control.test.ts
)

passed=0 failed=0 skipped=0
runs=()
out=$(mktemp)
trap 'rm -f "$out"' EXIT

# Adds one mocha run (its output in $out, its exit status $2) to the totals under label $1.
tally() {
  local line p f s
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' "$out" | tail -1)
  if [[ -z "$line" ]]; then
    echo "mocha produced no summary"
    line="0 passed, 1 failed, 0 skipped"
  fi
  read -r p _ f _ s _ <<<"${line//,/}"
  # A non-zero exit with no failed test (a crash after the summary) still fails the run.
  if (($2 != 0 && f == 0)); then f=1; line="$p passed, $f failed, $s skipped (mocha exited $2)"; fi
  passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
  runs+=("$1: $line")
}

echo "== typecheck"; npx --no-install tsc -p tsconfig.json --noEmit || { failed=$((failed + 1)); runs+=("typecheck: failed (one failure)"); }
echo "== lint"; npx --no-install eslint . || { failed=$((failed + 1)); runs+=("lint: failed (one failure)"); }

# Spec files live here, not in .mocharc.json, so `npx mocha FILE` runs just that file.
if (($#)); then specs=("$@"); else
  specs=('test/**/*.test.ts' 'lib/**/*.test.ts' 'agent/**/*.test.ts' 'plugins/**/*.test.ts' 'csi/**/*.test.ts' 'cni/**/*.test.ts')
fi
system_node=$(node --version)
echo "== tests (Node $system_node)"
npx --no-install mocha "${specs[@]}" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
tally "Node $system_node, $( (($#)) && echo "$# spec file(s)" || echo "whole suite")" "$rc"

if [[ "${PODVIRT_COMPAT:-}" == 0 ]] || { (($#)) && [[ "${PODVIRT_COMPAT:-}" != 1 ]]; }; then
  runs+=("Node ${COMPAT_MAJORS[*]}: compatibility runs not done (spec files given or PODVIRT_COMPAT=0)")
else
  for major in "${COMPAT_MAJORS[@]}"; do
    bin=$PWD/.cache/node/$major/bin
    if ! v=$("$bin/node" --version 2>/dev/null); then
      failed=$((failed + 1))
      runs+=("Node $major: not installed in .cache/node/$major (hack/setup.d/30-node-matrix.sh): one failure")
      continue
    fi
    [[ "$v" == "$system_node" ]] && { runs+=("Node $v: is the system Node (whole suite above)"); continue; }
    echo "== compatibility tests (Node $v)"
    # PATH first: children started as `node` (CNI bundle, shebangs) run on this Node too.
    PATH="$bin:$PATH" "$bin/node" node_modules/mocha/bin/mocha.js "${COMPAT_SPECS[@]}" 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    tally "Node $v, compatibility subset (${#COMPAT_SPECS[@]} files)" "$rc"
  done
fi

echo
printf '%s\n' "${runs[@]}"
echo "$passed passed, $failed failed, $skipped skipped"
((failed == 0))
