import * as net from 'node:net';
import { FailedPrecondition, Unavailable, errorMessage } from '../lib/errors.js';

/**
 * A one-shot QMP conversation with a qemu-storage-daemon: connect, negotiate, run the given
 * commands in order, disconnect. The daemons are long-lived but the driver talks to them
 * rarely (snapshot, resize, health), so no connection is kept open across driver restarts.
 */
export async function qmpRun(socketPath: string, commands: { execute: string; arguments?: Record<string, unknown> }[], timeoutMs = 10_000): Promise<unknown[]> {
  return await new Promise<unknown[]>((resolve, reject) => {
    const sock = net.connect(socketPath);
    const results: unknown[] = [];
    let buf = '';
    let sent = -1; // -1: waiting for the greeting; 0: capabilities sent
    const timer = setTimeout(() => fail(new Unavailable(`QMP ${socketPath}: no answer within ${timeoutMs} ms`)), timeoutMs);
    const done = (v: unknown[]) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(v);
    };
    const fail = (e: Error) => {
      clearTimeout(timer);
      sock.destroy();
      reject(e);
    };
    const sendNext = () => {
      const cmd = sent === 0 ? { execute: 'qmp_capabilities' } : commands[sent - 1];
      if (!cmd) return done(results);
      sock.write(JSON.stringify(cmd) + '\n');
    };
    sock.on('error', (e) => fail(new Unavailable(`QMP ${socketPath}: ${errorMessage(e)}`)));
    sock.on('close', () => fail(new Unavailable(`QMP ${socketPath}: connection closed`)));
    sock.on('data', (d: Buffer) => {
      buf += d.toString('utf8');
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (!line) continue;
        const msg = JSON.parse(line) as { QMP?: unknown; event?: string; return?: unknown; error?: { class: string; desc: string } };
        if (msg.event !== undefined) continue;
        if (msg.QMP !== undefined) {
          sent = 0;
          sendNext();
          continue;
        }
        if (msg.error) {
          const what = sent === 0 ? 'qmp_capabilities' : commands[sent - 1]!.execute;
          return fail(new FailedPrecondition(`QMP ${what}: ${msg.error.class}: ${msg.error.desc}`));
        }
        if (sent > 0) results.push(msg.return);
        sent++;
        sendNext();
      }
    });
  });
}
