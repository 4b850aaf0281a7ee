# The image of VM pods' compute container (examples/: ghcr.io/podvirt/podvirt-launcher). The
# agent enters this container's namespaces and starts QEMU in it as uid 107 with no capabilities
# (agent/launch/launcher.ts: sh, nsenter's target, setpriv, qemu-system-x86_64 must be here); the
# container's own process only idles. It also carries the test guest used by examples/vm-pod.yaml.
# Build from the repository root after `bash hack/setup.sh` (which builds .cache/guest):
#
#   docker build -f hack/image/launcher.Dockerfile -t ghcr.io/podvirt/podvirt-launcher:0.1.0 .
#
# Not built on the development machines (they have no container engine).
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
      qemu-system-x86 qemu-block-extra util-linux \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd -g 107 qemu-vm && useradd -u 107 -g 107 -M -d /nonexistent -s /usr/sbin/nologin qemu-vm
COPY .cache/guest/vmlinuz .cache/guest/initramfs.cpio.gz /usr/share/podvirt/guest/
USER 107:107
CMD ["sleep", "infinity"]
