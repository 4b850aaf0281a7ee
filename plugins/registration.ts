/** The plugin's side of registration: `Register` on the kubelet's `kubelet.sock`. */
import * as grpc from '@grpc/grpc-js';
import { promises as fs } from 'node:fs';
import { sysErrorCode } from '../lib/errors.js';
import { devicePluginApi, type DevicePluginOptions, type RegistrationClient } from './api.js';
import { DEVICE_PLUGIN_API_VERSION } from './resources.js';

export async function registerWithKubelet(
  kubeletSocket: string,
  req: { endpoint: string; resourceName: string; options: DevicePluginOptions },
  deadlineMs = 5000,
): Promise<void> {
  const client = new (devicePluginApi().Registration)(`unix://${kubeletSocket}`, grpc.credentials.createInsecure()) as RegistrationClient;
  try {
    await new Promise<void>((resolve, reject) => {
      client.Register(
        // Old kubelets read options from the request, current ones call GetDevicePluginOptions: fill both.
        { version: DEVICE_PLUGIN_API_VERSION, endpoint: req.endpoint, resource_name: req.resourceName, options: req.options },
        { deadline: Date.now() + deadlineMs },
        (err) => (err ? reject(err) : resolve()),
      );
    });
  } finally {
    client.close();
  }
}

/**
 * Identity of the current `kubelet.sock` file (inode + birth/change time), or undefined when absent.
 * A different value means a new kubelet instance that has not seen our registrations.
 */
export async function kubeletSocketKey(kubeletSocket: string): Promise<string | undefined> {
  try {
    const st = await fs.stat(kubeletSocket);
    if (!st.isSocket()) return undefined;
    return `${st.ino}:${st.birthtimeMs || st.ctimeMs}`;
  } catch (e) {
    if (sysErrorCode(e) === 'ENOENT' || sysErrorCode(e) === 'ENOTDIR') return undefined;
    throw e;
  }
}
