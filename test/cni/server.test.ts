import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { silentCniLogger } from '../../cni/logger.js';
import { startCniServer, type CniServer } from '../../cni/server.js';
import { encodeRequest } from '../../cni/wire.js';

/** Sends raw bytes, half-closes like the shim, returns the whole answer. */
function roundTrip(socket: string, bytes: Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = net.connect(socket);
    const chunks: Buffer[] = [];
    c.on('data', (b: Buffer) => chunks.push(b));
    c.on('end', () => resolve(Buffer.concat(chunks).toString()));
    c.on('error', reject);
    c.end(bytes);
  });
}

describe('cni server socket', () => {
  let dir = '';
  let socket = '';
  const servers: CniServer[] = [];
  before(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'pvt-cni-srv-'));
    socket = path.join(dir, 'sub', 'cni.sock');
  });
  after(async () => {
    for (const s of servers) await s.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('creates its directory 0700 and the socket 0600, refuses a second server, replaces a stale socket', async () => {
    const first = await startCniServer({ socketPath: socket, logger: silentCniLogger, helperDir: null });
    assert.equal(statSync(path.dirname(socket)).mode & 0o777, 0o700);
    assert.equal(statSync(socket).mode & 0o777, 0o600);
    await assert.rejects(startCniServer({ socketPath: socket, logger: silentCniLogger, helperDir: null }), /already listens/);
    // A server killed without removing its socket leaves a stale one behind.
    const stalePath = path.join(dir, 'stale.sock');
    const dead = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(stalePath)}, () => console.log('up'))`]);
    await new Promise((r) => dead.stdout.once('data', r));
    dead.kill('SIGKILL');
    await new Promise((r) => dead.once('exit', r));
    assert.ok(statSync(stalePath).isSocket());
    const second = await startCniServer({ socketPath: stalePath, logger: silentCniLogger, helperDir: null });
    servers.push(first, second);
    const answer = await roundTrip(stalePath, encodeRequest({ CNI_COMMAND: 'VERSION' }, Buffer.from('{"cniVersion":"1.0.0"}')));
    assert.match(answer, /^PVCNI1 0 \d+ 0\n\{"cniVersion":"1\.1\.0","supportedVersions"/);
  });

  it('answers a malformed request with CNI error 6 and keeps serving', async () => {
    const bad = await roundTrip(socket, Buffer.from('GET / HTTP/1.0\r\n\r\n'));
    assert.match(bad, /^PVCNI1 1 \d+ 0\n/);
    assert.equal(JSON.parse(bad.slice(bad.indexOf('\n') + 1)).code, 6);
    const ok = await roundTrip(socket, encodeRequest({ CNI_COMMAND: 'VERSION', PATH: '/x' }, Buffer.alloc(0)));
    assert.match(ok, /^PVCNI1 0 /);
  });
});
