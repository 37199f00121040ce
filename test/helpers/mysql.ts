/**
 * MariaDB/MySQL for the dialect tests, as PostgreSQL: the server at KEYLIME_TEST_MYSQL_URL (default: root without
 * password on 127.0.0.1:3306, database `test`, as `.ci/run` starts it) must answer, or the tests fail. Each test
 * file works in a database of its own, created here and dropped by its cleanup, so parallel runs never collide.
 */
import { randomBytes } from 'node:crypto'
import mysql from 'mysql2/promise'
import { mysqlPoolOptions, parseDatabaseUrl } from '../../src/db/database.ts'

export const MYSQL_URL = process.env.KEYLIME_TEST_MYSQL_URL ?? 'mysql://root@127.0.0.1:3306/test'

/** An administrative connection to the server of MYSQL_URL (in its database). */
export function mysqlAdmin(): Promise<mysql.Connection> {
  return mysql.createConnection(mysqlPoolOptions(parseDatabaseUrl(MYSQL_URL).target))
}

export interface MysqlTestDatabase {
  /** database_url of the new database */
  url: string
  name: string
  drop(): Promise<void>
}

/**
 * Creates an empty database `kl_<prefix>_<random>` on the server of MYSQL_URL; with `serverCollation`, in the
 * server's default collation (as an operator's `CREATE DATABASE` leaves it, e.g. utf8mb4_general_ci), else binary.
 */
export async function createMysqlDatabase(
  prefix: string,
  opts: { serverCollation?: boolean } = {},
): Promise<MysqlTestDatabase> {
  const name = `kl_${prefix}_${randomBytes(6).toString('hex')}`
  const admin = await mysqlAdmin()
  try {
    await admin.query(
      `CREATE DATABASE \`${name}\` CHARACTER SET utf8mb4${opts.serverCollation ? '' : ' COLLATE utf8mb4_bin'}`,
    )
  } finally {
    await admin.end()
  }
  const u = new URL(MYSQL_URL)
  u.pathname = `/${name}`
  return {
    url: u.toString(),
    name,
    drop: async () => {
      const c = await mysqlAdmin()
      try {
        await c.query(`DROP DATABASE IF EXISTS \`${name}\``)
      } finally {
        await c.end()
      }
    },
  }
}
