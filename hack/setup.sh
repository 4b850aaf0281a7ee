#!/usr/bin/env bash
# Installs everything podvirt's demo and tests need on Debian 12, as root. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

need_node_major=20
if ! command -v node >/dev/null 2>&1; then
  echo "setup: Node.js >= 20.19 is required (Debian 12's nodejs is too old); install it first" >&2
  exit 1
fi
node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)' || {
  echo "setup: Node.js $(node --version) is too old; podvirt needs ^20.19, ^22.12 or ^24" >&2; exit 1; }

APT_PACKAGES=(
  qemu-system-x86 qemu-utils qemu-block-extra   # QEMU, qemu-img, qemu-storage-daemon
  containernetworking-plugins                   # host-local/static IPAM, reference bridge plugin
  busybox-static cpio kmod                      # the test guest's initramfs
  iproute2 iputils-ping procps psmisc util-linux e2fsprogs xfsprogs fuse3
  gcc libc6-dev                                 # the CNI shim
  python3                                       # CNI tests: a VM-side tap client (ARP over the tap)
  shellcheck                                    # lint of hack/install-on-cluster.sh (test/chart)
  openssl                                       # per-migration x509 credentials (agent/migration/tls.ts)
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  [[ "$p" == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm dependencies: only when the lock file changed since the last install.
stamp=node_modules/.podvirt-lock-hash
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  npm ci --no-fund --no-audit --loglevel=error
  echo "$want" > "$stamp"
fi

npm run --silent build

# Component set-up steps (test guest, ...), each idempotent and cached.
for step in hack/setup.d/*.sh; do
  [[ -e "$step" ]] || continue
  bash "$step"
done
