# The podvirt image the chart runs (values image.repository): Node.js 24 (the exact release
# hack/test.sh runs podvirt's compatibility tests on: NODE_VERSIONS in hack/setup.d/30-node-matrix.sh;
# Node 24 is an LTS line supported until April 2028, 22 only until April 2027), the built podvirt
# package with production dependencies, the CNI build output the agent installs on the host
# (dist/cni: the static shim "podvirt-cni" and its Node bundle), and the host tools the agent's
# components call (qemu-img and qemu-storage-daemon for CSI, losetup/mount/nsenter/setpriv,
# ip, mkfs, FUSE). Build from the repository root:
#
#   docker build -f hack/image/podvirt.Dockerfile -t ghcr.io/podvirt/podvirt:0.1.0 .
#
# Not built on the development machines (they have no container engine).
FROM node:24.21.0-bookworm-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-fund --no-audit
COPY . .
RUN npm run build && npm prune --omit=dev

FROM node:24.21.0-bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
      qemu-utils qemu-block-extra fuse3 util-linux mount e2fsprogs xfsprogs iproute2 procps \
      containernetworking-plugins ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/podvirt
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/proto ./proto
RUN ln -s /opt/podvirt/dist/bin/podvirt.js /usr/local/bin/podvirt
ENTRYPOINT ["podvirt"]
CMD ["agent"]
