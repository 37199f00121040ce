/**
 * Policy bodies stored once: `verifier_policy_bodies` holds each distinct runtime or measured-boot policy text under
 * its SHA-256 (hex), with what its one parse found (`generator` for runtime policies). `allowlists` and
 * `mbpolicies` rows (one per name, as upstream) reference a body by `body_digest` instead of holding the text, so a
 * fleet enrolled with one large policy stores it once. Existing texts move into the new table row by row.
 */
import { createHash } from 'node:crypto'
import { type Kysely, sql } from 'kysely'
import { mysqlTableOptions, sqlDialectOf, textType } from '../sql-dialect.ts'

const TABLES = [
  { table: 'allowlists', column: 'ima_policy', kind: 'runtime' },
  { table: 'mbpolicies', column: 'mb_policy', kind: 'mb' },
] as const

// biome-ignore lint/suspicious/noExplicitAny: migrations never import app types (kysely convention)
export async function up(db: Kysely<any>): Promise<void> {
  const text = textType(db)
  await db.schema
    .createTable('verifier_policy_bodies')
    .ifNotExists()
    .$call(mysqlTableOptions(db))
    .addColumn('digest', 'varchar(64)', (c) => c.primaryKey())
    .addColumn('kind', 'varchar(16)', (c) => c.notNull())
    .addColumn('generator', 'integer')
    .addColumn('body', text, (c) => c.notNull())
    .execute()
  for (const { table, column, kind } of TABLES) {
    await db.schema
      .alterTable(table)
      .addColumn('body_digest', 'varchar(64)', (c) => c.references('verifier_policy_bodies.digest'))
      .execute()
    await db.schema.createIndex(`ix_${table}_body_digest`).on(table).column('body_digest').execute()
    // one row at a time: bodies can be tens of megabytes each
    const ids = await db.selectFrom(table).select('id').where(column, 'is not', null).orderBy('id').execute()
    for (const { id } of ids) {
      const row = await db
        .selectFrom(table)
        .select([column, ...(kind === 'runtime' ? ['generator'] : [])])
        .where('id', '=', id)
        .executeTakeFirstOrThrow()
      const body = row[column] as string
      const digest = createHash('sha256').update(body).digest('hex')
      const insert = db
        .insertInto('verifier_policy_bodies')
        .values({ digest, kind, generator: row.generator ?? null, body })
      // a body two policies share is stored once
      await (sqlDialectOf(db) === 'mysql'
        ? insert.onDuplicateKeyUpdate({ digest: sql.ref('digest') })
        : insert.onConflict((oc) => oc.column('digest').doNothing())
      ).execute()
      await db
        .updateTable(table)
        .set({ body_digest: digest, [column]: null })
        .where('id', '=', id)
        .execute()
    }
  }
}

// biome-ignore lint/suspicious/noExplicitAny: see up()
export async function down(db: Kysely<any>): Promise<void> {
  for (const { table, column } of TABLES) {
    const rows = await db
      .selectFrom(table)
      .select(['id', 'body_digest'])
      .where('body_digest', 'is not', null)
      .execute()
    for (const r of rows) {
      const b = await db
        .selectFrom('verifier_policy_bodies')
        .select('body')
        .where('digest', '=', r.body_digest)
        .executeTakeFirstOrThrow()
      await db
        .updateTable(table)
        .set({ [column]: b.body })
        .where('id', '=', r.id)
        .execute()
    }
    await db.schema.dropIndex(`ix_${table}_body_digest`).ifExists().execute()
    await db.schema.alterTable(table).dropColumn('body_digest').execute()
  }
  await db.schema.dropTable('verifier_policy_bodies').ifExists().execute()
}
