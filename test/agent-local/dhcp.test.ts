import { strict as assert } from 'node:assert';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { DhcpServer } from '../../agent/dhcp/server.js';
import { exec, execText } from '../../lib/exec.js';
import { skipBecause } from '../helpers/skip.js';
import { pingUntilReply } from '../helpers/ping.js';

describe('agent-local: DHCP server on a real bridge, busybox udhcpc in a netns', function () {
  const tag = randomBytes(3).toString('hex');
  const br = `pvtl-br${tag}`;
  const ns = `pvtl-dh${tag}`;
  const host = `pvtl-vh${tag}`;
  const octet = 100 + (parseInt(tag.slice(0, 2), 16) % 100);
  const subnet = `10.213.${octet}`;
  let dir: string;
  let server: DhcpServer | undefined;

  before(async function () {
    if (process.getuid?.() !== 0) skipBecause(this, 'needs root for bridges and netns');
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'pvtl-dhcp-'));
    await exec('ip', ['link', 'add', br, 'type', 'bridge']);
    await exec('ip', ['addr', 'add', `${subnet}.1/24`, 'dev', br]);
    await exec('ip', ['link', 'set', br, 'up']);
    await exec('ip', ['netns', 'add', ns]);
    await exec('ip', ['link', 'add', host, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
    await exec('ip', ['-n', ns, 'link', 'set', 'eth0', 'address', '52:54:00:aa:bb:cc']);
    await exec('ip', ['link', 'set', host, 'master', br, 'up']);
    await exec('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
    await fs.writeFile(
      path.join(dir, 'script'),
      '#!/bin/sh\n[ "$1" = bound ] && ip addr add "$ip/$mask" dev "$interface" && ip route add default via "$router"\nexit 0\n',
      { mode: 0o755 },
    );
  });
  after(async () => {
    await server?.stop();
    await exec('ip', ['netns', 'delete', ns], { allowFailure: true });
    await exec('ip', ['link', 'delete', host], { allowFailure: true });
    await exec('ip', ['link', 'delete', br], { allowFailure: true });
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  it('gives the static lease to its MAC, and nothing to an unknown MAC', async () => {
    server = new DhcpServer();
    await server.start();
    server.add({ mac: '52:54:00:AA:BB:CC', ip: `${subnet}.42`, prefixLength: 24, gateway: `${subnet}.1`, bridge: br, owner: 'p1', hostname: 'p1' });
    await exec('ip', ['netns', 'exec', ns, 'busybox', 'udhcpc', '-f', '-q', '-n', '-i', 'eth0', '-t', '5', '-T', '1', '-s', path.join(dir, 'script')], { timeoutMs: 20000 });
    const addrs = await execText('ip', ['-n', ns, '-4', '-o', 'addr', 'show', 'dev', 'eth0']);
    assert.match(addrs, new RegExp(`inet ${subnet}\\.42/24`));
    assert.match(await execText('ip', ['-n', ns, 'route', 'show', 'default']), new RegExp(`via ${subnet}\\.1`));
    await pingUntilReply(`${subnet}.1`, { netns: ns });
    assert.ok(server.replies >= 2, 'offer and ack sent');

    server.removeOwner('p1');
    const before = server.replies;
    const r = await exec('ip', ['netns', 'exec', ns, 'busybox', 'udhcpc', '-f', '-q', '-n', '-i', 'eth0', '-t', '2', '-T', '1', '-s', path.join(dir, 'script')], { allowFailure: true, timeoutMs: 20000 });
    assert.notEqual(r.code, 0, 'no lease for a MAC the agent does not know');
    assert.equal(server.replies, before);
  });
});
