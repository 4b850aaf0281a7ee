import { GoStruct } from './go-template.js';

/**
 * The evaluator's table of accepted constructs with their expected output. Shared by
 * go-template.test.ts (the evaluator against these expectations) and helm.test.ts (real helm
 * against the same table, wherever helm is available).
 */
export interface EvaluatorCase {
  name: string;
  src: string;
  data?: unknown;
  defs?: string;
  want: string;
}

// Expected outputs are what Go's text/template + Sprig (Helm 3) produce for the same input.
export const CASES: EvaluatorCase[] = [
  { name: 'text passes through', src: 'a: b\n', want: 'a: b\n' },
  { name: 'field chain', src: '{{ .Values.a.b }}', data: { Values: { a: { b: 'x' } } }, want: 'x' },
  { name: 'missing map key prints <no value>', src: '[{{ .Values.nope }}]', data: { Values: {} }, want: '[<no value>]' },
  { name: 'left trim eats newlines and spaces', src: 'a\n  \n{{- "b" }}', want: 'ab' },
  { name: 'right trim eats the following whitespace', src: '{{ "a" -}}\n\n  b', want: 'ab' },
  { name: 'comment with trims', src: 'a\n{{- /* note */ -}}\nb', want: 'ab' },
  { name: 'plain comment', src: 'a{{/* x */}}b', want: 'ab' },
  { name: '-3 is a number, not a trim marker', src: '{{ trunc -3 "abcdef" }}', want: 'def' },
  { name: 'if / else if / else', src: '{{ if .a }}A{{ else if .b }}B{{ else }}C{{ end }}', data: { a: '', b: 'y' }, want: 'B' },
  { name: 'empty map, list, zero and "" are false', src: '{{ if or .m .l .z .s }}T{{ else }}F{{ end }}', data: { m: {}, l: [], z: 0, s: '' }, want: 'F' },
  { name: 'and returns the first false operand', src: '{{ and "x" 0 "y" }}', want: '0' },
  { name: 'or returns the first true operand', src: '{{ or "" "y" "z" }}', want: 'y' },
  { name: 'and with a nil-safe guard via with', src: '{{ with .a }}{{ if .b }}T{{ end }}{{ else }}F{{ end }}', data: { a: null }, want: 'F' },
  { name: 'with rebinds dot; else keeps it', src: '{{ with .a }}{{ .b }}{{ else }}none{{ end }}', data: { a: { b: 1 } }, want: '1' },
  { name: 'range over a map is in sorted key order', src: '{{ range $k, $v := .m }}{{ $k }}={{ $v }};{{ end }}', data: { m: { b: 2, a: 1, c: 3 } }, want: 'a=1;b=2;c=3;' },
  { name: 'range over a list with index', src: '{{ range $i, $v := .l }}{{ $i }}:{{ $v }} {{ end }}', data: { l: ['x', 'y'] }, want: '0:x 1:y ' },
  { name: 'range over nil runs else', src: '{{ range .l }}x{{ else }}empty{{ end }}', data: { l: null }, want: 'empty' },
  { name: '$ is the root inside range', src: '{{ range .l }}{{ $.p }}{{ . }}{{ end }}', data: { l: ['a', 'b'], p: '-' }, want: '-a-b' },
  { name: 'variables and reassignment', src: '{{ $x := "a" }}{{ if true }}{{ $x = "b" }}{{ end }}{{ $x }}', want: 'b' },
  { name: 'default on empty values', src: '{{ default "d" .a }}/{{ default "d" .b }}', data: { a: '', b: 'v' }, want: 'd/v' },
  { name: 'quote numbers like Go', src: '{{ quote .n }} {{ .n | quote }}', data: { n: 1000000 }, want: '"1e+06" "1e+06"' },
  { name: 'values numbers print as float64', src: '{{ .a }} {{ .b }} {{ .c }}', data: { a: 1500, b: 1000000, c: 0.5 }, want: '1500 1e+06 0.5' },
  { name: 'template number literals print as int', src: '{{ 1000000 }}', want: '1000000' },
  { name: 'nindent and indent', src: 'x:{{ "a: 1\\nb: 2" | nindent 2 }}\n{{ "c" | indent 4 }}', want: 'x:\n  a: 1\n  b: 2\n    c' },
  { name: 'trunc and trimSuffix', src: '{{ "abcdef-" | trunc 7 | trimSuffix "-" }}', want: 'abcdef' },
  { name: 'printf %s', src: '{{ printf "%s-%s" "a" "b" }}', want: 'a-b' },
  { name: 'contains and replace', src: '{{ contains "vm" "podvm" }} {{ "a+b" | replace "+" "_" }}', want: 'true a_b' },
  { name: 'eq on strings, several candidates', src: '{{ eq .a "x" "y" }} {{ ne .a "z" }}', data: { a: 'y' }, want: 'true true' },
  { name: 'toYaml sorts keys, no trailing newline', src: '{{ toYaml .m }}', data: { m: { b: [1, 2], a: 'x' } }, want: 'a: x\nb:\n- 1\n- 2' },
  { name: 'toYaml quotes strings YAML 1.1 reads as bools or numbers', src: '{{ toYaml .l }}', data: { l: ['yes', 'on', 'n', '0x1f', 'x'] }, want: '- "yes"\n- "on"\n- "n"\n- "0x1f"\n- x' },
  { name: 'toJson sorts keys, escapes HTML', src: '{{ toJson .m }}', data: { m: { b: '<&>', a: 1 } }, want: '{"a":1,"b":"\\u003c\\u0026\\u003e"}' },
  { name: 'include with dict', src: '{{ include "x" (dict "a" "1" "b" .v) }}', data: { v: 'V' }, defs: '{{- define "x" -}}{{ .a }}{{ .b }}{{- end }}', want: '1V' },
  { name: 'struct method with an argument', src: '{{ if .Cap.Has "a/v1" }}yes{{ end }}', data: { Cap: new GoStruct({ Has: (s: unknown) => s === 'a/v1' }) }, want: 'yes' },
  { name: 'paren sub-pipeline', src: '{{ (default "x" .a) | quote }}', data: { a: '' }, want: '"x"' },
];

export interface RefusalCase {
  name: string;
  src: string;
  data?: unknown;
  want: RegExp;
  /** Go/helm fails on it too (otherwise it is only outside the evaluator's subset). */
  goFails: boolean;
}

// Outside the subset or invalid in Go: the evaluator must refuse, not guess.
export const REFUSALS: RefusalCase[] = [
  { name: 'unknown function', src: '{{ sha256sum "x" }}', want: /function "sha256sum" is outside the supported subset/, goFails: false },
  { name: 'field of nil', src: '{{ .Values.a.b }}', data: { Values: {} }, want: /nil pointer evaluating interface \{\}\.b/, goFails: true },
  // Modern helm short-circuits `and`; helm before 3.9 fails here, so the evaluator refuses.
  { name: 'relying on and short-circuiting (helm < 3.9 evaluates every operand)', src: '{{ if and .a .a.b }}T{{ end }}', data: { a: null }, want: /nil pointer evaluating/, goFails: false },
  { name: 'missing struct field', src: '{{ .Release.Nme }}', data: { Release: new GoStruct({ Name: 'r' }) }, want: /can't evaluate field Nme/, goFails: true },
  { name: 'numeric comparison (int vs float64 in Go)', src: '{{ eq .n 1 }}', data: { n: 1 }, want: /numeric comparison is outside the subset/, goFails: true },
  { name: 'string vs bool comparison', src: '{{ eq "a" true }}', want: /incompatible types/, goFails: true },
  { name: 'printing a map', src: '{{ .m }}', data: { m: { a: 1 } }, want: /printing a map directly/, goFails: false },
  { name: 'template action', src: '{{ template "x" . }}', want: /outside the supported subset/, goFails: false },
  { name: 'unclosed if', src: '{{ if .a }}x', want: /if without \{\{end\}\}/, goFails: true },
  { name: 'stray end', src: 'x{{ end }}', want: /unexpected \{\{end\}\}/, goFails: true },
  { name: 'argument to a non-function', src: '{{ .a "x" }}', data: { a: 'v' }, want: /can't give argument to non-function/, goFails: true },
  { name: 'include of an undefined template', src: '{{ include "nope" . }}', want: /undefined template "nope"/, goFails: true },
  { name: 'unterminated string', src: '{{ "abc }}', want: /unterminated string/, goFails: true },
];
