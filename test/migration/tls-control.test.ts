import { strict as assert } from 'node:assert';
import { promises as fs } from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { X509Certificate } from 'node:crypto';
import { MigrationTls } from '../../agent/migration/tls.js';
import { ControlClient, ControlServer, newMigrationToken, type Body } from '../../agent/migration/control.js';
import { FailedPrecondition, InvalidArgument } from '../../lib/errors.js';
import { execText } from '../../lib/exec.js';

describe('migration TLS credentials (openssl)', function () {
  let dir: string;
  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'pvt-mig-tls-'));
  });
  after(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('target CA signs its server cert and the source CSR; an mTLS handshake verifies with them, a foreign CA does not', async () => {
    const t = new MigrationTls();
    const ca = await t.createCa(path.join(dir, 'ca'), 'mig-1');
    await t.createServerCreds(ca, path.join(dir, 'target'), 'vm1.migration.podvirt.io');
    const csr = await t.createClientRequest(path.join(dir, 'source'), 'vm1-source');
    await t.installClientCreds(path.join(dir, 'source'), ca.certPem, await t.signClient(ca, csr));

    const tdir = await fs.readdir(path.join(dir, 'target'));
    assert.deepEqual(tdir.sort(), ['ca-cert.pem', 'server-cert.pem', 'server-key.pem']);
    assert.deepEqual((await fs.readdir(path.join(dir, 'source'))).sort(), ['ca-cert.pem', 'client-cert.pem', 'client-key.pem']);
    assert.ok(!tdir.includes('ca-key.pem'), 'QEMU never sees the CA key');
    for (const d of ['target', 'source']) assert.equal((await fs.stat(path.join(dir, d))).mode & 0o777, 0o700);
    assert.equal((await fs.stat(path.join(dir, 'target', 'server-key.pem'))).mode & 0o777, 0o600);

    const rd = (d: string, f: string) => fs.readFile(path.join(dir, d, f));
    const server = new X509Certificate(await rd('target', 'server-cert.pem'));
    assert.ok(server.checkHost('vm1.migration.podvirt.io'));
    assert.ok(server.verify(new X509Certificate(ca.certPem).publicKey));
    const text = await execText('openssl', ['x509', '-noout', '-text', '-in', path.join(dir, 'source', 'client-cert.pem')]);
    assert.match(text, /TLS Web Client Authentication/);
    assert.match(text, /Digital Signature, Key Encipherment/);

    // Real mTLS: client presents its certificate, both sides verify against the migration CA.
    const srv = tls.createServer({ key: await rd('target', 'server-key.pem'), cert: await rd('target', 'server-cert.pem'), ca: await rd('target', 'ca-cert.pem'), requestCert: true, rejectUnauthorized: true }, (s) => s.end('hi'));
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const port = (srv.address() as net.AddressInfo).port;
    const connect = (ca: Buffer, withCert: boolean) =>
      new Promise<string>((resolve, reject) => {
        void (async () => {
          const c = tls.connect({
            host: '127.0.0.1',
            port,
            servername: 'vm1.migration.podvirt.io',
            ca,
            ...(withCert ? { key: await rd('source', 'client-key.pem'), cert: await rd('source', 'client-cert.pem') } : {}),
          });
          let got = '';
          c.on('data', (b) => (got += b));
          c.on('end', () => resolve(got));
          c.on('error', reject);
        })();
      });
    try {
      assert.equal(await connect(await rd('source', 'ca-cert.pem'), true), 'hi');
      const other = await t.createCa(path.join(dir, 'other-ca'), 'mig-2');
      await assert.rejects(connect(Buffer.from(other.certPem), true), /certificate/);
      await assert.rejects(connect(await rd('source', 'ca-cert.pem'), false), (e: Error) => /certificate|alert|socket|ECONNRESET/i.test(e.message));
    } finally {
      srv.close();
    }
  });

  it('refuses garbage instead of a CSR or certificate, and bad hostnames', async () => {
    const t = new MigrationTls();
    const ca = await t.createCa(path.join(dir, 'ca2'), 'mig-3');
    await assert.rejects(t.signClient(ca, 'not a csr'), InvalidArgument);
    await assert.rejects(t.installClientCreds(path.join(dir, 'x'), 'nope', 'nope'), InvalidArgument);
    await assert.rejects(t.createServerCreds(ca, path.join(dir, 'y'), 'bad host/../x'), InvalidArgument);
  });
});

describe('migration control channel (HMAC over TCP)', () => {
  const cleanups: Array<() => unknown> = [];
  afterEach(async () => {
    while (cleanups.length) await cleanups.pop()!();
  });
  const start = async (handler = async (type: string, body: Body): Promise<Body> => ({ echo: type, body })) => {
    const token = newMigrationToken();
    const srv = new ControlServer('mig-a', token, handler);
    const port = await srv.listen('127.0.0.1', 0);
    cleanups.push(() => srv.close());
    return { srv, port, token };
  };
  const client = async (port: number, token: string, migrationId = 'mig-a') => {
    const c = await ControlClient.connect({ host: '127.0.0.1', port, migrationId, token, timeoutMs: 2000 });
    cleanups.push(() => c.close());
    return c;
  };

  it('request/response and notifications both ways with the shared token', async () => {
    const { srv, port, token } = await start();
    const c = await client(port, token);
    assert.deepEqual(await c.request('prepare', { x: 1 }), { echo: 'prepare', body: { x: 1 } });
    const fromClient = new Promise<[string, Body]>((r) => srv.once('note', (t: string, b: Body) => r([t, b])));
    c.notify('progress', { p: 5 });
    assert.deepEqual(await fromClient, ['progress', { p: 5 }]);
    const fromServer = new Promise<[string, Body]>((r) => c.once('note', (t: string, b: Body) => r([t, b])));
    assert.ok(srv.notify('resumed', { ok: true }));
    assert.deepEqual(await fromServer, ['resumed', { ok: true }]);
    const many = await Promise.all([1, 2, 3, 4, 5].map((i) => c.request('n', { i })));
    assert.deepEqual(many.map((b) => (b.body as Body).i), [1, 2, 3, 4, 5]);
  });

  it('a typed error on the target comes back with its kind', async () => {
    const { port, token } = await start(async () => {
      throw new FailedPrecondition('no room for the VM');
    });
    const c = await client(port, token);
    await assert.rejects(c.request('prepare'), (e: Error & { kind?: string }) => e.kind === 'FailedPrecondition' && /no room/.test(e.message));
  });

  it('a wrong token or another migration id is refused on both sides', async () => {
    const { srv, port, token } = await start();
    const rejected: string[] = [];
    srv.on('rejected', (why: string) => rejected.push(why));
    await assert.rejects(ControlClient.connect({ host: '127.0.0.1', port, migrationId: 'mig-a', token: newMigrationToken(), timeoutMs: 2000 }), /failed authentication/);
    await assert.rejects(ControlClient.connect({ host: '127.0.0.1', port, migrationId: 'mig-b', token, timeoutMs: 2000 }), /closed|authentication/);
    assert.ok(rejected.length >= 1, 'server saw the impostor');
    // and the real client still gets in
    const c = await client(port, token);
    assert.ok(await c.request('ping'));
    assert.throws(() => new ControlServer('m', 'short', async () => ({})), InvalidArgument);
  });

  it('a tampered frame drops the connection instead of being acted on', async () => {
    const seen: Body[] = [];
    const { port, token } = await start(async (_t, b) => {
      seen.push(b);
      return {};
    });
    // A man in the middle that rewrites the request body after the handshake.
    const mitm = net.createServer((down) => {
      const up = net.connect(port, '127.0.0.1');
      down.on('data', (d: Buffer) => up.write(d.toString().replace('"amount":1', '"amount":9')));
      up.on('data', (d) => down.write(d));
      up.on('close', () => down.destroy());
      down.on('close', () => up.destroy());
    });
    await new Promise<void>((r) => mitm.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise<void>((r) => mitm.close(() => r())));
    const c = await client((mitm.address() as net.AddressInfo).port, token);
    await assert.rejects(c.request('pay', { amount: 1 }, 3000), /closed/);
    assert.deepEqual(seen, []);
  });
});
