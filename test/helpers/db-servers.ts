/**
 * The database servers the multi-process tests share an instance of: PostgreSQL (a schema per run) and MariaDB (a
 * database per run). Both must answer (KEYLIME_TEST_PG_URL, KEYLIME_TEST_MYSQL_URL); an unreachable server fails
 * the test.
 */
import { randomBytes } from 'node:crypto'
import { dropPgSchema } from '../../src/db/database.ts'
import { createMysqlDatabase } from './mysql.ts'

export const PG_URL = process.env.KEYLIME_TEST_PG_URL ?? 'postgresql://postgres@127.0.0.1:5432/test'

export interface ServerTarget {
  url: string
  /** PostgreSQL only: the run's schema (openDatabase's `pgSchema`). */
  pgSchema?: string
  drop(): Promise<void>
}

export interface SharedServer {
  name: 'PostgreSQL' | 'MariaDB'
  /** A fresh, empty place on the server, named after `prefix`. */
  open(prefix: string): Promise<ServerTarget>
}

export const SHARED_SERVERS: readonly SharedServer[] = [
  {
    name: 'PostgreSQL',
    open: async (prefix) => {
      const schema = `t_${prefix}_${randomBytes(6).toString('hex')}`
      return { url: PG_URL, pgSchema: schema, drop: () => dropPgSchema(PG_URL, schema) }
    },
  },
  { name: 'MariaDB', open: (prefix) => createMysqlDatabase(prefix) },
]
