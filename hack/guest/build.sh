#!/usr/bin/env bash
# Builds the podvirt test guest into .cache/guest/ (or $1): Debian's cloud kernel (vmlinuz) and a
# busybox-static initramfs (initramfs.cpio.gz) whose /init is hack/guest/init. Idempotent and cached:
# the kernel is downloaded once; the initramfs is rebuilt only when a file in hack/guest/ changes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$root/.cache/guest}
mkdir -p "$out"

# The kernel: whatever bookworm's cloud meta-package currently points at.
if [[ ! -s "$out/vmlinuz" || ! -d "$out/modules" ]]; then
  pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  [[ -n "$pkg" ]] || { echo "guest: cannot resolve linux-image-cloud-amd64 (apt-get update?)" >&2; exit 1; }
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && apt-get download "$pkg" >/dev/null 2>&1) || {
    apt-get update -qq && (cd "$work" && apt-get download "$pkg" >/dev/null 2>&1); }
  dpkg-deb -x "$work"/*.deb "$work/x"
  kver=$(ls "$work/x/lib/modules" | head -1)
  rm -rf "$out/modules" && mkdir -p "$out/modules"
  for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk failover net_failover virtio_net; do
    f=$(find "$work/x/lib/modules/$kver" -name "$m.ko*" | head -1)
    [[ -n "$f" ]] || { echo "guest: module $m missing from $pkg" >&2; exit 1; }
    case "$f" in
      *.ko.xz) xz -dc "$f" > "$out/modules/$m.ko" ;;
      *.ko.zst) zstd -qdc "$f" > "$out/modules/$m.ko" ;;
      *) cp "$f" "$out/modules/$m.ko" ;;
    esac
  done
  cp "$work/x/boot/vmlinuz-$kver" "$out/vmlinuz.tmp" && mv "$out/vmlinuz.tmp" "$out/vmlinuz"
  echo "$kver" > "$out/kernel-version"
fi

want=$(cat "$here/init" "$here/dhcp-event" "$here/dirty" "$here/diskpattern" "$here/pcilist" "$here/build.sh" /bin/busybox "$out/kernel-version" | sha256sum | cut -d' ' -f1)
if [[ -s "$out/initramfs.cpio.gz" && "$(cat "$out/initramfs.stamp" 2>/dev/null)" == "$want" ]]; then
  exit 0
fi
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir -p "$tree"/{bin,sbin,proc,sys,dev,tmp,mnt,etc,root,lib/modules,usr/share/udhcpc}
cp /bin/busybox "$tree/bin/busybox"
for a in $("$tree/bin/busybox" --list); do
  [[ -e "$tree/bin/$a" ]] || ln -s busybox "$tree/bin/$a"
done
install -m 0755 "$here/init" "$tree/init"
install -m 0755 "$here/dhcp-event" "$here/dirty" "$here/diskpattern" "$here/pcilist" "$tree/bin/"
cp "$out"/modules/*.ko "$tree/lib/modules/"
echo 'root:x:0:0:root:/root:/bin/sh' > "$tree/etc/passwd"
echo 'PS1="guest# "' > "$tree/etc/profile"
(cd "$tree" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) > "$out/initramfs.cpio.gz.tmp"
mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
echo "$want" > "$out/initramfs.stamp"
echo "guest: built $out (kernel $(cat "$out/kernel-version"))"
