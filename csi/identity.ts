import type { IdentityHandlers } from '../proto/gen/csi/v1/csi/v1/Identity.js';
import type { AsyncImpl } from './async-impl.js';
import { PACKAGE_VERSION } from '../lib/project-root.js';
import type { DriverContext } from './context.js';
import { DRIVER_NAME } from './ids.js';

export type IdentityImpl = AsyncImpl<IdentityHandlers>;

export function identityService(ctx: DriverContext): IdentityImpl {
  return {
    async GetPluginInfo() {
      return { name: DRIVER_NAME, vendor_version: PACKAGE_VERSION, manifest: {} };
    },
    async GetPluginCapabilities() {
      return {
        capabilities: [
          { service: { type: 'CONTROLLER_SERVICE' } },
          { service: { type: 'VOLUME_ACCESSIBILITY_CONSTRAINTS' } },
          { volume_expansion: { type: 'ONLINE' } },
        ],
      };
    },
    /** Not ready until start-up reconciliation has put every staged volume back in place. */
    async Probe() {
      return { ready: { value: ctx.ready } };
    },
  };
}
