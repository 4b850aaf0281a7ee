import { strict as assert } from 'node:assert';
import { readdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { isPodvirtError } from '../../lib/errors.js';
import { silentLogger } from '../../lib/log.js';
import { devicePluginApi, type RegistrationClient } from '../../plugins/api.js';
import { KubeletDeviceManager } from '../../plugins/kubelet-side.js';
import type { ResourcePlan } from '../../plugins/plan.js';
import { PluginServer } from '../../plugins/plugin-server.js';
import { registerWithKubelet } from '../../plugins/registration.js';
import { FakeHost } from './fake-host.js';

const RES = 'example.com/thing';

function plan(socketName: string, n: number, kind: ResourcePlan['kind'] = 'device-node'): ResourcePlan {
  return {
    resourceName: RES,
    kind,
    socketName,
    hostPath: '/dev/thing',
    node: 'kvm',
    devices: Array.from({ length: n }, (_, i) => ({ id: `t${i}`, healthy: true, iommuGroup: String(i) })),
  };
}

describe('device-plugin: kubelet-side device manager', () => {
  let host: FakeHost;
  let kubelet: KubeletDeviceManager;
  const servers: PluginServer[] = [];
  beforeEach(async () => {
    host = new FakeHost();
    kubelet = new KubeletDeviceManager({ dir: host.kubeletDir, dialTimeoutMs: 500 });
    await kubelet.start();
  });
  afterEach(async () => {
    for (const s of servers.splice(0)) await s.stop();
    await kubelet.stop();
    host.cleanup();
  });
  const serve = async (socketName: string, n: number, kind: ResourcePlan['kind'] = 'device-node') => {
    const s = new PluginServer(host.kubeletDir, plan(socketName, n, kind), silentLogger);
    await s.start();
    servers.push(s);
    return s;
  };
  const register = (s: PluginServer) => registerWithKubelet(kubelet.socketPath, { endpoint: path.basename(s.socketPath), resourceName: RES, options: s.options() });

  it('rejects another API version, like the kubelet', async () => {
    const client = new (devicePluginApi().Registration)(`unix://${kubelet.socketPath}`, grpc.credentials.createInsecure()) as RegistrationClient;
    try {
      const err = await new Promise<grpc.ServiceError | null>((resolve) =>
        client.Register({ version: 'v1alpha', endpoint: 'x.sock', resource_name: RES }, (e) => resolve(e)),
      );
      assert.equal(err?.code, grpc.status.INVALID_ARGUMENT);
      assert.match(err.details, /unsupported device plugin API version "v1alpha"/);
    } finally {
      client.close();
    }
  });

  it('rejects invalid resource names and unreachable endpoints', async () => {
    await assert.rejects(registerWithKubelet(kubelet.socketPath, { endpoint: 'a.sock', resourceName: 'kubernetes.io/x', options: {} }), /reserved/);
    await assert.rejects(registerWithKubelet(kubelet.socketPath, { endpoint: 'missing.sock', resourceName: RES, options: {} }), (e: unknown) => {
      assert.equal((e as grpc.ServiceError).code, grpc.status.UNAVAILABLE);
      assert.match((e as grpc.ServiceError).details, /cannot reach the plugin at .*missing\.sock/);
      return true;
    });
    assert.deepEqual(kubelet.resourceNames(), []);
  });

  it('counts allocations, refuses more than available, and gets them back on release', async () => {
    const s = await serve('a.sock', 3);
    await register(s);
    await kubelet.waitForResource(RES, (r) => r.healthy.length === 3, 5000);
    const a = await kubelet.allocate(RES, 2);
    assert.deepEqual(a.deviceIds, ['t0', 't1']);
    await assert.rejects(kubelet.allocate(RES, 2), (e: unknown) => isPodvirtError(e) && e.kind === 'ResourceExhausted' && /requested 2, available 1/.test(e.message));
    kubelet.release(RES, a.deviceIds);
    assert.equal((await kubelet.allocate(RES, 3)).deviceIds.length, 3);
  });

  it('the newest registration of a resource wins; the old stream is dropped', async () => {
    const first = await serve('a.sock', 1);
    await register(first);
    await kubelet.waitForResource(RES, (r) => r.healthy.length === 1, 5000);
    const second = await serve('b.sock', 2);
    await register(second);
    const r = await kubelet.waitForResource(RES, (x) => x.endpoint === 'b.sock' && x.healthy.length === 2, 5000);
    assert.equal(r.registrations, 2);
    // Updates of the replaced plugin no longer count.
    first.update(plan('a.sock', 5));
    second.update(plan('b.sock', 4));
    await kubelet.waitForResource(RES, (x) => x.healthy.length === 4, 5000);
    assert.equal(first.openStreams, 0);
  });

  it('marks every device Unhealthy when the stream ends, and restart() removes only sockets', async () => {
    const s = await serve('a.sock', 2);
    await register(s);
    await kubelet.waitForResource(RES, (r) => r.healthy.length === 2, 5000);
    writeFileSync(path.join(host.kubeletDir, 'kubelet_internal_checkpoint'), '{}');
    await kubelet.restart();
    assert.deepEqual(readdirSync(host.kubeletDir).sort(), ['kubelet.sock', 'kubelet_internal_checkpoint']);
    const r = kubelet.resource(RES)!;
    assert.equal(r.connected, false);
    assert.equal(r.healthy.length, 0);
  });
});
