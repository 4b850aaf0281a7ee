import { strict as assert } from 'node:assert';
import { readFileSync, readdirSync } from 'node:fs';
import * as path from 'node:path';
import { parseAllDocuments } from 'yaml';
import { PACKAGE_VERSION, PROJECT_ROOT } from '../../lib/project-root.js';
import { CHART_DIR, chartMeta } from './render-chart.js';

/** Plain YAML files (templates are linted after rendering by the render tests). */
const YAML_FILES = [
  ...['Chart.yaml', 'values.yaml'].map((f) => path.join(CHART_DIR, f)),
  ...readdirSync(path.join(PROJECT_ROOT, 'examples'))
    .filter((f) => f.endsWith('.yaml'))
    .map((f) => path.join(PROJECT_ROOT, 'examples', f)),
];

describe('chart: YAML lint', () => {
  for (const file of YAML_FILES) {
    const rel = path.relative(PROJECT_ROOT, file);
    it(`${rel} parses strictly: no errors or warnings, unique keys, no tabs, ends with a newline`, () => {
      const text = readFileSync(file, 'utf8');
      for (const doc of parseAllDocuments(text, { version: '1.1', uniqueKeys: true, strict: true, prettyErrors: true })) {
        assert.deepEqual(doc.errors.map((e) => e.message), [], rel);
        assert.deepEqual(doc.warnings.map((e) => e.message), [], rel);
      }
      assert.ok(!/\t/.test(text), `${rel} contains a tab`);
      assert.ok(text.endsWith('\n'), `${rel} must end with a newline`);
      assert.ok(!/[ \t]+$/m.test(text), `${rel} has trailing whitespace`);
    });
  }

  it('Chart.yaml: apiVersion v2, versions in step with package.json, a kubeVersion floor', () => {
    const meta = chartMeta();
    assert.equal(meta.apiVersion, 'v2');
    assert.equal(meta.name, 'podvirt');
    assert.equal(meta.type, 'application');
    assert.match(String(meta.version), /^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$/);
    assert.equal(meta.appVersion, PACKAGE_VERSION, 'the image tag defaults to appVersion, which must be the built podvirt version');
    assert.match(String(meta.kubeVersion), /^>=1\.\d+/);
  });

  it('every template file is YAML, a partial (_*.tpl) or NOTES.txt', () => {
    for (const f of readdirSync(path.join(CHART_DIR, 'templates'))) {
      assert.ok(/\.yaml$/.test(f) || /^_.*\.tpl$/.test(f) || f === 'NOTES.txt', f);
    }
  });
});
