#!/usr/bin/env bash
# Regenerates the committed TypeScript types for every vendored .proto under proto/.
# To add a proto: add one line "<proto file relative to proto/>  <output dir under proto/gen/>" to PROTOS.
set -euo pipefail
cd "$(dirname "$0")/.."

PROTOS=(
  "deviceplugin/v1beta1/api.proto        deviceplugin/v1beta1"
  "pluginregistration/v1/api.proto       pluginregistration/v1"
  "csi/v1/csi.proto                      csi/v1"
)

for entry in "${PROTOS[@]}"; do
  read -r file out <<<"$entry"
  rm -rf "proto/gen/$out"
  npx --no-install proto-loader-gen-types \
    --keepCase --longs String --enums String --defaults --oneofs --grpcLib @grpc/grpc-js \
    --importFileExtension .js \
    -I proto -O "proto/gen/$out" "$file"
done
