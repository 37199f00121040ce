import { type Kysely, type Migration, type MigrationProvider, Migrator } from 'kysely'
import { DbError } from './db-error.ts'
import type { MigrationSet } from './migrations/index.ts'

/** Runs the set's pending migrations with kysely's Migrator; refuses out-of-order history. */
export async function migrate(
  // biome-ignore lint/suspicious/noExplicitAny: migrations are not typed against the app schema
  db: Kysely<any>,
  set: MigrationSet,
  tag: string,
  opts: { schema?: string | undefined } = {},
): Promise<void> {
  const provider: MigrationProvider = { getMigrations: async () => ({ ...set }) as Record<string, Migration> }
  const migrator = new Migrator({
    db,
    provider,
    migrationTableName: `kysely_migration_${tag}`,
    migrationLockTableName: `kysely_migration_lock_${tag}`,
    ...(opts.schema !== undefined ? { migrationTableSchema: opts.schema } : {}),
  })
  const { error, results } = await migrator.migrateToLatest()
  if (error) {
    const failed = results?.find((r) => r.status === 'Error')?.migrationName
    throw new DbError(
      `database migration ${failed ?? ''} failed: ${(error as Error).message ?? String(error)}`,
      {
        cause: error,
      },
    )
  }
}
