import { strict as assert } from 'node:assert';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { parseAllDocuments, stringify } from 'yaml';
import { PROJECT_ROOT } from '../../lib/project-root.js';
import { skipBecause } from '../helpers/skip.js';
import { validateManifest } from './k8s-validate.js';
import { CHART_DIR, render, type Manifest, type RenderOptions } from './render-chart.js';
import { CASES as EVALUATOR_CASES, REFUSALS } from './go-template-cases.js';
import { GoStruct } from './go-template.js';

const run = promisify(execFile);

/** helm from PATH, else the copy hack/setup.d/40-helm.sh caches; undefined when neither runs. */
async function findHelm(): Promise<string | undefined> {
  for (const bin of ['helm', path.join(PROJECT_ROOT, '.cache', 'helm', 'helm')]) {
    try {
      await run(bin, ['version', '--short'], { timeout: 20_000 });
      return bin;
    } catch {
      /* try the next */
    }
  }
  return undefined;
}

const CASES: { name: string; opts: RenderOptions }[] = [
  { name: 'defaults', opts: {} },
  { name: 'with the snapshot API and Multus', opts: { apiVersions: ['snapshot.storage.k8s.io/v1/VolumeSnapshotClass', 'k8s.cni.cncf.io/v1/NetworkAttachmentDefinition'] } },
  {
    name: 'customised',
    opts: {
      releaseName: 'podvirt-prod',
      namespace: 'virt',
      apiVersions: ['k8s.cni.cncf.io/v1/NetworkAttachmentDefinition', 'monitoring.coreos.com/v1/ServiceMonitor'],
      values: {
        metrics: { serviceMonitor: { enabled: true, labels: { release: 'prom' } } },
        kubeletDir: '/var/lib/k0s/kubelet',
        image: { digest: `sha256:${'c'.repeat(64)}` },
        devicePlugin: { maxDevices: 110, pciHostDevices: [{ pciVendorSelector: '10DE:1EB8', resourceName: 'nvidia.com/TU104GL' }] },
        storageClass: { isDefault: true, parameters: { fsType: 'xfs' } },
        networks: { namespace: 'vms', vm: { ipam: { type: 'whereabouts', range: '10.70.0.0/16' } } },
        csi: { resizer: { enabled: false } },
        cni: { install: false },
      },
    },
  },
  {
    name: 'everything optional off',
    opts: {
      apiVersions: ['snapshot.storage.k8s.io/v1/VolumeSnapshotClass', 'k8s.cni.cncf.io/v1/NetworkAttachmentDefinition'],
      values: {
        rbac: { create: false },
        serviceAccount: { create: false, name: 'existing' },
        storageClass: { create: false },
        networks: { vm: { create: false }, migration: { create: false } },
        csi: { snapshotter: { enabled: false } },
        metrics: { service: { enabled: false } },
        fullnameOverride: 'pv',
      },
    },
  },
];

const key = (m: Manifest): string => `${m.kind}/${m.metadata.namespace ?? ''}/${m.metadata.name}`;

describe('chart: real helm lint and helm template (where helm is installed)', function () {
  this.timeout(120_000);
  let helm: string | undefined;
  let dir: string;
  before(async () => {
    helm = await findHelm();
    dir = mkdtempSync(path.join(tmpdir(), 'pvt-chart-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('helm lint --strict passes', async function () {
    if (!helm) skipBecause(this, 'no helm on PATH or in .cache/helm (hack/setup.d/40-helm.sh could not fetch it); the other chart tests still render and validate the chart');
    const { stdout } = await run(helm, ['lint', '--strict', CHART_DIR], { timeout: 60_000 });
    assert.match(stdout, /1 chart\(s\) linted, 0 chart\(s\) failed/);
  });

  it('helm lint rejects values the schema forbids', async function () {
    if (!helm) skipBecause(this, 'no helm on PATH or in .cache/helm');
    await assert.rejects(run(helm, ['lint', '--strict', CHART_DIR, '--set', 'image.pullPolicy=Sometimes'], { timeout: 60_000 }), (e: unknown) =>
      /pullPolicy/.test(String((e as { stdout?: string }).stdout ?? '') + String((e as { stderr?: string }).stderr ?? '')),
    );
  });

  for (const tc of CASES) {
    it(`helm template (${tc.name}) validates and equals what the test renderer produces`, async function () {
      if (!helm) skipBecause(this, 'no helm on PATH or in .cache/helm');
      const valuesFile = path.join(dir, `${tc.name.replace(/\W+/g, '-')}.yaml`);
      // YAML 1.1 quoting, as helm reads values files with YAML 1.1 rules ("y" would be a bool).
      writeFileSync(valuesFile, stringify(tc.opts.values ?? {}, { version: '1.1' }));
      const args = ['template', tc.opts.releaseName ?? 'podvirt', CHART_DIR, '--namespace', tc.opts.namespace ?? 'podvirt', '-f', valuesFile];
      // A fixed cluster version: helm's default is the one it was built against.
      args.push('--kube-version', '1.30.0');
      for (const v of tc.opts.apiVersions ?? []) args.push('--api-versions', v);
      const { stdout } = await run(helm, args, { timeout: 60_000, maxBuffer: 16 * 2 ** 20 });
      const fromHelm = parseAllDocuments(stdout, { version: '1.1' })
        .map((d) => d.toJS() as Manifest | null)
        .filter((m): m is Manifest => m !== null);
      assert.deepEqual(fromHelm.flatMap((m) => validateManifest(m)), []);
      const ours = render(tc.opts).all;
      assert.deepEqual(fromHelm.map(key).sort(), ours.map(key).sort());
      for (const m of ours) assert.deepEqual(fromHelm.find((h) => key(h) === key(m)), m, key(m));
    });
  }

  it("the Go-template evaluator's own table of cases renders the same in real helm", async function () {
    if (!helm) skipBecause(this, 'no helm on PATH or in .cache/helm');
    const hasStruct = (v: unknown): boolean =>
      v instanceof GoStruct || (typeof v === 'object' && v !== null && Object.values(v).some(hasStruct));
    const cases = EVALUATOR_CASES.filter((c) => !hasStruct(c.data));
    assert.ok(cases.length >= 30);
    // One chart: each case is a define rendered through include with its data as the root,
    // carried out of helm as a JSON string so that any text survives the YAML round trip.
    const chart = path.join(dir, 'cases');
    mkdirSync(path.join(chart, 'templates'), { recursive: true });
    writeFileSync(path.join(chart, 'Chart.yaml'), 'apiVersion: v2\nname: cases\nversion: 0.1.0\n');
    writeFileSync(path.join(chart, 'values.yaml'), stringify(Object.fromEntries(cases.map((c, i) => [`c${i}`, c.data ?? {}])), { version: '1.1' }));
    writeFileSync(
      path.join(chart, 'templates', '_cases.tpl'),
      cases.map((c, i) => `${c.defs ?? ''}{{ define "c${i}" }}${c.src}{{ end }}`).join('\n'),
    );
    writeFileSync(
      path.join(chart, 'templates', 'cases.yaml'),
      `apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cases\ndata:\n${cases.map((_, i) => `  c${i}: {{ include "c${i}" .Values.c${i} | toJson }}\n`).join('')}`,
    );
    const { stdout } = await run(helm as string, ['template', 'cases', chart], { timeout: 60_000 });
    const cm = parseAllDocuments(stdout).map((d) => d.toJS() as Manifest | null).find((m) => m?.kind === 'ConfigMap') as unknown as { data: Record<string, string> };
    const mismatches = cases.flatMap((c, i) => (cm.data[`c${i}`] === c.want ? [] : [`${c.name}: helm gave ${JSON.stringify(cm.data[`c${i}`])}, expected ${JSON.stringify(c.want)}`]));
    assert.deepEqual(mismatches, []);
  });

  it('what the evaluator refuses as a Go error, helm refuses too', async function () {
    if (!helm) skipBecause(this, 'no helm on PATH or in .cache/helm');
    const cases = REFUSALS.filter((c) => c.goFails && !(c.data && Object.values(c.data).some((v) => v instanceof GoStruct)));
    assert.ok(cases.length >= 8);
    const accepted: string[] = [];
    for (const [i, c] of cases.entries()) {
      const chart = path.join(dir, `refusal-${i}`);
      mkdirSync(path.join(chart, 'templates'), { recursive: true });
      writeFileSync(path.join(chart, 'Chart.yaml'), `apiVersion: v2\nname: refusal-${i}\nversion: 0.1.0\n`);
      writeFileSync(path.join(chart, 'values.yaml'), stringify({ c: c.data ?? {} }, { version: '1.1' }));
      writeFileSync(path.join(chart, 'templates', '_case.tpl'), `{{ define "c" }}${c.src}{{ end }}`);
      writeFileSync(path.join(chart, 'templates', 'case.yaml'), 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  out: {{ include "c" .Values.c | toJson }}\n');
      try {
        await run(helm as string, ['template', 'c', chart], { timeout: 60_000 });
        accepted.push(c.name);
      } catch {
        /* refused, as expected */
      }
    }
    assert.deepEqual(accepted, []);
  });
});
