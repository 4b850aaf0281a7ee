#!/usr/bin/env bash
# The README's demo: boots the test guest through the whole local-mode stack (device plugin, CSI,
# CNI, pod sandbox with exclusive CPUs, QEMU under TCG, in-agent DHCP), shows it running, stops it.
# Idempotent: a leftover demo pod from an interrupted run is stopped first.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

bash hack/setup.sh
podvirt() { node "$root/dist/bin/podvirt.js" "$@"; }

name=demo
manifest=$(mktemp --suffix=.yaml)
trap 'rm -f "$manifest"' EXIT
cat > "$manifest" <<YAML
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: demo-data}
spec:
  volumeMode: Block
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 64Mi}}
---
apiVersion: v1
kind: Pod
metadata:
  name: $name
  annotations:
    k8s.v1.cni.cncf.io/networks: podvirt0
    vm.podvirt.io/spec: |
      cpus: 1
      memory: 256Mi
      accel: tcg
      kernel: $root/.cache/guest/vmlinuz
      initrd: $root/.cache/guest/initramfs.cpio.gz
      cmdline: "console=ttyS0 quiet panic=-1"
      disks: [{name: data, volume: data}]
      interfaces: [{name: net0, network: podvirt0}]
spec:
  containers:
    - name: compute
      image: podvirt-launcher
      resources:
        limits: {cpu: "1", memory: 512Mi, devices.kubevirt.io/tun: "1"}
      volumeDevices: [{name: data, devicePath: /dev/vm-data}]
  volumes:
    - name: data
      persistentVolumeClaim: {claimName: demo-data}
YAML

podvirt stop "$name" --timeout 5 >/dev/null 2>&1 || true

echo "== podvirt run (pod $name)"
podvirt run "$manifest"

log=$(podvirt status "$name" --json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).serialLog))')
echo "== waiting for the guest (serial log $log)"
for _ in $(seq 1 120); do
  grep -q 'PODVIRT-DHCP' "$log" 2>/dev/null && break
  sleep 1
done

echo "== podvirt ps"
podvirt ps
echo "== podvirt status $name"
podvirt status "$name"
echo "== podvirt status $name --json (contract fields; the full object also has interfaces, disks, topology)"
podvirt status "$name" --json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const j=JSON.parse(s);console.log(JSON.stringify({phase:j.phase,qemuPid:j.qemuPid,vcpuThreads:j.vcpuThreads,serialLog:j.serialLog,netns:j.netns,cgroup:j.cgroup},null,2))})'
echo "== serial console (last lines)"
grep -E 'PODVIRT-|tick' "$log" | tail -n 6
ip=$(podvirt status "$name" --json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const j=JSON.parse(s);console.log((j.interfaces?.[0]?.ip??"").split("/")[0])})')
if [[ -n "$ip" ]]; then
  echo "== ping $ip (the guest, from the host through the podvirt0 bridge and the pod's tap)"
  ping -c 3 -W 2 "$ip"
fi

echo "== podvirt stop $name"
podvirt stop "$name" --timeout 5
# The local agent daemon stays up while other pods run; otherwise it goes too.
if [[ "$(podvirt ps --json)" == "[]" ]]; then podvirt agent --local --shutdown; fi
echo "demo done: the VM booted in its pod sandbox, got its address by DHCP, answered ping, and was cleaned up"
