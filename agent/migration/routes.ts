import type { Route } from '../local/control.js';
import { DEFAULT_MIGRATION_CONFIG, resolveMigrationConfig, type MigrationConfig } from './config.js';
import type { LocalMigrations } from './local.js';

/** Body of `POST /pods/:name/migrate`: the CLI's config layers (file, flags); the agent adds the spec's block. */
export interface MigrateRequest {
  file?: unknown;
  flags?: unknown;
}

/** Local mode: TLS is opt-in (`--tls`), everything else as in a cluster. */
export const LOCAL_BASE_CONFIG: Readonly<MigrationConfig> = Object.freeze({ ...DEFAULT_MIGRATION_CONFIG, tls: false });

/**
 * The local agent's migration endpoints. `specBlock` returns the pod's `migration:` block (or
 * undefined), read from its recorded manifest.
 */
export function migrationRoutes(m: LocalMigrations, specBlock: (pod: string) => Promise<unknown>): Route[] {
  return [
    {
      method: 'POST',
      path: '/pods/:name/migrate',
      handler: async (body, [name]) => {
        const req = (body ?? {}) as MigrateRequest;
        const config = resolveMigrationConfig(
          [
            { where: 'migration config file', value: req.file },
            { where: 'spec.migration', value: await specBlock(name!) },
            { where: 'flags', value: req.flags },
          ],
          LOCAL_BASE_CONFIG,
        );
        return m.start(name!, config);
      },
    },
    { method: 'GET', path: '/pods/:name/migration', handler: async (_b, [name]) => m.get(name!) },
    {
      // Long poll: answers as soon as the record is newer than `after` (or ended), at the latest after `timeoutMs`.
      method: 'POST',
      path: '/pods/:name/migration/wait',
      handler: async (body, [name]) => {
        const b = (body ?? {}) as { after?: unknown; timeoutMs?: unknown };
        return m.watch(name!, typeof b.after === 'number' ? b.after : -1, typeof b.timeoutMs === 'number' ? b.timeoutMs : 10_000);
      },
    },
    { method: 'POST', path: '/pods/:name/migrate/cancel', handler: async (_b, [name]) => m.cancel(name!) },
  ];
}
