import type { IdentityHandlers } from '../proto/gen/csi/v1/csi/v1/Identity.js';
import { PACKAGE_VERSION } from '../lib/project-root.js';
import type { DriverContext } from './context.js';
import { DRIVER_NAME } from './ids.js';

type Impl<K extends keyof IdentityHandlers> = IdentityHandlers[K] extends (call: infer C, cb: infer CB) => void
  ? C extends { request: infer Req }
    ? CB extends (e: never, value?: infer Res) => void
      ? (req: Req) => Promise<NonNullable<Res>>
      : never
    : never
  : never;

export type IdentityImpl = { [K in keyof IdentityHandlers]: Impl<K> };

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
