import { strict as assert } from 'node:assert';
import { execFile } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { parse } from 'yaml';
import { PROJECT_ROOT } from '../../lib/project-root.js';
import { skipBecause } from '../helpers/skip.js';

const run = promisify(execFile);
const SCRIPT = path.join(PROJECT_ROOT, 'hack', 'install-on-cluster.sh');

/**
 * Stand-ins for kubectl and helm that log every call and answer like a two-node cluster with
 * Multus, no snapshot API, and a VM that becomes ready: the script's control flow runs for real,
 * only the cluster is simulated.
 */
const KUBECTL = `#!/usr/bin/env bash
echo "kubectl $*" >> "$FAKE_LOG"
args=" $* "
case "$args" in
  *" version "*) exit 0 ;;
  *" config current-context "*) echo fake ;;
  *" get nodes --no-headers "*) printf 'node-a Ready\\nnode-b Ready\\n' ;;
  *" api-resources --api-group=k8s.cni.cncf.io "*) echo network-attachment-definitions.k8s.cni.cncf.io ;;
  *" api-resources "*) exit 0 ;;
  *" get daemonset "*) echo daemonset.apps/podvirt-agent ;;
  *" get nodes -o jsonpath"*) printf '1k\\n1k\\n' ;;
  *" apply -f "*)
    mkdir -p "$FAKE_DIR/applied"
    prev=""
    for a in "$@"; do [[ "$prev" == -f ]] && cp "$a" "$FAKE_DIR/applied/"; prev=$a; done ;;
  *" get pod vm1-target -o jsonpath={.spec.nodeName} "*) echo node-b ;;
  *" get pod vm1 -o jsonpath={.spec.nodeName} "*) echo node-a ;;
  *" wait "*) [[ -n "\${FAKE_NOT_READY:-}" && "$args" == *VMReady* ]] && exit 1; exit 0 ;;
  *) exit 0 ;;
esac
`;
const HELM = `#!/usr/bin/env bash
echo "helm $*" >> "$FAKE_LOG"
[[ "$1" == version ]] && { echo v3.14.2; exit 0; }
exit 0
`;

describe('hack/install-on-cluster.sh', function () {
  this.timeout(60_000);
  let dir: string;
  let env: NodeJS.ProcessEnv;
  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'pvt-chart-install-'));
    const bin = path.join(dir, 'bin');
    for (const [name, body] of [['kubectl', KUBECTL], ['helm', HELM]] as const) {
      const f = path.join(bin, name);
      mkdirSync(bin, { recursive: true });
      writeFileSync(f, body);
      chmodSync(f, 0o755);
    }
    env = { PATH: `${bin}:/usr/bin:/bin`, FAKE_LOG: path.join(dir, 'log'), FAKE_DIR: dir, HOME: dir };
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));
  const log = (): string[] => readFileSync(path.join(dir, 'log'), 'utf8').trim().split('\n');

  it('passes bash -n and shellcheck', async function () {
    await run('bash', ['-n', SCRIPT]);
    try {
      await run('shellcheck', ['--version']);
    } catch {
      skipBecause(this, 'shellcheck is not installed (hack/setup.sh installs it)');
    }
    await run('shellcheck', [SCRIPT]);
  });

  it('its kind cluster config parses: two workers, static CPU manager, device ownership from the security context', () => {
    const text = readFileSync(SCRIPT, 'utf8');
    const m = /cat >"\$kind_config" <<'YAML'\n([\s\S]*?)\nYAML\n/.exec(text);
    assert.ok(m, 'the kind config heredoc');
    const cfg = parse(m[1] as string) as { kind: string; nodes: { role: string }[]; kubeadmConfigPatches: string[]; containerdConfigPatches: string[] };
    assert.equal(cfg.kind, 'Cluster');
    assert.deepEqual(cfg.nodes.map((n) => n.role), ['control-plane', 'worker', 'worker']);
    const kubelet = parse(cfg.kubeadmConfigPatches[0] as string) as Record<string, unknown>;
    assert.deepEqual(kubelet, { kind: 'KubeletConfiguration', cpuManagerPolicy: 'static', reservedSystemCPUs: '0' });
    assert.match(cfg.containerdConfigPatches[0] as string, /^\[plugins\."io\.containerd\.grpc\.v1\.cri"\]\n\s+device_ownership_from_security_context = true$/);
  });

  it('--help prints the documented usage; an unknown option fails clearly', async () => {
    const { stdout } = await run('bash', [SCRIPT, '--help'], { env });
    assert.match(stdout, /--create-kind NAME/);
    assert.match(stdout, /MULTUS_MANIFEST/);
    await assert.rejects(run('bash', [SCRIPT, '--frobnicate'], { env }), (e: unknown) => /unknown option --frobnicate/.test(String((e as { stderr: string }).stderr)));
    await assert.rejects(run('bash', [SCRIPT, '--timeout', 'soon'], { env }), (e: unknown) => /--timeout must be a whole number/.test(String((e as { stderr: string }).stderr)));
  });

  it('refuses to start without helm', async () => {
    rmSync(path.join(dir, 'bin', 'helm'));
    const noHelm = { ...env, PATH: `${path.join(dir, 'bin')}:/bin` };
    await assert.rejects(run('/bin/bash', [SCRIPT], { env: noHelm }), (e: unknown) => /helm is required/.test(String((e as { stderr: string }).stderr)));
  });

  it('installs the chart, runs the VM and migrates it (against a simulated cluster)', async () => {
    const { stdout } = await run('bash', [SCRIPT, '--tcg', '--image', 'registry.local/podvirt:dev', '--launcher-image', 'registry.local/launcher:dev', '--context', 'lab'], { env });
    const calls = log();
    const helmUp = calls.find((c) => c.startsWith('helm') && c.includes('upgrade --install'));
    assert.ok(helmUp, calls.join('\n'));
    for (const part of ['--kube-context lab', 'upgrade --install podvirt', `${PROJECT_ROOT}/charts/podvirt`, '--namespace podvirt', '--set csi.snapshotter.enabled=false', '--set image.repository=registry.local/podvirt', '--set image.tag=dev']) {
      assert.ok(helmUp.includes(part), `helm call lacks ${part}: ${helmUp}`);
    }
    assert.ok(calls.every((c) => !c.startsWith('kubectl') || c.startsWith('kubectl --context lab')), 'every kubectl call uses the context');
    const order = ['upgrade --install', 'rollout status daemonset.apps/podvirt-agent', 'vm-pod.yaml', 'pod/vm1 ', 'migration-target.yaml', 'pod/vm1-target'];
    let at = -1;
    for (const o of order) {
      const i = calls.findIndex((c, j) => j > at && c.includes(o));
      assert.ok(i > at, `expected "${o}" after call ${at}:\n${calls.join('\n')}`);
      at = i;
    }
    assert.match(stdout, /vm1 now runs on node-b \(was node-a\)/);
    // --tcg and --launcher-image rewrite the applied copies, never examples/ itself.
    const applied = readFileSync(path.join(dir, 'applied', 'vm-pod.yaml'), 'utf8');
    assert.match(applied, /accel: tcg/);
    assert.doesNotMatch(applied, /devices\.kubevirt\.io\/kvm/);
    assert.match(applied, /image: registry\.local\/launcher:dev/);
    assert.match(readFileSync(path.join(PROJECT_ROOT, 'examples', 'vm-pod.yaml'), 'utf8'), /accel: auto/);
    assert.deepEqual(readdirSync(path.join(dir, 'applied')).sort(), ['migration-target.yaml', 'nad-migration.yaml', 'nad-vm.yaml', 'namespace.yaml', 'pvc.yaml', 'vm-pod.yaml']);
  });

  it('fails with the pod described when the VM does not become ready', async () => {
    await assert.rejects(run('bash', [SCRIPT, '--no-migrate'], { env: { ...env, FAKE_NOT_READY: '1' } }), (e: unknown) => /the VM did not become ready/.test(String((e as { stderr: string }).stderr)));
    assert.ok(log().some((c) => c.includes('describe pod vm1')));
    assert.ok(!log().some((c) => c.includes('migration-target.yaml')));
  });
});

