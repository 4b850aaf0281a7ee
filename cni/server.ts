/**
 * The long-running CNI server behind the shim. `podvirt cni-server` runs it alone; the node
 * agent hosts it in-process. Requests are independent and handled concurrently (the runtime
 * serialises per container; different netns proceed in parallel).
 */
import { chmodSync, mkdirSync, statSync, unlinkSync } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { AlreadyExists } from '../lib/errors.js';
import { attachmentDirFor, attachmentEventOf, writeAttachmentEvent, type AttachmentEvent } from './attachment-events.js';
import { PROJECT_ROOT } from '../lib/project-root.js';
import { CniCode, CniError } from './cni-error.js';
import type { CniDeps } from './context.js';
import { defaultHostDeps } from './host.js';
import type { CniLogger } from './logger.js';
import { handleCniRequest } from './skel.js';
import { CURRENT_VERSION } from './versions.js';
import { WarmPool } from './warm-pool.js';
import { encodeResponse, RequestDecoder } from './wire.js';

export const DEFAULT_CNI_SOCKET = '/run/podvirt/cni.sock';

export interface CniServerOptions {
  socketPath: string;
  logger: CniLogger;
  /** Host access; defaults to the real `ip`/`tc` and /sys. */
  deps?: Partial<CniDeps>;
  /** A request that has not arrived completely within this time is dropped. */
  readTimeoutMs?: number;
  /**
   * Directory with podvirt-netns-park.so and podvirt-exec-park for the warm process pool
   * (cni/warm-pool.ts). Defaults to dist/cni of this package; null disables the pool.
   */
  helperDir?: string | null;
  /**
   * Each successful tap-mode ADD, DEL and GC, after its record is written and before
   * the answer goes back (the node agent's guest DHCP joins these with its VMs). Must not throw.
   */
  onAttachment?: (ev: AttachmentEvent) => void;
  /** Where attachment records are kept (cni/attachment-events.ts); default `<socket dir>/cni-attachments`, null: none. */
  attachmentDir?: string | null;
}

export interface CniServer {
  /** Stops accepting, waits for requests in flight, removes the socket. */
  stop(): Promise<void>;
}

function probe(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(socketPath);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

/** Listens on `socketPath` (mode 0600, parent created 0700 if missing); a stale socket is replaced, a live one is an error. */
export async function startCniServer(opts: CniServerOptions): Promise<CniServer> {
  const { socketPath, logger } = opts;
  const helperDir = opts.helperDir === undefined ? path.join(PROJECT_ROOT, 'dist/cni') : opts.helperDir;
  const warm = helperDir ? new WarmPool({ parkLib: path.join(helperDir, 'podvirt-netns-park.so'), execPark: path.join(helperDir, 'podvirt-exec-park') }) : undefined;
  const pool = warm?.enabled ? warm : undefined;
  const deps: CniDeps = { ...defaultHostDeps, delegateVersions: new Map(), ...(pool ? { pool } : {}), ...opts.deps };
  mkdirSync(path.dirname(socketPath), { recursive: true, mode: 0o700 });
  let exists = false;
  try {
    exists = statSync(socketPath).isSocket();
  } catch {
    /* absent */
  }
  if (exists) {
    if (await probe(socketPath)) throw new AlreadyExists(`a CNI server already listens on ${socketPath}`);
    unlinkSync(socketPath);
  }
  const inFlight = new Set<Promise<void>>();
  const sockets = new Set<net.Socket>();
  const baseEnv = { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin' };
  const attachmentDir = opts.attachmentDir === undefined ? attachmentDirFor(socketPath) : opts.attachmentDir;
  // Reporting an attachment never changes the answer the runtime gets: the network is made either way.
  const noteAttachment = (req: { env: Record<string, string | undefined>; stdin: Buffer }, res: { exitCode: number; stdout: string }): void => {
    if (!attachmentDir && !opts.onAttachment) return;
    try {
      const ev = attachmentEventOf(req, res);
      if (!ev) return;
      if (attachmentDir) writeAttachmentEvent(attachmentDir, ev);
      opts.onAttachment?.(ev);
    } catch (e) {
      logger.warn({ err: String(e), containerId: req.env.CNI_CONTAINERID }, 'cannot record the attachment');
    }
  };

  // allowHalfOpen: the shim half-closes after its request and reads the answer afterwards.
  const server = net.createServer({ allowHalfOpen: true }, (sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.setTimeout(opts.readTimeoutMs ?? 60_000, () => sock.destroy());
    const dec = new RequestDecoder();
    sock.on('data', (b: Buffer) => dec.push(b));
    sock.on('error', () => undefined);
    sock.on('end', () => {
      sock.setTimeout(0);
      pool?.busy();
      const req = dec.finish();
      const work = (async () => {
        let bytes: Buffer;
        if (!req) {
          const err = new CniError(CniCode.DecodingFailure, 'malformed request from the shim', dec.error ?? '');
          bytes = encodeResponse(1, JSON.stringify(err.toJSON(CURRENT_VERSION)), '');
        } else {
          const started = process.hrtime.bigint();
          const res = await handleCniRequest(req, { logger, deps, baseEnv });
          logger.debug(
            { command: req.env.CNI_COMMAND, containerId: req.env.CNI_CONTAINERID, exitCode: res.exitCode, ms: Number(process.hrtime.bigint() - started) / 1e6 },
            'request',
          );
          noteAttachment(req, res);
          bytes = encodeResponse(res.exitCode, res.stdout, res.stderr);
        }
        if (!sock.destroyed) sock.end(bytes);
      })().catch((e: unknown) => {
        logger.error({ err: String(e) }, 'request failed');
        sock.destroy();
      });
      inFlight.add(work);
      void work.finally(() => {
        inFlight.delete(work);
        if (inFlight.size === 0) pool?.idleSoon();
      });
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => {
      server.off('error', reject);
      resolve();
    });
  });
  chmodSync(socketPath, 0o600);
  pool?.start();
  logger.info({ socket: socketPath, warmPool: pool !== undefined }, 'CNI server listening');
  return {
    async stop() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      await Promise.allSettled([...inFlight]);
      pool?.stop();
      for (const s of sockets) s.destroy();
      await closed;
      try {
        unlinkSync(socketPath);
      } catch {
        /* already gone */
      }
    },
  };
}
