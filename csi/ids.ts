import { randomBytes } from 'node:crypto';
import { InvalidArgument } from '../lib/errors.js';

/** The CSI driver name (`GetPluginInfo.name`) and topology key, fixed by cli.md §3. */
export const DRIVER_NAME = 'csi.podvirt.io';
export const TOPOLOGY_KEY = 'topology.csi.podvirt.io/node';

/**
 * Volume and snapshot IDs carry the node that owns them (`vol-<hex>@<node>`), so a clone or
 * restore whose source lives on another node is recognised at once and refused with a clear
 * message instead of looking like a missing source (node-local storage cannot reach it).
 */
export type IdKind = 'vol' | 'snap';

const NODE_ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;
const OWN_ID_RE = /^(vol|snap)-([0-9a-f]{16})@([A-Za-z0-9][A-Za-z0-9._-]{0,99})$/;

export function validateNodeId(nodeId: string): string {
  if (!NODE_ID_RE.test(nodeId)) {
    throw new InvalidArgument(`node id "${nodeId}" must be 1-100 characters of [A-Za-z0-9._-] starting with a letter or digit`);
  }
  return nodeId;
}

export function newId(kind: IdKind, nodeId: string): string {
  return `${kind}-${randomBytes(8).toString('hex')}@${nodeId}`;
}

export interface ParsedId {
  kind: IdKind;
  hex: string;
  node: string;
}

/** Parses one of our IDs; undefined for anything else (such an ID simply does not exist here). */
export function parseId(id: string): ParsedId | undefined {
  const m = OWN_ID_RE.exec(id);
  if (!m) return undefined;
  return { kind: m[1] as IdKind, hex: m[2]!, node: m[3]! };
}

// C0 controls except TAB/LF/CR, DEL and C1 controls: the spec forbids them in names.
// eslint-disable-next-line no-control-regex
const FORBIDDEN_CHARS = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]/;

/**
 * Checks a required ID or name field: present, at most 128 bytes (the spec's string limit),
 * no control characters, and no `/` or `..` (podvirt never lets a client-supplied string near a
 * path, but such values are refused outright so no later change can make them dangerous).
 */
export function requireIdent(field: string, value: string | undefined | null): string {
  if (value === undefined || value === null || value === '') throw new InvalidArgument(`${field} is required`);
  if (Buffer.byteLength(value, 'utf8') > 128) throw new InvalidArgument(`${field} is longer than 128 bytes`);
  if (FORBIDDEN_CHARS.test(value)) throw new InvalidArgument(`${field} contains control characters`);
  if (value.includes('/') || value.includes('..')) throw new InvalidArgument(`${field} "${value}" must not contain "/" or ".."`);
  return value;
}

/** Checks a required absolute host path field (staging or target path). */
export function requirePath(field: string, value: string | undefined | null): string {
  if (value === undefined || value === null || value === '') throw new InvalidArgument(`${field} is required`);
  if (!value.startsWith('/')) throw new InvalidArgument(`${field} "${value}" must be an absolute path`);
  if (value.includes('\0')) throw new InvalidArgument(`${field} contains a NUL byte`);
  if (value.split('/').includes('..')) throw new InvalidArgument(`${field} "${value}" must not contain ".."`);
  if (Buffer.byteLength(value, 'utf8') > 4096) throw new InvalidArgument(`${field} is longer than PATH_MAX`);
  return value.length > 1 ? value.replace(/\/+$/, '') : value;
}
