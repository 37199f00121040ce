/**
 * A fresh, migrated verifier database on each dialect the repository runs on: a SQLite file in a temporary
 * directory, a PostgreSQL schema and a MariaDB database of their own (servers as in db-servers.ts), each named after
 * the test file's prefix so parallel runs never collide.
 */
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Kysely } from 'kysely'
import { dropPgSchema, openDatabase } from '../../src/db/database.ts'
import type { VerifierDatabase } from '../../src/db/verifier-repository.ts'
import { PG_URL } from './db-servers.ts'
import { createMysqlDatabase } from './mysql.ts'

export interface OpenedVerifierDatabase {
  db: Kysely<VerifierDatabase>
  /** Closes the database and removes it (directory, schema or database). */
  cleanup(): Promise<void>
}

export interface VerifierDialect {
  name: 'sqlite' | 'postgres' | 'mariadb'
  open(): Promise<OpenedVerifierDatabase>
}

export function verifierDialects(prefix: string): VerifierDialect[] {
  return [
    {
      name: 'sqlite',
      open: async () => {
        const dir = mkdtempSync(join(tmpdir(), `kl-${prefix}-`))
        const db = await openDatabase<VerifierDatabase>('sqlite', {
          dataDir: dir,
          name: 'cv_data',
          migrations: 'verifier',
        })
        return {
          db,
          cleanup: async () => {
            await db.destroy()
            rmSync(dir, { recursive: true, force: true })
          },
        }
      },
    },
    {
      name: 'postgres',
      open: async () => {
        const schema = `t_${prefix}_${randomBytes(6).toString('hex')}`
        const db = await openDatabase<VerifierDatabase>(PG_URL, { pgSchema: schema, migrations: 'verifier' })
        return {
          db,
          cleanup: async () => {
            await db.destroy()
            await dropPgSchema(PG_URL, schema)
          },
        }
      },
    },
    {
      name: 'mariadb',
      open: async () => {
        const created = await createMysqlDatabase(prefix)
        const db = await openDatabase<VerifierDatabase>(created.url, { migrations: 'verifier' })
        return {
          db,
          cleanup: async () => {
            await db.destroy()
            await created.drop()
          },
        }
      },
    },
  ]
}
