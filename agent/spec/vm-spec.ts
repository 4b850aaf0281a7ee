import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { InvalidArgument } from '../../lib/errors.js';
import { quantityBytes } from './quantity.js';
import { migrationOverridesSchema } from '../migration/config.js';

/** The pod annotation holding the VM spec (YAML or JSON). */
export const SPEC_ANNOTATION = 'vm.podvirt.io/spec';

// Names become parts of QEMU ids and block node names (`drive-<name>`, at most 31 characters), which must start with a letter.
const NAME = /^[a-z]([-a-z0-9]{0,22}[a-z0-9])?$/;
const MAC = /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/i;

const name = z.string().regex(NAME, 'must be a lowercase DNS label starting with a letter, at most 24 characters');

const bytes = (what: string) =>
  z.union([z.string(), z.number()]).transform((v, ctx) => {
    const b = quantityBytes(v);
    if (b === undefined) {
      ctx.addIssue({ code: 'custom', message: `"${v}" is not a ${what} (e.g. 512Mi, 1Gi)` });
      return z.NEVER;
    }
    return b;
  });

const disk = z.strictObject({
  name,
  /** The pod volume: a `volumeDevices` entry (type block) or a filesystem volume holding a file (type file). */
  volume: z.string().min(1),
  type: z.enum(['block', 'file']).default('block'),
  /** For type file: the image path relative to the volume's mount. */
  path: z
    .string()
    .min(1)
    .refine((p) => !p.startsWith('/') && !p.split('/').includes('..'), 'must be relative to the volume and stay inside it')
    .optional(),
  /** Image format of a file disk (block devices are raw). */
  format: z.enum(['raw', 'qcow2']).default('raw'),
  bus: z.enum(['virtio', 'scsi']).default('virtio'),
  readonly: z.boolean().default(false),
  /** Guest-visible serial (virtio-blk allows 20 bytes). */
  serial: z.string().regex(/^[A-Za-z0-9._-]{1,20}$/, 'must be 1-20 characters [A-Za-z0-9._-]').optional(),
  cache: z.enum(['none', 'writeback', 'writethrough', 'directsync', 'unsafe']).optional(),
  bootIndex: z.number().int().min(0).max(255).optional(),
});

const iface = z.strictObject({
  name,
  /** The network attachment (NetworkAttachmentDefinition name) the tap comes from; `pod` for the pod network. */
  network: z.string().min(1),
  binding: z.enum(['tap', 'passt']).default('tap'),
  mac: z.string().regex(MAC, 'must be a MAC address like 52:54:00:12:34:56').optional(),
  model: z.literal('virtio').default('virtio'),
});

const specSchema = z
  .strictObject({
    cpus: z.number().int().min(1).max(255),
    memory: bytes('memory size').refine((b) => b >= 16 * 2 ** 20, 'must be at least 16Mi'),
    accel: z.enum(['auto', 'kvm', 'tcg']).default('auto'),
    /** `q35` (resolved to the versioned type at first start) or a versioned `pc-q35-X.Y`. */
    machine: z
      .string()
      .regex(/^(q35|pc-q35-\d+\.\d+)$/, 'must be q35 or a versioned pc-q35-X.Y')
      .default('q35'),
    /** Guest CPU model; default `host` under KVM, `max` under TCG. */
    cpuModel: z.string().regex(/^[A-Za-z0-9._-]+$/).optional(),
    kernel: z.string().min(1).optional(),
    initrd: z.string().min(1).optional(),
    cmdline: z.string().optional(),
    /** Name of the disk to boot from (alternative to `disks[].bootIndex`). */
    bootDisk: z.string().optional(),
    disks: z.array(disk).default([]),
    interfaces: z.array(iface).default([]),
    isolateEmulatorThread: z.boolean().default(false),
    hugepages: z.strictObject({ pageSize: z.enum(['2Mi', '1Gi']) }).optional(),
    /** `console`: serial on a unix socket plus a log file; `none`: no serial port. */
    serial: z.enum(['console', 'none']).default('console'),
    /** Free PCIe root ports kept for hotplug. */
    hotplugPorts: z.number().int().min(0).max(16).default(4),
    /** Live-migration tuning (docs/migration.md); the keys of agent/migration/config.ts. */
    migration: migrationOverridesSchema.optional(),
  })
  .superRefine((s, ctx) => {
    const dup = (list: { name: string }[], field: string) => {
      const seen = new Set<string>();
      list.forEach((d, i) => {
        if (seen.has(d.name)) ctx.addIssue({ code: 'custom', path: [field, i, 'name'], message: `duplicate name "${d.name}"` });
        seen.add(d.name);
      });
    };
    dup(s.disks, 'disks');
    dup(s.interfaces, 'interfaces');
    s.disks.forEach((d, i) => {
      if (d.type === 'file' && d.path === undefined) ctx.addIssue({ code: 'custom', path: ['disks', i, 'path'], message: 'required for a file disk' });
      if (d.type === 'block' && d.path !== undefined) ctx.addIssue({ code: 'custom', path: ['disks', i, 'path'], message: 'only for type file' });
      if (d.type === 'block' && d.format !== 'raw') ctx.addIssue({ code: 'custom', path: ['disks', i, 'format'], message: 'block disks are raw' });
    });
    const boots = new Set<number>();
    s.disks.forEach((d, i) => {
      if (d.bootIndex === undefined) return;
      if (boots.has(d.bootIndex)) ctx.addIssue({ code: 'custom', path: ['disks', i, 'bootIndex'], message: `duplicate bootIndex ${d.bootIndex}` });
      boots.add(d.bootIndex);
    });
    if (s.bootDisk !== undefined && !s.disks.some((d) => d.name === s.bootDisk)) {
      ctx.addIssue({ code: 'custom', path: ['bootDisk'], message: `names no disk ("${s.bootDisk}")` });
    }
    if (s.bootDisk !== undefined && boots.size > 0) ctx.addIssue({ code: 'custom', path: ['bootDisk'], message: 'use bootDisk or disks[].bootIndex, not both' });
    if (s.kernel === undefined) {
      if (s.initrd !== undefined) ctx.addIssue({ code: 'custom', path: ['initrd'], message: 'needs kernel' });
      if (s.cmdline !== undefined) ctx.addIssue({ code: 'custom', path: ['cmdline'], message: 'needs kernel' });
      if (s.bootDisk === undefined && boots.size === 0) {
        ctx.addIssue({ code: 'custom', path: ['kernel'], message: 'required unless a boot disk is given (bootDisk or disks[].bootIndex)' });
      }
    }
    if (s.hugepages) {
      const page = s.hugepages.pageSize === '1Gi' ? 2 ** 30 : 2 * 2 ** 20;
      if (s.memory % page !== 0) ctx.addIssue({ code: 'custom', path: ['memory'], message: `must be a multiple of the hugepage size ${s.hugepages.pageSize}` });
    }
  });

/** The validated VM spec: defaults filled in, `memory` in bytes. */
export type VmSpec = z.output<typeof specSchema>;
export type VmDiskSpec = VmSpec['disks'][number];
export type VmInterfaceSpec = VmSpec['interfaces'][number];
/** What a user writes (before defaults; `memory` as a quantity). */
export type VmSpecInput = z.input<typeof specSchema>;

/** `spec.disks[1].name: required` from a zod issue. */
function describe(issue: z.core.$ZodIssue): string {
  let where = 'spec';
  for (const p of issue.path) where += typeof p === 'number' ? `[${p}]` : `.${String(p)}`;
  let msg = issue.message;
  if (issue.code === 'invalid_type' && /received undefined$/.test(msg)) msg = 'required';
  else if (issue.code === 'unrecognized_keys') msg = `unknown field(s) ${issue.keys.join(', ')}`;
  return `${where}: ${msg}`;
}

/** Validates a parsed spec object; throws InvalidArgument naming every bad field. */
export function validateVmSpec(input: unknown): VmSpec {
  const r = specSchema.safeParse(input);
  if (!r.success) {
    const lines = r.error.issues.map(describe);
    throw new InvalidArgument(`invalid VM spec: ${lines.join('; ')}`, { details: { issues: lines } });
  }
  return r.data;
}

/** Parses the annotation text (YAML, of which JSON is a subset) and validates it. */
export function parseVmSpec(text: string): VmSpec {
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (e) {
    throw new InvalidArgument(`invalid VM spec: not YAML or JSON: ${(e as Error).message.split('\n')[0]}`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) {
    throw new InvalidArgument('invalid VM spec: spec: must be a mapping');
  }
  return validateVmSpec(doc);
}

/** The disk the guest boots from, if any: `bootDisk`, else the lowest `bootIndex`. */
export function bootDiskName(spec: VmSpec): string | undefined {
  if (spec.bootDisk !== undefined) return spec.bootDisk;
  const withIndex = spec.disks.filter((d) => d.bootIndex !== undefined).sort((a, b) => a.bootIndex! - b.bootIndex!);
  return withIndex[0]?.name;
}
