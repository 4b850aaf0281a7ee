#!/usr/bin/env bash
# Installs podvirt on a real Kubernetes cluster (kind or k3s, or any cluster kubectl reaches) with
# helm, then runs the VM of examples/ and live-migrates it to another node.
#
#   hack/install-on-cluster.sh [options]
#
# What it does, in order:
#   1. checks the tools (kubectl, helm >= 3.8; kind and docker/podman with --create-kind) and the cluster;
#   2. with --create-kind: creates a kind cluster of one control-plane and two workers whose
#      kubelets use the static CPU manager and whose containerd gives devices to the pod's user
#      (device_ownership_from_security_context), and loads local images into it (--kind-load);
#   3. installs the prerequisites that are missing and for which you named manifests: Multus
#      (MULTUS_MANIFEST), the snapshot CRDs and snapshot-controller (SNAPSHOT_CRDS,
#      SNAPSHOT_CONTROLLER; the controller is then given --enable-distributed-snapshotting);
#   4. helm upgrade --install of charts/podvirt, and waits for the agent DaemonSet;
#   5. applies examples/ (namespace vms, PVC, NADs, VM pod) and waits for the pod's
#      podvirt.io/VMReady condition;
#   6. creates examples/migration-target.yaml, waits for the target's VMReady and for the source
#      pod to end (its QEMU exits after the switch-over); skipped with --no-migrate or when fewer
#      than two nodes advertise the VM's devices.
#
# It changes only the cluster kubectl points at (or the kind cluster it creates). Nothing here
# runs on the development machines, which have no cluster.
#
# Options:
#   --context NAME          kubectl/helm context (default: the current one)
#   --namespace NS          namespace of the release (default: podvirt)
#   --release NAME          helm release name (default: podvirt)
#   --create-kind NAME      create a kind cluster NAME first (fails if it exists)
#   --kind-load             load --image and --launcher-image from the local container engine into kind
#                           (build them with hack/image/podvirt.Dockerfile and launcher.Dockerfile)
#   --image REF             podvirt image (repository:tag) for the chart (default: the chart's)
#   --launcher-image REF    image of the VM pods' compute container (default: the examples')
#   --tcg                   run the VM without KVM (accel: tcg, no devices.kubevirt.io/kvm request)
#   --values FILE           extra helm values file (repeatable)
#   --no-migrate            stop after the VM runs
#   --cleanup               delete the example objects at the end (the release stays)
#   --timeout SECONDS       per wait (default: 300)
#   -h, --help              this text
#
# Environment: MULTUS_MANIFEST (file or URL of Multus' thin-plugin DaemonSet manifest, applied
# with kubectl apply -f), SNAPSHOT_CRDS and SNAPSHOT_CONTROLLER (kustomize directories or URLs of
# external-snapshotter's client/config/crd and deploy/kubernetes/snapshot-controller at a release
# tag, applied with kubectl apply -k), KIND_NODE_IMAGE (kind node image), CONTAINER_ENGINE
# (docker or podman, for --kind-load).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
chart="$root/charts/podvirt"
examples="$root/examples"

context=""
namespace=podvirt
release=podvirt
kind_name=""
kind_load=0
image=""
launcher_image=""
tcg=0
migrate=1
cleanup=0
timeout=300
values_files=()

die() { echo "install-on-cluster: $*" >&2; exit 1; }
say() { echo "== $*"; }
usage() { sed -n '2,/^set -euo pipefail$/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

while (($#)); do
  case "$1" in
    --context) context=${2:?--context needs a value}; shift 2 ;;
    --namespace) namespace=${2:?--namespace needs a value}; shift 2 ;;
    --release) release=${2:?--release needs a value}; shift 2 ;;
    --create-kind) kind_name=${2:?--create-kind needs a cluster name}; shift 2 ;;
    --kind-load) kind_load=1; shift ;;
    --image) image=${2:?--image needs a value}; shift 2 ;;
    --launcher-image) launcher_image=${2:?--launcher-image needs a value}; shift 2 ;;
    --tcg) tcg=1; shift ;;
    --values) values_files+=("${2:?--values needs a file}"); shift 2 ;;
    --no-migrate) migrate=0; shift ;;
    --cleanup) cleanup=1; shift ;;
    --timeout) timeout=${2:?--timeout needs seconds}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[[ "$timeout" =~ ^[1-9][0-9]*$ ]] || die "--timeout must be a whole number of seconds, got '$timeout'"
if [[ -n "$image" && ! "$image" =~ ^[^:@]+(:[A-Za-z0-9_.-]+)$ ]]; then
  die "--image must be repository:tag, got '$image'"
fi
for f in "${values_files[@]}"; do [[ -r "$f" ]] || die "values file $f is not readable"; done

need() { command -v "$1" >/dev/null 2>&1 || die "$1 is required but not on PATH${2:+ ($2)}"; }

# ---------------------------------------------------------------- 1. tools and cluster
say "checking tools"
need kubectl "the Kubernetes CLI"
need helm "Helm 3.8 or newer"
helm_version=$(helm version --template '{{.Version}}' 2>/dev/null || true)
[[ "$helm_version" =~ ^v3\.([0-9]+) ]] || die "helm 3 is required, found '${helm_version:-none}'"
((BASH_REMATCH[1] >= 8)) || die "helm 3.8 or newer is required (for --kube-version and the schema), found $helm_version"
[[ -f "$chart/Chart.yaml" && -d "$examples" ]] || die "run this from a podvirt checkout (no $chart)"

engine=${CONTAINER_ENGINE:-}
if [[ -n "$kind_name" || $kind_load == 1 ]]; then
  need kind "Kubernetes in Docker"
  if [[ -z "$engine" ]]; then
    if command -v docker >/dev/null 2>&1; then engine=docker
    elif command -v podman >/dev/null 2>&1; then engine=podman
    else die "kind needs docker or podman"; fi
  fi
fi

# ---------------------------------------------------------------- 2. kind cluster
if [[ -n "$kind_name" ]]; then
  kind get clusters 2>/dev/null | grep -qx "$kind_name" && die "a kind cluster named $kind_name exists already; pick another name or omit --create-kind"
  say "creating kind cluster $kind_name (1 control-plane, 2 workers)"
  kind_config=$(mktemp)
  trap 'rm -f "$kind_config"' EXIT
  cat >"$kind_config" <<'YAML'
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
containerdConfigPatches:
  # Devices (block volumes, /dev/kvm) in a pod belong to the pod's runAsUser/runAsGroup, so the
  # non-root QEMU can open them.
  - |-
    [plugins."io.containerd.grpc.v1.cri"]
      device_ownership_from_security_context = true
kubeadmConfigPatches:
  # Exclusive CPUs for Guaranteed pods with whole CPUs; CPU 0 stays for the system.
  - |
    kind: KubeletConfiguration
    cpuManagerPolicy: static
    reservedSystemCPUs: "0"
nodes:
  - role: control-plane
  - role: worker
  - role: worker
YAML
  kind_args=(create cluster --name "$kind_name" --config "$kind_config" --wait 180s)
  [[ -n "${KIND_NODE_IMAGE:-}" ]] && kind_args+=(--image "$KIND_NODE_IMAGE")
  KIND_EXPERIMENTAL_PROVIDER=$engine kind "${kind_args[@]}"
  context="kind-$kind_name"
fi

kc=(kubectl)
hc=(helm)
if [[ -n "$context" ]]; then
  kc+=(--context "$context")
  hc+=(--kube-context "$context")
fi
"${kc[@]}" version >/dev/null 2>&1 || die "cannot reach the cluster (kubectl ${context:+--context $context }version failed)"
say "cluster: $("${kc[@]}" config current-context 2>/dev/null || echo "$context"), $("${kc[@]}" get nodes --no-headers | wc -l) node(s)"

if [[ $kind_load == 1 ]]; then
  [[ -n "$kind_name" ]] || kind_name=$("${kc[@]}" config current-context | sed -n 's/^kind-//p')
  [[ -n "$kind_name" ]] || die "--kind-load needs a kind cluster (use --create-kind or a kind-* context)"
  for ref in ${image:+"$image"} ${launcher_image:+"$launcher_image"}; do
    say "loading $ref into kind cluster $kind_name"
    if [[ "$engine" == podman ]]; then
      archive=$(mktemp --suffix=.tar)
      podman save -o "$archive" "$ref"
      kind load image-archive --name "$kind_name" "$archive"
      rm -f "$archive"
    else
      kind load docker-image --name "$kind_name" "$ref"
    fi
  done
fi

api_served() { "${kc[@]}" api-resources --api-group="$1" -o name 2>/dev/null | grep -qx "$2"; }

# ---------------------------------------------------------------- 3. prerequisites
if ! api_served k8s.cni.cncf.io network-attachment-definitions.k8s.cni.cncf.io; then
  [[ -n "${MULTUS_MANIFEST:-}" ]] || die "Multus is not installed. Install it, or set MULTUS_MANIFEST to its thin-plugin DaemonSet manifest (multus-cni repository, deployments/multus-daemonset.yml at a release tag)"
  say "installing Multus from $MULTUS_MANIFEST"
  "${kc[@]}" apply -f "$MULTUS_MANIFEST"
  "${kc[@]}" -n kube-system rollout status daemonset -l app=multus --timeout "${timeout}s" ||
    "${kc[@]}" -n kube-system rollout status daemonset/kube-multus-ds --timeout "${timeout}s"
  for _ in $(seq 1 30); do api_served k8s.cni.cncf.io network-attachment-definitions.k8s.cni.cncf.io && break; sleep 2; done
fi

if api_served snapshot.storage.k8s.io volumesnapshotclasses.snapshot.storage.k8s.io || [[ -n "${SNAPSHOT_CRDS:-}" ]]; then
  if ! api_served snapshot.storage.k8s.io volumesnapshotclasses.snapshot.storage.k8s.io; then
    say "installing the snapshot CRDs from $SNAPSHOT_CRDS"
    "${kc[@]}" apply -k "$SNAPSHOT_CRDS"
    "${kc[@]}" wait --for=condition=Established --timeout "${timeout}s" crd/volumesnapshotclasses.snapshot.storage.k8s.io
  fi
  if [[ -n "${SNAPSHOT_CONTROLLER:-}" ]]; then
    say "installing snapshot-controller from $SNAPSHOT_CONTROLLER"
    "${kc[@]}" apply -k "$SNAPSHOT_CONTROLLER"
  fi
  if "${kc[@]}" -n kube-system get deployment snapshot-controller >/dev/null 2>&1; then
    args=$("${kc[@]}" -n kube-system get deployment snapshot-controller -o jsonpath='{.spec.template.spec.containers[0].args}')
    if [[ "$args" != *--enable-distributed-snapshotting* ]]; then
      say "enabling distributed snapshotting in snapshot-controller (node-local volumes)"
      "${kc[@]}" -n kube-system patch deployment snapshot-controller --type=json \
        -p '[{"op":"add","path":"/spec/template/spec/containers/0/args/-","value":"--enable-distributed-snapshotting"}]'
    fi
  else
    echo "note: no snapshot-controller in kube-system; snapshots need one started with --enable-distributed-snapshotting" >&2
  fi
  snapshots=true
else
  echo "note: the snapshot API is not served (set SNAPSHOT_CRDS and SNAPSHOT_CONTROLLER to install it); installing without the snapshotter" >&2
  snapshots=false
fi

# ---------------------------------------------------------------- 4. the chart
say "helm upgrade --install $release ($chart) in namespace $namespace"
helm_args=(upgrade --install "$release" "$chart" --namespace "$namespace" --create-namespace --wait --timeout "${timeout}s"
  --set "csi.snapshotter.enabled=$snapshots")
if [[ -n "$image" ]]; then
  helm_args+=(--set "image.repository=${image%:*}" --set "image.tag=${image##*:}")
fi
for f in "${values_files[@]}"; do helm_args+=(-f "$f"); done
"${hc[@]}" "${helm_args[@]}"
ds=$("${kc[@]}" -n "$namespace" get daemonset -l "app.kubernetes.io/instance=$release,app.kubernetes.io/component=agent" -o name)
[[ -n "$ds" ]] || die "the chart created no agent DaemonSet"
"${kc[@]}" -n "$namespace" rollout status "$ds" --timeout "${timeout}s"

resource=devices.kubevirt.io/tun
[[ $tcg == 1 ]] || resource=devices.kubevirt.io/kvm
nodes_with_devices=0
for _ in $(seq 1 30); do
  nodes_with_devices=$("${kc[@]}" get nodes -o jsonpath="{range .items[*]}{.status.allocatable.${resource//./\\.}}{\"\\n\"}{end}" | grep -c '^[1-9]' || true)
  ((nodes_with_devices > 0)) && break
  sleep 2
done
((nodes_with_devices > 0)) || die "no node advertises $resource (is the agent running? does the node have the device? --tcg runs without KVM)"
say "$nodes_with_devices node(s) advertise $resource"

# ---------------------------------------------------------------- 5. the VM
work=$(mktemp -d)
trap 'rm -rf "$work" ${kind_config:+"$kind_config"}' EXIT
cp "$examples"/*.yaml "$work/"
for f in "$work"/vm-pod.yaml "$work"/migration-target.yaml; do
  [[ -n "$launcher_image" ]] && sed -i "s|image: ghcr.io/podvirt/podvirt-launcher:[^[:space:]]*|image: $launcher_image|" "$f"
  if [[ $tcg == 1 ]]; then
    sed -i -e 's/^\(\s*\)accel: auto$/\1accel: tcg/' -e '/devices\.kubevirt\.io\/kvm:/d' "$f"
  fi
done

say "creating the VM (namespace vms): PVC, networks, pod"
"${kc[@]}" apply -f "$work/namespace.yaml"
"${kc[@]}" apply -f "$work/pvc.yaml" -f "$work/nad-vm.yaml" -f "$work/nad-migration.yaml" -f "$work/vm-pod.yaml"
if ! "${kc[@]}" -n vms wait --for=condition=podvirt.io/VMReady pod/vm1 --timeout "${timeout}s"; then
  "${kc[@]}" -n vms describe pod vm1 >&2 || true
  die "the VM did not become ready"
fi
"${kc[@]}" -n vms get pod vm1 -o wide
"${kc[@]}" -n vms get pod vm1 -o jsonpath='{.metadata.annotations.vm\.podvirt\.io/status}{"\n"}'

# ---------------------------------------------------------------- 6. the migration
if [[ $migrate == 1 ]]; then
  if ((nodes_with_devices < 2)); then
    echo "note: only one node advertises $resource: skipping the migration (it needs a second node)" >&2
  else
    src_node=$("${kc[@]}" -n vms get pod vm1 -o jsonpath='{.spec.nodeName}')
    say "migrating vm1 away from $src_node (examples/migration-target.yaml)"
    "${kc[@]}" apply -f "$work/migration-target.yaml"
    if ! "${kc[@]}" -n vms wait --for=condition=podvirt.io/VMReady pod/vm1-target --timeout "${timeout}s"; then
      "${kc[@]}" -n vms describe pod vm1-target >&2 || true
      die "the migration did not complete"
    fi
    dst_node=$("${kc[@]}" -n vms get pod vm1-target -o jsonpath='{.spec.nodeName}')
    [[ "$dst_node" != "$src_node" ]] || die "the target landed on the source node $src_node"
    "${kc[@]}" -n vms wait --for=jsonpath='{.status.phase}'=Succeeded pod/vm1 --timeout "${timeout}s" ||
      echo "note: the source pod has not ended yet" >&2
    say "vm1 now runs on $dst_node (was $src_node)"
    "${kc[@]}" -n vms get pods -o wide
  fi
fi

if [[ $cleanup == 1 ]]; then
  say "deleting the example objects"
  "${kc[@]}" delete --ignore-not-found -f "$work/migration-target.yaml" -f "$work/vm-pod.yaml" \
    -f "$work/pvc.yaml" -f "$work/nad-vm.yaml" -f "$work/nad-migration.yaml"
fi
say "done"
