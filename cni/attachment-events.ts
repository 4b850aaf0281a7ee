/**
 * What the node agent needs to know about each tap-mode attachment (its guest DHCP joins these
 * with the VMs it runs), taken from a request and its successful answer. Whoever handles the
 * request records it: the CNI server (which also hands the event to the agent in-process), or the
 * bundle when no server listens. The records are files, one per (container ID, ifname), so a
 * restarted agent rebuilds the same table; they live next to the server's socket, under /run, and
 * vanish on reboot together with the namespaces they describe.
 *
 * Everything here works on the request and the printed result, so the verbs' code stays unaware
 * of it and the wire protocol is unchanged.
 */
import { mkdirSync, readdirSync, readFileSync, renameSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import * as path from 'node:path';
import { parseCniArgs } from './cni-args.js';
import { ipamKeyOf, ipamScopeOf } from './ipam-owner.js';
import { decodeConfig, parseNetConf, type IpamScope } from './netconf.js';
import { parseResult, type CniDns, type CniIp, type CniRoute } from './result.js';

export const ATTACHMENT_DIR_NAME = 'cni-attachments';
const DEFAULT_SOCKET = '/run/podvirt/cni.sock';

/** One tap-mode attachment as ADD made it. */
export interface TapAttachment {
  containerId: string;
  /** The tap's name in the pod netns (`CNI_IFNAME`). */
  ifname: string;
  /** `CNI_NETNS` as given; the VM side matches it by `netnsId`, the path may differ (bind mount vs /proc/<pid>/ns/net). */
  netns: string;
  /** Inode and device of the netns at ADD time: the identity of the namespace. */
  netnsId: { ino: number; dev: number } | undefined;
  /** The network's name (the CNI config's `name`). */
  network: string;
  /** From `CNI_ARGS` `K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_UID` when the runtime passed them. */
  pod: { namespace: string; name: string; uid?: string } | undefined;
  /** The host bridge the tap is connected to. */
  bridge: string;
  /** The tap's MAC (may differ from the guest NIC's, which the VM's topology fixes). */
  mac: string | undefined;
  mtu: number | undefined;
  migrationTarget: boolean;
  /** The guest's addresses and the IPAM routes/DNS, as the result reported them. */
  ips: CniIp[];
  routes: CniRoute[];
  dns: CniDns | undefined;
  /**
   * The IPAM owner key the address is held under, the plugin's state dir (where the key's record
   * is: cni/ipam-owner.ts) and the IPAM's scope; absent without a key (and in older records). The
   * agent marks the hold after a migration from these.
   */
  ipamKey?: string;
  stateDir?: string;
  ipamScope?: IpamScope;
  addedAt: string;
}

export type AttachmentEvent =
  | { kind: 'add'; attachment: TapAttachment }
  | { kind: 'del'; containerId: string; ifname: string; network: string }
  /** GC (CNI 1.1): the network's attachments other than `valid` are gone. */
  | { kind: 'gc'; network: string; valid: Array<{ containerId: string; ifname: string }> };

type Env = Record<string, string | undefined>;

/**
 * The attachment event a handled request amounts to: a successful tap-mode ADD, any successful
 * DEL (DEL carries no mode worth trusting: a record, if any, goes) or GC. Undefined for the rest.
 * `statNetns` is injectable for tests; by default the netns is stat()ed now, while it surely exists.
 */
export function attachmentEventOf(
  req: { env: Env; stdin: Buffer },
  res: { exitCode: number; stdout: string },
  statNetns: (p: string) => { ino: number; dev: number } | undefined = statId,
): AttachmentEvent | undefined {
  const verb = req.env.CNI_COMMAND;
  if (res.exitCode !== 0) return undefined;
  if (verb === 'GC') {
    const conf = parseNetConf(decodeConfig(req.stdin));
    if (!conf.validAttachments) return undefined;
    return { kind: 'gc', network: conf.name, valid: conf.validAttachments.map((a) => ({ containerId: a.containerID, ifname: a.ifname })) };
  }
  if (verb !== 'ADD' && verb !== 'DEL') return undefined;
  const containerId = req.env.CNI_CONTAINERID ?? '';
  const ifname = req.env.CNI_IFNAME ?? '';
  if (!containerId || !ifname) return undefined;
  const conf = parseNetConf(decodeConfig(req.stdin));
  if (verb === 'DEL') return { kind: 'del', containerId, ifname, network: conf.name };
  if (conf.mode !== 'tap') return undefined;
  const result = parseResult(JSON.parse(res.stdout));
  const tap = result.interfaces?.findIndex((i) => i.name === ifname && i.sandbox !== undefined) ?? -1;
  const args = parseCniArgs(req.env.CNI_ARGS);
  const podNs = args.get('K8S_POD_NAMESPACE');
  const podName = args.get('K8S_POD_NAME');
  const podUid = args.get('K8S_POD_UID');
  const netns = req.env.CNI_NETNS ?? '';
  const fromArgs = args.get('MIGRATION_TARGET');
  const ipamKey = ipamKeyOf(conf);
  return {
    kind: 'add',
    attachment: {
      containerId,
      ifname,
      netns,
      netnsId: netns ? statNetns(netns) : undefined,
      network: conf.name,
      pod: podNs && podName ? { namespace: podNs, name: podName, ...(podUid ? { uid: podUid } : {}) } : undefined,
      bridge: conf.bridge,
      mac: tap >= 0 ? result.interfaces![tap]!.mac : undefined,
      mtu: conf.mtu,
      migrationTarget:
        conf.runtimeConfig.migrationTarget ?? conf.args.migrationTarget ?? (fromArgs !== undefined ? /^(1|true)$/i.test(fromArgs) : undefined) ?? conf.migrationTarget,
      // An IPAM result without interface indexes means "the tap" here (the plugin reports only it).
      ips: (result.ips ?? []).filter((i) => i.interface === undefined || i.interface === tap).map((i) => ({ address: i.address, ...(i.gateway ? { gateway: i.gateway } : {}) })),
      routes: result.routes ?? [],
      dns: result.dns && Object.keys(result.dns).length ? result.dns : undefined,
      ...(ipamKey !== undefined ? { ipamKey, stateDir: conf.stateDir, ipamScope: ipamScopeOf(conf) } : {}),
      addedAt: new Date().toISOString(),
    },
  };
}

function statId(p: string): { ino: number; dev: number } | undefined {
  try {
    const s = statSync(p);
    return { ino: s.ino, dev: s.dev };
  } catch {
    return undefined;
  }
}

/** Where attachments are recorded for a CNI server socket: beside it. */
export function attachmentDirFor(socketPath: string): string {
  return path.join(path.dirname(socketPath), ATTACHMENT_DIR_NAME);
}

/**
 * The socket the shim would have used for this request (config `agentSocket`, else
 * `$PODVIRT_CNI_SOCKET`, else the default): the bundle records beside it, where the agent looks.
 */
export function socketForRequest(env: Env, stdin: Buffer): string {
  try {
    const raw = decodeConfig(stdin);
    for (const [k, v] of Object.entries(raw)) if (k.toLowerCase() === 'agentsocket' && typeof v === 'string' && v) return v;
  } catch {
    /* no usable config: the environment decides */
  }
  return env.PODVIRT_CNI_SOCKET || DEFAULT_SOCKET;
}

const fileOf = (dir: string, containerId: string, ifname: string): string =>
  // Neither a container ID nor an interface name can hold ':', so the pair maps to one name.
  path.join(dir, `${containerId}:${ifname}.json`);

/**
 * Applies an event to the record directory: ADD writes (temp file + rename, so a reader sees a
 * whole record or none), DEL removes. No fsync: the directory is on /run, which does not outlive
 * the namespaces either.
 */
export function writeAttachmentEvent(dir: string, ev: AttachmentEvent): void {
  if (ev.kind === 'gc') {
    for (const a of readAttachments(dir)) if (gcRemoves(ev, a)) forgetAttachment(dir, a);
    return;
  }
  if (ev.kind === 'del') {
    try {
      unlinkSync(fileOf(dir, ev.containerId, ev.ifname));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    return;
  }
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const file = fileOf(dir, ev.attachment.containerId, ev.attachment.ifname);
  const tmp = `${file}.${randomBytes(4).toString('hex')}.tmp`;
  writeFileSync(tmp, JSON.stringify(ev.attachment) + '\n', { mode: 0o600 });
  renameSync(tmp, file);
}

/** Every recorded attachment; unreadable or half-written files are skipped. */
export function readAttachments(dir: string): TapAttachment[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  const out: TapAttachment[] = [];
  for (const n of names) {
    if (!n.endsWith('.json')) continue;
    try {
      const a = JSON.parse(readFileSync(path.join(dir, n), 'utf8')) as TapAttachment;
      if (typeof a.containerId === 'string' && typeof a.ifname === 'string' && typeof a.bridge === 'string' && Array.isArray(a.ips)) out.push(a);
    } catch {
      /* a stray file */
    }
  }
  return out;
}

/** Whether a GC event ends this attachment: same network, not among the valid ones. */
export function gcRemoves(ev: Extract<AttachmentEvent, { kind: 'gc' }>, a: Pick<TapAttachment, 'network' | 'containerId' | 'ifname'>): boolean {
  return a.network === ev.network && !ev.valid.some((v) => v.containerId === a.containerId && v.ifname === a.ifname);
}

/** Removes the record of an attachment (the agent prunes records whose netns is gone). */
export function forgetAttachment(dir: string, a: Pick<TapAttachment, 'containerId' | 'ifname'>): void {
  writeAttachmentEvent(dir, { kind: 'del', containerId: a.containerId, ifname: a.ifname, network: '' });
}

/**
 * The bundle's part: record the outcome beside the socket the shim tried, creating the directory
 * if needed. After a reboot the kubelet may set up VM pods before the agent runs again; the
 * agent finds their attachments here when it starts.
 */
export function recordStandaloneOutcome(req: { env: Env; stdin: Buffer }, res: { exitCode: number; stdout: string }): void {
  const ev = attachmentEventOf(req, res);
  if (ev) writeAttachmentEvent(attachmentDirFor(socketForRequest(req.env, req.stdin)), ev);
}
