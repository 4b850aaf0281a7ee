/**
 * Live migration: what the agents (local mode, the Kubernetes agent) compose.
 * - TargetSide on the target VM's QMP (QEMU started with `-incoming defer`, pinned, taps silent),
 * - SourceSide on the source VM's QMP, with the target's control endpoint and the shared token,
 * - resolveMigrationConfig for the layered tuning, LocalMigrations for local mode's orchestration.
 */
export { DEFAULT_MIGRATION_CONFIG, applyMigrationOverrides, migrationOverridesSchema, resolveMigrationConfig, type MigrationConfig, type MigrationOverrides } from './config.js';
export { ControlClient, ControlServer, newMigrationToken } from './control.js';
export { decideNext, initialDecideState, type Decision, type ProgressSample } from './decide.js';
export { LocalMigrations, MIGRATE_FROM_ANNOTATION, targetManifest, type LocalMigrationHost, type LocalMigrationRecord } from './local.js';
export { planMigration, type MigrationPlan, type MirroredDisk } from './plan.js';
export type { MigrationPhase, MigrationProgress } from './progress.js';
export { progressWriter, renderBar } from './render.js';
export { LOCAL_BASE_CONFIG, migrationRoutes } from './routes.js';
export { SourceSide, type MigrationResult, type SourceSideOptions } from './source.js';
export { TargetSide, type TargetSideOptions } from './target.js';
export { MigrationTls, type Owner } from './tls.js';
