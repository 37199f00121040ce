/**
 * What SQL a Kysely handle speaks, from its adapter: works for transactions and for the handles migrations get,
 * which the dialect registry of database.ts does not know.
 */
import {
  type CreateTableBuilder,
  type Expression,
  type Kysely,
  MysqlAdapter,
  PostgresAdapter,
  sql,
  type Transaction,
} from 'kysely'

export type SqlDialect = 'sqlite' | 'postgres' | 'mysql'

// biome-ignore lint/suspicious/noExplicitAny: any database shape
export function sqlDialectOf(db: Kysely<any> | Transaction<any>): SqlDialect {
  const adapter = db.getExecutor().adapter
  if (adapter instanceof PostgresAdapter) return 'postgres'
  if (adapter instanceof MysqlAdapter) return 'mysql'
  return 'sqlite'
}

/**
 * The type of free text columns. MySQL's TEXT holds 64 KiB, too little for runtime policies, IMA state and
 * evidence (upstream uses LONGTEXT for `ima_policy` there); SQLite and PostgreSQL have no such limit.
 */
// biome-ignore lint/suspicious/noExplicitAny: any database shape
export function textType(db: Kysely<any>): 'text' | Expression<unknown> {
  return sqlDialectOf(db) === 'mysql' ? sql`longtext` : 'text'
}

/**
 * Table options of every table created on MySQL: utf8mb4 with a binary collation, so names and ids compare and
 * stay unique byte for byte as on SQLite and PostgreSQL (the server's default collation ignores case: policies
 * `Web` and `web` would collide).
 */
// biome-ignore lint/suspicious/noExplicitAny: any database shape
export function mysqlTableOptions(db: Kysely<any>) {
  return <T extends string, C extends string>(b: CreateTableBuilder<T, C>): CreateTableBuilder<T, C> =>
    sqlDialectOf(db) === 'mysql' ? b.modifyEnd(sql`character set utf8mb4 collate utf8mb4_bin`) : b
}
