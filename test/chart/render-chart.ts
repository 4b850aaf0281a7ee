/**
 * Renders charts/podvirt the way `helm template` does, within the template subset that
 * go-template.ts evaluates: coalesce user values over values.yaml (maps merge, lists replace,
 * null deletes), validate the result against values.schema.json, render every template file
 * (files starting with "_" only contribute definitions), split the output into YAML documents
 * parsed with YAML 1.1 rules as Helm's sigs.k8s.io/yaml does, and render NOTES.txt apart.
 */
import { readFileSync, readdirSync } from 'node:fs';
import * as path from 'node:path';
import { Ajv } from 'ajv';
import type { ErrorObject, ValidateFunction } from 'ajv';
import { parse, parseAllDocuments } from 'yaml';
import { PROJECT_ROOT } from '../../lib/project-root.js';
import { GoStruct, TemplateSet } from './go-template.js';

export const CHART_DIR = path.join(PROJECT_ROOT, 'charts', 'podvirt');

export type Values = Record<string, unknown>;
export interface Manifest {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [k: string]: unknown;
}
export interface Rendered {
  /** template file -> documents it produced */
  byFile: Map<string, Manifest[]>;
  all: Manifest[];
  notes: string;
  values: Values;
}
export interface RenderOptions {
  values?: Values;
  releaseName?: string;
  namespace?: string;
  /** Extra API versions the "cluster" serves, as for `helm template --api-versions`. */
  apiVersions?: string[];
}

export class SchemaError extends Error {
  constructor(readonly messages: string[]) {
    super(`values don't meet the specifications of the schema:\n${messages.map((m) => `- ${m}`).join('\n')}`);
  }
}

let validator: ValidateFunction | undefined;
export function valuesValidator(): ValidateFunction {
  if (validator) return validator;
  const schema = JSON.parse(readFileSync(path.join(CHART_DIR, 'values.schema.json'), 'utf8')) as object;
  validator = new Ajv({ allErrors: true, strict: true }).compile(schema);
  return validator;
}

/** One readable line per schema violation: the values path, what is wrong, the allowed values. */
export function formatSchemaErrors(errors: ErrorObject[] | null | undefined): string[] {
  const out: string[] = [];
  for (const e of errors ?? []) {
    const at = e.instancePath ? e.instancePath.slice(1).replace(/\//g, '.') : '(root)';
    let msg = `${at}: ${e.message ?? 'is invalid'}`;
    if (e.keyword === 'enum') msg += ` (${(e.params as { allowedValues: unknown[] }).allowedValues.map((v) => JSON.stringify(v)).join(', ')})`;
    if (e.keyword === 'additionalProperties') msg += `: ${JSON.stringify((e.params as { additionalProperty: string }).additionalProperty)}`;
    if (e.keyword === 'propertyNames') msg += `: ${JSON.stringify((e.params as { propertyName: string }).propertyName)}`;
    if (!out.includes(msg)) out.push(msg);
  }
  return out;
}

export function validateValues(values: Values): string[] {
  const v = valuesValidator();
  return v(values) ? [] : formatSchemaErrors(v.errors);
}

export function loadDefaultValues(): Values {
  return parse(readFileSync(path.join(CHART_DIR, 'values.yaml'), 'utf8'), { version: '1.1' }) as Values;
}

function isPlainMap(v: unknown): v is Values {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Helm's coalescing of user values over chart defaults. */
export function coalesce(defaults: Values, user: Values): Values {
  const out: Values = structuredClone(defaults);
  for (const [k, v] of Object.entries(user)) {
    if (v === null) delete out[k];
    else if (isPlainMap(v) && isPlainMap(out[k])) out[k] = coalesce(out[k] as Values, v);
    else out[k] = structuredClone(v);
  }
  return out;
}

interface ChartFiles {
  meta: Record<string, unknown>;
  templates: { name: string; src: string }[];
}

let chartFiles: ChartFiles | undefined;
function loadChart(): ChartFiles {
  if (!chartFiles) {
    const meta = parse(readFileSync(path.join(CHART_DIR, 'Chart.yaml'), 'utf8'), { version: '1.1' }) as Record<string, unknown>;
    const dir = path.join(CHART_DIR, 'templates');
    const templates = readdirSync(dir)
      .sort()
      .map((f) => ({ name: `podvirt/templates/${f}`, src: readFileSync(path.join(dir, f), 'utf8') }));
    chartFiles = { meta, templates };
  }
  return chartFiles;
}

export function chartMeta(): Record<string, unknown> {
  return loadChart().meta;
}

export function render(opts: RenderOptions = {}): Rendered {
  const values = coalesce(loadDefaultValues(), opts.values ?? {});
  const problems = validateValues(values);
  if (problems.length > 0) throw new SchemaError(problems);

  const { meta, templates } = loadChart();
  const set = new TemplateSet();
  for (const t of templates) set.add(t.name, t.src);

  const apiVersions = new Set(opts.apiVersions ?? []);
  const top = (name: string): Record<string, unknown> => ({
    Values: values,
    Release: new GoStruct({
      Name: opts.releaseName ?? 'podvirt',
      Namespace: opts.namespace ?? 'podvirt',
      Service: 'Helm',
      IsInstall: true,
      IsUpgrade: false,
      Revision: 1n,
    }),
    Chart: new GoStruct({
      Name: meta.name,
      Version: meta.version,
      AppVersion: meta.appVersion,
      Description: meta.description,
      KubeVersion: meta.kubeVersion,
      Type: meta.type,
    }),
    Capabilities: new GoStruct({
      APIVersions: new GoStruct({ Has: (v: unknown) => typeof v === 'string' && apiVersions.has(v) }),
    }),
    Template: new GoStruct({ Name: name, BasePath: 'podvirt/templates' }),
  });

  const byFile = new Map<string, Manifest[]>();
  const all: Manifest[] = [];
  let notes = '';
  for (const t of templates) {
    const base = path.basename(t.name);
    if (base.startsWith('_')) continue;
    const out = set.render(t.name, top(t.name)).replace(/<no value>/g, '');
    if (base === 'NOTES.txt') {
      notes = out;
      continue;
    }
    const docs: Manifest[] = [];
    for (const doc of parseAllDocuments(out, { version: '1.1', uniqueKeys: true })) {
      if (doc.errors.length > 0) throw new Error(`${t.name}: rendered YAML does not parse: ${doc.errors[0]?.message}\n${out}`);
      const js = doc.toJS() as unknown;
      if (js === null || js === undefined) continue;
      if (!isPlainMap(js)) throw new Error(`${t.name}: a rendered document is not a mapping`);
      docs.push(js as unknown as Manifest);
    }
    byFile.set(base, docs);
    all.push(...docs);
  }
  return { byFile, all, notes, values };
}
