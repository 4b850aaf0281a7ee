import { strict as assert } from 'node:assert';
import * as packet from './packet.js';
import { answer, type StaticLease } from './lease.js';

const lease: StaticLease = { mac: '52:54:00:12:34:56', ip: '10.88.0.7', prefixLength: 24, gateway: '10.88.0.1', dns: ['10.88.0.1'], hostname: 'vm1', bridge: 'podvirt0', owner: 'vm1' };

function request(type: number, extra: [number, Buffer][] = [], flags = 0, ciaddr = '0.0.0.0'): packet.DhcpPacket {
  return {
    op: 1, xid: 0xdeadbeef, secs: 0, flags, ciaddr, yiaddr: '0.0.0.0', siaddr: '0.0.0.0', giaddr: '0.0.0.0', chaddr: lease.mac,
    options: new Map([[packet.OPT.messageType, Buffer.from([type])], ...extra]),
  };
}

describe('dhcp: packets and static-lease answers', () => {
  it('round-trips a packet through encode/decode, padded to BOOTP size', () => {
    const p = request(packet.DISCOVER, [[packet.OPT.hostname, Buffer.from('x'.repeat(300))]]);
    const b = packet.encodeDhcp(p);
    assert.ok(b.length >= 300);
    const q = packet.decodeDhcp(b)!;
    assert.equal(q.xid, 0xdeadbeef);
    assert.equal(q.chaddr, lease.mac);
    assert.equal(q.options.get(packet.OPT.hostname)!.toString(), 'x'.repeat(300));
  });
  it('rejects garbage and non-Ethernet messages', () => {
    assert.equal(packet.decodeDhcp(Buffer.alloc(100)), undefined);
    const b = packet.encodeDhcp(request(packet.DISCOVER));
    b[1] = 6;
    assert.equal(packet.decodeDhcp(b), undefined);
  });
  it('masks and broadcasts', () => {
    assert.equal(packet.prefixToMask(24), '255.255.255.0');
    assert.equal(packet.prefixToMask(20), '255.255.240.0');
    assert.equal(packet.broadcastOf('10.88.3.7', 22), '10.88.3.255');
    assert.throws(() => packet.ipToBuf('10.0.0.256'), /not an IPv4/);
  });

  const cases: { name: string; req: packet.DhcpPacket; lease?: StaticLease; want?: { type: number; yiaddr: string; to: string } }[] = [
    { name: 'DISCOVER → OFFER, unicast to the leased address', req: request(packet.DISCOVER), want: { type: packet.OFFER, yiaddr: '10.88.0.7', to: '10.88.0.7' } },
    { name: 'DISCOVER with broadcast flag → directed broadcast', req: request(packet.DISCOVER, [], 0x8000), want: { type: packet.OFFER, yiaddr: '10.88.0.7', to: '10.88.0.255' } },
    { name: 'REQUEST for the lease → ACK', req: request(packet.REQUEST, [[packet.OPT.requestedIp, packet.ipToBuf('10.88.0.7')], [packet.OPT.serverId, packet.ipToBuf('10.88.0.1')]]), want: { type: packet.ACK, yiaddr: '10.88.0.7', to: '10.88.0.7' } },
    { name: 'renewal (ciaddr set) → ACK', req: request(packet.REQUEST, [], 0, '10.88.0.7'), want: { type: packet.ACK, yiaddr: '10.88.0.7', to: '10.88.0.7' } },
    { name: 'REQUEST for another address → NAK, broadcast', req: request(packet.REQUEST, [[packet.OPT.requestedIp, packet.ipToBuf('10.88.0.9')]]), want: { type: packet.NAK, yiaddr: '0.0.0.0', to: '10.88.0.255' } },
    { name: "REQUEST selecting another server's offer → silence", req: request(packet.REQUEST, [[packet.OPT.requestedIp, packet.ipToBuf('10.88.0.7')], [packet.OPT.serverId, packet.ipToBuf('10.88.0.2')]]) },
    { name: 'unknown MAC → silence', req: request(packet.DISCOVER), lease: undefined },
    { name: 'RELEASE → silence', req: request(packet.RELEASE) },
  ];
  for (const tc of cases) {
    it(tc.name, () => {
      const r = answer(tc.req, 'lease' in tc ? tc.lease : lease, '10.88.0.1');
      if (!tc.want) return assert.equal(r, undefined);
      assert.ok(r);
      assert.equal(r.packet.options.get(packet.OPT.messageType)![0], tc.want.type);
      assert.equal(r.packet.yiaddr, tc.want.yiaddr);
      assert.equal(r.to, tc.want.to);
      assert.equal(r.packet.xid, 0xdeadbeef);
      if (tc.want.type !== packet.NAK) {
        assert.equal(packet.bufToIp(r.packet.options.get(packet.OPT.router)!), '10.88.0.1');
        assert.equal(packet.bufToIp(r.packet.options.get(packet.OPT.subnetMask)!), '255.255.255.0');
      }
    });
  }

  it('routes, domain and search list: option 121 (with the default route, which clients then take from it), 15, 119', () => {
    const withRoutes: StaticLease = { ...lease, routes: [{ dst: '10.0.0.0/8', gw: '10.88.0.254' }, { dst: '192.168.7.0/24', gw: '0.0.0.0' }], domain: 'vms.example', search: ['svc.cluster.local', 'example.'] };
    const r = answer(request(packet.DISCOVER), withRoutes, '10.88.0.1')!;
    assert.deepEqual([...r.packet.options.get(packet.OPT.classlessRoutes)!], [8, 10, 10, 88, 0, 254, 24, 192, 168, 7, 0, 0, 0, 0, 0, 10, 88, 0, 1]);
    assert.equal(r.packet.options.get(packet.OPT.domainName)!.toString(), 'vms.example');
    assert.equal(r.packet.options.get(packet.OPT.domainSearch)!.toString('latin1'), '\x03svc\x07cluster\x05local\x00\x07example\x00');
    assert.ok(r.packet.options.get(packet.OPT.router), 'option 3 still sent for clients without 121');
    // Survives the wire (and a route list longer than one option).
    const many: StaticLease = { ...lease, routes: Array.from({ length: 60 }, (_, i) => ({ dst: `10.${i}.0.0/16`, gw: '10.88.0.254' })) };
    const b = packet.encodeDhcp(answer(request(packet.DISCOVER), many, '10.88.0.1')!.packet);
    assert.equal(packet.decodeDhcp(b)!.options.get(packet.OPT.classlessRoutes)!.length, 60 * 7 + 5);
    assert.equal(answer(request(packet.DISCOVER), lease, '10.88.0.1')!.packet.options.has(packet.OPT.classlessRoutes), false, 'no 121 without extra routes');
    assert.throws(() => packet.encodeClasslessRoutes([{ dst: '10.0.0.0/33', gw: '0.0.0.0' }]), /prefix/);
    assert.throws(() => packet.encodeDomainSearch(['a..b']), /domain/);
  });
});
