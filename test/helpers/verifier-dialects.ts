/**
 * A fresh, migrated verifier database on each dialect the repository runs on: a SQLite file in a temporary
 * directory, and a PostgreSQL schema or a MariaDB database of its own on the shared servers (db-servers.ts), named
 * after the test file's prefix so parallel runs never collide.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Kysely } from 'kysely'
import { openDatabase } from '../../src/db/database.ts'
import type { VerifierDatabase } from '../../src/db/verifier-repository.ts'
import { SHARED_SERVERS } from './db-servers.ts'

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
  const sqlite: VerifierDialect = {
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
  }
  const servers = SHARED_SERVERS.map(
    (server): VerifierDialect => ({
      name: server.name === 'PostgreSQL' ? 'postgres' : 'mariadb',
      open: async () => {
        const target = await server.open(prefix)
        const db = await openDatabase<VerifierDatabase>(target.url, {
          ...(target.pgSchema ? { pgSchema: target.pgSchema } : {}),
          migrations: 'verifier',
        })
        return {
          db,
          cleanup: async () => {
            await db.destroy()
            await target.drop()
          },
        }
      },
    }),
  )
  return [sqlite, ...servers]
}
