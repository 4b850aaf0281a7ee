import { strict as assert } from 'node:assert';
import { CASES as cases } from './go-template-cases.js';
import { GoStruct, TemplateSet, TemplateError, formatGoFloat, goJson, goYaml } from './go-template.js';

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

  // Outside the subset or invalid in Go: the evaluator must refuse, not guess.
  const refusals: { name: string; src: string; data?: unknown; want: RegExp }[] = [
    { name: 'unknown function', src: '{{ sha256sum "x" }}', want: /function "sha256sum" is outside the supported subset/ },
    { name: 'field of nil', src: '{{ .Values.a.b }}', data: { Values: {} }, want: /nil pointer evaluating interface \{\}\.b/ },
    { name: 'relying on and short-circuiting (helm < 3.9 evaluates every operand)', src: '{{ if and .a .a.b }}T{{ end }}', data: { a: null }, want: /nil pointer evaluating/ },
    { name: 'missing struct field', src: '{{ .Release.Nme }}', data: { Release: new GoStruct({ Name: 'r' }) }, want: /can't evaluate field Nme/ },
    { name: 'numeric comparison (int vs float64 in Go)', src: '{{ eq .n 1 }}', data: { n: 1 }, want: /numeric comparison is outside the subset/ },
    { name: 'string vs bool comparison', src: '{{ eq "a" true }}', want: /incompatible types/ },
    { name: 'printing a map', src: '{{ .m }}', data: { m: { a: 1 } }, want: /printing a map directly/ },
    { name: 'template action', src: '{{ template "x" . }}', want: /outside the supported subset/ },
    { name: 'unclosed if', src: '{{ if .a }}x', want: /if without \{\{end\}\}/ },
    { name: 'stray end', src: 'x{{ end }}', want: /unexpected \{\{end\}\}/ },
    { name: 'argument to a non-function', src: '{{ .a "x" }}', data: { a: 'v' }, want: /can't give argument to non-function/ },
    { name: 'include of an undefined template', src: '{{ include "nope" . }}', want: /undefined template "nope"/ },
    { name: 'unterminated string', src: '{{ "abc }}', want: /unterminated string/ },
  ];
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
