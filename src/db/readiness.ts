/**
 * Readiness of a service database for `/readyz`: the database answers a trivial query, and every migration of the
 * service's set is recorded as applied (a process started with `auto_migrate_db = False` against an older schema is
 * alive but not ready).
 */
import { type Kysely, sql } from 'kysely'
import { MIGRATION_SETS, type ServiceName } from './migrations/index.ts'

export interface DatabaseReadiness {
  database: boolean
  migrations: boolean
}

// biome-ignore lint/suspicious/noExplicitAny: only the bookkeeping table is read, whatever the service schema
export async function databaseReadiness(db: Kysely<any>, service: ServiceName): Promise<DatabaseReadiness> {
  try {
    await sql`select 1`.execute(db)
  } catch {
    return { database: false, migrations: false }
  }
  try {
    const { rows } = await sql<{
      name: string
    }>`select name from ${sql.table(`kysely_migration_${service}`)}`.execute(db)
    const applied = new Set(rows.map((r) => r.name))
    return { database: true, migrations: Object.keys(MIGRATION_SETS[service]).every((m) => applied.has(m)) }
  } catch {
    return { database: true, migrations: false }
  }
}

/** Migrations of the service's set not recorded as applied (all of them in a new or an upstream database). */
// biome-ignore lint/suspicious/noExplicitAny: only the bookkeeping table is read, whatever the service schema
export async function pendingMigrations(db: Kysely<any>, service: ServiceName): Promise<string[]> {
  let applied = new Set<string>()
  try {
    const { rows } = await sql<{
      name: string
    }>`select name from ${sql.table(`kysely_migration_${service}`)}`.execute(db)
    applied = new Set(rows.map((r) => r.name))
  } catch {
    // no bookkeeping table yet: nothing applied
  }
  return Object.keys(MIGRATION_SETS[service]).filter((m) => !applied.has(m))
}
