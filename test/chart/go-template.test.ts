import { strict as assert } from 'node:assert';
import { CASES as cases, REFUSALS as refusals } from './go-template-cases.js';
import { TemplateSet, TemplateError, formatGoFloat, goJson, goYaml } from './go-template.js';

/** Renders one template source with data, as a file of its own. */
function run(src: string, data: unknown = {}, defs = ''): string {
  const set = new TemplateSet();
  if (defs) set.add('defs.tpl', defs);
  set.add('t.yaml', src);
  return set.render('t.yaml', data);
}

describe('chart tooling: Go template subset evaluator', () => {
  for (const tc of cases) {
    it(tc.name, () => {
      assert.equal(run(tc.src, tc.data ?? {}, tc.defs ?? ''), tc.want);
    });
  }

  for (const tc of refusals) {
    it(`refuses: ${tc.name}`, () => {
      assert.throws(() => run(tc.src, tc.data ?? {}), (e: unknown) => e instanceof TemplateError && tc.want.test(e.message));
    });
  }

  it('errors name the template file and line', () => {
    assert.throws(() => run('a\nb\n{{ nosuch }}'), /t\.yaml:3: /);
  });

  it('Go float formatting at the boundaries', () => {
    assert.deepEqual(
      [1, 100000, 999999, 1e6, 1234567, 0.0001, 0.00001, -2.5e7].map(formatGoFloat),
      ['1', '100000', '999999', '1e+06', '1.234567e+06', '0.0001', '1e-05', '-2.5e+07'],
    );
  });

  it('goYaml and goJson round-trip through a YAML parser to the same data', async () => {
    const { parse } = await import('yaml');
    const data = { z: { y: ['a', { b: true }], n: null }, a: 'x: y', num: 1500 };
    assert.deepEqual(parse(goYaml(data)), data);
    assert.deepEqual(JSON.parse(goJson(data)), data);
  });
});
