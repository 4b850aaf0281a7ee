import { strict as assert } from 'node:assert';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { DeadlineExceeded, Unavailable } from '../../lib/errors.js';
import { QmpClient, QmpError, blockdevAdd, blockdevDel, cont, deviceAdd, deviceDel, queryBlock, queryCpusFast, queryPci, queryStatus, quit, stop, blockResize, deviceAddress, type QmpEvent } from '../../agent/qmp/index.js';
import { startBareQemu, type BareQemu } from './qemu-fixture.js';

describe('agent-core: QMP client against real QEMU', () => {
  let vm: BareQemu;
  let qmp: QmpClient | undefined;

  beforeEach(async () => {
    vm = await startBareQemu(['-device', 'pcie-root-port,id=rp1,bus=pcie.0,addr=0x2,chassis=1,port=1', '-smp', '2']);
  });
  afterEach(async () => {
    qmp?.close();
    qmp = undefined;
    await vm.dispose();
  });

  it('negotiates, answers typed queries, reports errors by class', async () => {
    qmp = await QmpClient.connect(vm.qmpPath);
    assert.equal(qmp.greeting?.version.qemu.major, 7);
    const st = await queryStatus(qmp);
    assert.equal(st.status, 'running');
    const cpus = await queryCpusFast(qmp);
    assert.deepEqual(cpus.map((c) => c['cpu-index']), [0, 1]);
    assert.ok(cpus.every((c) => c['thread-id'] > 0));
    await assert.rejects(qmp.execute('no-such-command'), (e: unknown) => e instanceof QmpError && e.qmpClass === 'CommandNotFound' && e.kind === 'Unimplemented');
    await assert.rejects(qmp.execute('device_del', { id: 'ghost' }), (e: unknown) => e instanceof QmpError && e.kind === 'NotFound' && e.qmpClass === 'DeviceNotFound');
    // the connection survives errors
    assert.equal((await queryStatus(qmp)).running, true);
  });

  it('delivers events to waiters, listeners and the async iterator', async () => {
    qmp = await QmpClient.connect(vm.qmpPath);
    const seen: string[] = [];
    const ac = new AbortController();
    const iter = (async () => {
      for await (const ev of qmp!.events(ac.signal)) {
        seen.push(ev.event);
        if (ev.event === 'RESUME') break;
      }
    })();
    const stopped = qmp.waitEvent('STOP', { timeoutMs: 5000 });
    await stop(qmp);
    const ev: QmpEvent = await stopped.promise;
    assert.equal(ev.event, 'STOP');
    assert.ok(ev.timestamp.seconds > 0);
    assert.equal((await queryStatus(qmp)).status, 'paused');
    await cont(qmp);
    await iter;
    ac.abort();
    assert.deepEqual(seen, ['STOP', 'RESUME']);
    const none = qmp.waitEvent('GUEST_PANICKED', { timeoutMs: 100 });
    await assert.rejects(none.promise, DeadlineExceeded);
  });

  it('times out a command when QEMU does not answer, then recovers', async () => {
    qmp = await QmpClient.connect(vm.qmpPath);
    process.kill(vm.pid, 'SIGSTOP');
    try {
      await assert.rejects(qmp.execute('query-status', undefined, { timeoutMs: 200 }), DeadlineExceeded);
    } finally {
      process.kill(vm.pid, 'SIGCONT');
    }
    assert.equal((await queryStatus(qmp)).running, true);
  });

  it('lets a second client adopt the socket after the first closes', async () => {
    const first = await QmpClient.connect(vm.qmpPath);
    await stop(first);
    first.close();
    await assert.rejects(queryStatus(first), Unavailable);
    qmp = await QmpClient.connect(vm.qmpPath, { connectTimeoutMs: 5000 });
    assert.equal((await queryStatus(qmp)).status, 'paused');
    await qmp.reconnect();
    assert.equal((await queryStatus(qmp)).status, 'paused');
  });

  it('fails pending commands and emits close when QEMU goes away', async () => {
    qmp = await QmpClient.connect(vm.qmpPath);
    const closed = new Promise<Error | undefined>((r) => qmp!.once('close', r));
    const shutdown = qmp.waitEvent('SHUTDOWN', { timeoutMs: 5000 });
    await quit(qmp);
    assert.equal((await shutdown.promise).data.guest, false);
    assert.ok((await closed) instanceof Unavailable);
    await assert.rejects(queryStatus(qmp), Unavailable);
  });

  it('runs out-of-band commands when oob is negotiated', async () => {
    qmp = await QmpClient.connect(vm.qmpPath, { oob: true });
    assert.ok(qmp.greeting?.capabilities.includes('oob'));
    // migrate-pause is oob-capable; with no migration QEMU answers with an error, out of band
    await assert.rejects(qmp.execute('migrate-pause', undefined, { oob: true }), (e: unknown) => e instanceof QmpError && e.qmpClass === 'GenericError');
    assert.equal((await queryStatus(qmp)).running, true);
    const it = qmp.events();
    qmp.close();
    assert.equal((await it.next()).done, true, 'the event iterator ends with the connection');
  });

  it('cannot connect to a missing socket within the deadline', async () => {
    await assert.rejects(QmpClient.connect(path.join(vm.dir, 'absent.sock'), { connectTimeoutMs: 150 }), Unavailable);
  });

  it('hotplugs a virtio-blk into a root port, resizes it, and unplugs on DEVICE_DELETED', async () => {
    qmp = await QmpClient.connect(vm.qmpPath);
    const img = path.join(vm.dir, 'd.raw');
    await fs.writeFile(img, Buffer.alloc(0));
    await fs.truncate(img, 1 << 20);
    await blockdevAdd(qmp, { 'node-name': 'd1', driver: 'raw', file: { driver: 'file', filename: img } });
    await deviceAdd(qmp, { driver: 'virtio-blk-pci', id: 'vd1', drive: 'd1', bus: 'rp1', addr: '0x0', serial: 'pvt-1' });
    assert.deepEqual(await deviceAddress(qmp, 'vd1'), { bus: 'rp1', slot: 0, function: 0 });
    assert.deepEqual(await deviceAddress(qmp, 'rp1'), { bus: 'pcie.0', slot: 2, function: 0 });
    assert.ok((await queryPci(qmp))[0]!.devices.some((d) => d.qdev_id === 'rp1'));
    await blockResize(qmp, 'd1', 2 << 20);
    assert.equal((await fs.stat(img)).size, 2 << 20);
    const blk = (await queryBlock(qmp)).find((b) => b.qdev?.includes('vd1'));
    assert.ok(blk, 'query-block lists the hotplugged disk');
    await deviceDel(qmp, 'vd1', 10_000);
    await blockdevDel(qmp, 'd1');
    await assert.rejects(deviceDel(qmp, 'vd1', 1000), (e: unknown) => e instanceof QmpError && e.kind === 'NotFound');
  });
});
