import { readSync } from 'node:fs';
import { recordStandaloneOutcome } from './attachment-events.js';
import { CniCode, CniError } from './cni-error.js';
import { defaultHostDeps } from './host.js';
import { stderrLogger } from './logger.js';
import { MAX_CONFIG_BYTES } from './netconf.js';
import { handleCniRequest, type CniResponse } from './skel.js';
import { CURRENT_VERSION } from './versions.js';

/** Reads stdin up to one byte past the limit (an oversized config is reported by the handler). */
function readStdin(): Buffer {
  const buf = Buffer.alloc(MAX_CONFIG_BYTES + 1);
  let len = 0;
  while (len < buf.length) {
    let n: number;
    try {
      n = readSync(0, buf, len, buf.length - len, null);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EAGAIN') {
        // A non-blocking stdin with nothing yet: wait a little instead of spinning.
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 2);
        continue;
      }
      if (code === 'EOF' || code === 'EBADF') break;
      throw new CniError(CniCode.IoFailure, 'failed to read the network config from stdin', String(e));
    }
    if (n === 0) break;
    len += n;
  }
  return buf.subarray(0, len);
}

/** The plugin in-process: what the bundle (and `dist/bin/podvirt-cni.js`) runs. */
export async function runStandalone(): Promise<number> {
  const logger = stderrLogger(process.env.PODVIRT_LOG_LEVEL ?? 'warn');
  let res: CniResponse;
  try {
    const stdin = process.env.CNI_COMMAND ? readStdin() : Buffer.alloc(0);
    res = await handleCniRequest({ env: process.env, stdin }, { logger, deps: { ...defaultHostDeps, delegateVersions: new Map() } });
    try {
      // What the agent's CNI server would have recorded, so the agent finds it later.
      recordStandaloneOutcome({ env: process.env, stdin }, res);
    } catch (e) {
      logger.warn({ err: String(e) }, 'cannot record the attachment');
    }
  } catch (e) {
    const err = e instanceof CniError ? e : new CniError(CniCode.Internal, 'internal error', String(e));
    res = { exitCode: 1, stdout: JSON.stringify(err.toJSON(CURRENT_VERSION)), stderr: '' };
  }
  if (res.stderr) process.stderr.write(res.stderr);
  if (res.stdout) process.stdout.write(res.stdout);
  return res.exitCode;
}
