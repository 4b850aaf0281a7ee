import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { exec as realExec, type Exec } from '../../lib/exec.js';
import { InvalidArgument } from '../../lib/errors.js';

/**
 * Per-migration x509 material for QEMU's `tls-creds-x509`, made with the `openssl` CLI (Node can
 * parse certificates but not issue them). The target is the CA: it signs its own server
 * certificate and the source's client CSR, so no private key ever crosses the control channel
 * and a certificate from one migration is worthless for the next.
 *
 * QEMU reads a directory with fixed names: `ca-cert.pem` plus `server-cert.pem`/`server-key.pem`
 * (endpoint=server) or `client-cert.pem`/`client-key.pem` (endpoint=client).
 */

export interface Owner {
  uid: number;
  gid: number;
}

/** The CA lives outside the directory QEMU reads: QEMU never needs the CA key. */
export interface MigrationCa {
  dir: string;
  certPem: string;
  keyFile: string;
}

const VALID_DAYS = '2';
const KEY_ARGS = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

/** Hostnames go into a subject and a SAN: keep them to DNS label characters. */
function checkHostname(h: string): void {
  if (!/^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$/.test(h)) throw new InvalidArgument(`migration TLS: bad hostname ${JSON.stringify(h)}`);
}

async function privateDir(dir: string, owner?: Owner): Promise<void> {
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  await fs.chmod(dir, 0o700);
  if (owner) await fs.chown(dir, owner.uid, owner.gid);
}

async function own(files: string[], owner?: Owner): Promise<void> {
  for (const f of files) {
    await fs.chmod(f, 0o600);
    if (owner) await fs.chown(f, owner.uid, owner.gid);
  }
}

const serial = () => '0x' + randomBytes(16).toString('hex').replace(/^[89a-f]/, '1');

export class MigrationTls {
  constructor(private readonly run: Exec = realExec) {}

  /** A fresh CA for one migration, in `dir` (mode 0700, root only). */
  async createCa(dir: string, migrationId: string): Promise<MigrationCa> {
    await privateDir(dir);
    const keyFile = path.join(dir, 'ca-key.pem');
    const certFile = path.join(dir, 'ca-cert.pem');
    await this.run('openssl', [
      'req', '-x509', ...KEY_ARGS, '-keyout', keyFile, '-out', certFile, '-days', VALID_DAYS, '-set_serial', serial(),
      '-subj', `/O=podvirt/CN=podvirt migration CA ${migrationId.slice(0, 40)}`,
      '-addext', 'basicConstraints=critical,CA:TRUE',
      '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    ]);
    await own([keyFile, certFile]);
    return { dir, keyFile, certPem: await fs.readFile(certFile, 'utf8') };
  }

  /** Target side: `ca-cert.pem`, `server-cert.pem`, `server-key.pem` in `qemuDir`, readable by QEMU's user only. */
  async createServerCreds(ca: MigrationCa, qemuDir: string, hostname: string, owner?: Owner): Promise<void> {
    checkHostname(hostname);
    await privateDir(qemuDir, owner);
    const key = path.join(qemuDir, 'server-key.pem');
    const csr = path.join(ca.dir, 'server.csr');
    await this.run('openssl', ['req', '-new', ...KEY_ARGS, '-keyout', key, '-out', csr, '-subj', `/O=podvirt/CN=${hostname}`]);
    const cert = await this.sign(ca, await fs.readFile(csr, 'utf8'), 'server', hostname);
    await fs.writeFile(path.join(qemuDir, 'server-cert.pem'), cert, { mode: 0o600 });
    await fs.writeFile(path.join(qemuDir, 'ca-cert.pem'), ca.certPem, { mode: 0o600 });
    await own(['server-key.pem', 'server-cert.pem', 'ca-cert.pem'].map((f) => path.join(qemuDir, f)), owner);
  }

  /** Source side: a key pair in `qemuDir` and the CSR to send to the target. */
  async createClientRequest(qemuDir: string, name: string, owner?: Owner): Promise<string> {
    checkHostname(name);
    await privateDir(qemuDir, owner);
    const key = path.join(qemuDir, 'client-key.pem');
    const csr = path.join(qemuDir, 'client.csr');
    await this.run('openssl', ['req', '-new', ...KEY_ARGS, '-keyout', key, '-out', csr, '-subj', `/O=podvirt/CN=${name}`]);
    const pem = await fs.readFile(csr, 'utf8');
    await fs.rm(csr, { force: true });
    await own([key], owner);
    return pem;
  }

  /** Target side: signs the source's CSR as a client certificate of this migration's CA. */
  async signClient(ca: MigrationCa, csrPem: string): Promise<string> {
    if (!/^-----BEGIN CERTIFICATE REQUEST-----\n[A-Za-z0-9+/=\n]+-----END CERTIFICATE REQUEST-----\n?$/.test(csrPem)) {
      throw new InvalidArgument('migration TLS: the client request is not a PEM certificate request');
    }
    return this.sign(ca, csrPem, 'client');
  }

  /** Source side: stores what the target sent back next to the key. */
  async installClientCreds(qemuDir: string, caCertPem: string, clientCertPem: string, owner?: Owner): Promise<void> {
    for (const [f, pem] of [['ca-cert.pem', caCertPem], ['client-cert.pem', clientCertPem]] as const) {
      if (!/^-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]+-----END CERTIFICATE-----\n?$/.test(pem)) {
        throw new InvalidArgument(`migration TLS: ${f} from the target is not a PEM certificate`);
      }
      await fs.writeFile(path.join(qemuDir, f), pem, { mode: 0o600 });
    }
    await own(['ca-cert.pem', 'client-cert.pem'].map((f) => path.join(qemuDir, f)), owner);
  }

  private async sign(ca: MigrationCa, csrPem: string, role: 'server' | 'client', hostname?: string): Promise<string> {
    const tag = randomBytes(4).toString('hex');
    const csr = path.join(ca.dir, `${role}-${tag}.csr`);
    const ext = path.join(ca.dir, `${role}-${tag}.ext`);
    const out = path.join(ca.dir, `${role}-${tag}.pem`);
    // QEMU checks key usage and purpose itself (crypto/tlscredsx509.c): both usages, and the role's EKU.
    const lines = [
      'basicConstraints=critical,CA:FALSE',
      'keyUsage=critical,digitalSignature,keyEncipherment',
      `extendedKeyUsage=${role === 'server' ? 'serverAuth' : 'clientAuth'}`,
    ];
    if (hostname) lines.push(`subjectAltName=DNS:${hostname}`);
    await fs.writeFile(csr, csrPem, { mode: 0o600 });
    await fs.writeFile(ext, lines.join('\n') + '\n', { mode: 0o600 });
    try {
      await this.run('openssl', [
        'x509', '-req', '-in', csr, '-CA', path.join(ca.dir, 'ca-cert.pem'), '-CAkey', ca.keyFile, '-set_serial', serial(),
        '-days', VALID_DAYS, '-extfile', ext, '-out', out,
      ]);
      return await fs.readFile(out, 'utf8');
    } finally {
      await Promise.all([csr, ext, out].map((f) => fs.rm(f, { force: true })));
    }
  }
}
