/**
 * The `--config` file: KubeVirt's key names (`maxDevices`, `deviceNodes`, `pciHostDevices`,
 * `mediatedDevices`), YAML or JSON, validated strictly so a typo is an error that names the key.
 */
import { promises as fs } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { InvalidArgument, errorMessage, sysErrorCode } from '../lib/errors.js';
import {
  DEFAULT_MAX_DEVICES,
  DEVICE_NODE_NAMES,
  DEVICE_NODE_RESOURCES,
  extendedResourceNameProblem,
  type DeviceNodeName,
} from './resources.js';

const resourceName = z.string().superRefine((v, ctx) => {
  const problem = extendedResourceNameProblem(v);
  if (problem) ctx.addIssue({ code: 'custom', message: `invalid resource name "${v}": ${problem}` });
});

const pciHostDevice = z.strictObject({
  pciVendorSelector: z
    .string()
    .regex(/^[0-9A-Fa-f]{4}:[0-9A-Fa-f]{4}$/, { message: 'must be "VVVV:DDDD" (hex vendor and device IDs)' }),
  resourceName,
  /** KubeVirt's key: another plugin serves this resource, podvirt skips it. */
  externalResourceProvider: z.boolean().optional(),
});

const mediatedDevice = z.strictObject({
  mdevNameSelector: z.string().min(1, { message: 'must not be empty' }),
  resourceName,
  externalResourceProvider: z.boolean().optional(),
});

const schema = z
  .strictObject({
    maxDevices: z.number().int().min(1).max(100_000).optional(),
    deviceNodes: z.array(z.enum(DEVICE_NODE_NAMES)).optional(),
    pciHostDevices: z.array(pciHostDevice).optional(),
    mediatedDevices: z.array(mediatedDevice).optional(),
  })
  .superRefine((c, ctx) => {
    // One resource name has one meaning: several selectors may feed one PCI pool, but a name
    // cannot be both PCI and mdev, nor shadow a device-node resource.
    const kindOf = new Map<string, string>(Object.values(DEVICE_NODE_RESOURCES).map((r) => [r.resourceName, 'deviceNodes']));
    const check = (key: 'pciHostDevices' | 'mediatedDevices', list: Array<{ resourceName: string }> | undefined) =>
      list?.forEach((e, i) => {
        const seen = kindOf.get(e.resourceName);
        if (seen !== undefined && seen !== key) {
          ctx.addIssue({
            code: 'custom',
            path: [key, i, 'resourceName'],
            message: `resource name "${e.resourceName}" is already used by ${seen}`,
          });
        }
        kindOf.set(e.resourceName, key);
      });
    check('pciHostDevices', c.pciHostDevices);
    check('mediatedDevices', c.mediatedDevices);
  });

export type RawConfig = z.infer<typeof schema>;

/** The effective configuration, defaults applied. */
export interface PluginConfig {
  maxDevices: number;
  /** undefined = not set: serve every device node that exists (see docs/device-plugin.md). */
  deviceNodes: DeviceNodeName[] | undefined;
  pciHostDevices: Array<{ pciVendorSelector: string; resourceName: string }>;
  mediatedDevices: Array<{ mdevNameSelector: string; resourceName: string }>;
}

export const DEFAULT_CONFIG: PluginConfig = {
  maxDevices: DEFAULT_MAX_DEVICES,
  deviceNodes: undefined,
  pciHostDevices: [],
  mediatedDevices: [],
};

function formatPath(path: ReadonlyArray<PropertyKey>): string {
  let out = '';
  for (const p of path) out += typeof p === 'number' ? `[${p}]` : `${out ? '.' : ''}${String(p)}`;
  return out || '(top level)';
}

/** Validates parsed config data; the error names every offending key (`pciHostDevices[0].resourceName: ...`). */
export function validateConfig(data: unknown, source = 'config'): PluginConfig {
  const r = schema.safeParse(data ?? {});
  if (!r.success) {
    const issues = r.error.issues.map((i) => {
      const keys = i.code === 'unrecognized_keys' ? i.keys.map((k) => formatPath([...i.path, k])).join(', ') : '';
      return keys ? `${keys}: unknown key` : `${formatPath(i.path)}: ${i.message}`;
    });
    throw new InvalidArgument(`${source}: ${issues.join('; ')}`);
  }
  const c = r.data;
  return {
    maxDevices: c.maxDevices ?? DEFAULT_MAX_DEVICES,
    deviceNodes: c.deviceNodes ? [...new Set(c.deviceNodes)] : undefined,
    pciHostDevices: (c.pciHostDevices ?? [])
      .filter((e) => !e.externalResourceProvider)
      .map((e) => ({ pciVendorSelector: e.pciVendorSelector.toUpperCase(), resourceName: e.resourceName })),
    mediatedDevices: (c.mediatedDevices ?? [])
      .filter((e) => !e.externalResourceProvider)
      .map((e) => ({ mdevNameSelector: e.mdevNameSelector, resourceName: e.resourceName })),
  };
}

/** Parses YAML or JSON text (JSON is YAML) and validates it. */
export function parseConfig(text: string, source = 'config'): PluginConfig {
  let data: unknown;
  try {
    data = parseYaml(text, { version: '1.1' });
  } catch (e) {
    throw new InvalidArgument(`${source}: not valid YAML or JSON: ${errorMessage(e)}`);
  }
  if (data !== null && data !== undefined && (typeof data !== 'object' || Array.isArray(data))) {
    throw new InvalidArgument(`${source}: (top level): expected a mapping of keys`);
  }
  return validateConfig(data, source);
}

export async function loadConfigFile(file: string): Promise<PluginConfig> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (e) {
    if (sysErrorCode(e) === 'ENOENT') throw new InvalidArgument(`config ${file}: file does not exist`);
    throw new InvalidArgument(`config ${file}: ${errorMessage(e)}`);
  }
  return parseConfig(text, `config ${file}`);
}
