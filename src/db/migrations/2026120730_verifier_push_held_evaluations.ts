/**
 * Push mode: an index of the attestations being evaluated by their hold expiry (`evaluation_expires`), so the
 * monitor's search for evaluations whose verifier died (`takeAbandonedEvaluations`, every few seconds) reads the few
 * held rows instead of scanning every attestation. Only evaluating rows have a hold (it is cleared with the verdict):
 * on SQLite and PostgreSQL the index holds just those rows (partial), so the other writes never touch it; MySQL has no
 * partial indexes and indexes every row.
 */
import { type Kysely, sql } from 'kysely'
import { sqlDialectOf } from '../sql-dialect.ts'

const INDEX = 'ix_attestations_evaluation_expires'

// biome-ignore lint/suspicious/noExplicitAny: migrations never import app types (kysely convention)
export async function up(db: Kysely<any>): Promise<void> {
  if (sqlDialectOf(db) === 'mysql')
    await db.schema.createIndex(INDEX).on('attestations').column('evaluation_expires').execute()
  else
    await db.schema
      .createIndex(INDEX)
      .ifNotExists()
      .on('attestations')
      .column('evaluation_expires')
      .where(sql.ref('evaluation_expires'), 'is not', null)
      .execute()
}

// biome-ignore lint/suspicious/noExplicitAny: see up()
export async function down(db: Kysely<any>): Promise<void> {
  if (sqlDialectOf(db) === 'mysql') await db.schema.dropIndex(INDEX).on('attestations').execute()
  else await db.schema.dropIndex(INDEX).ifExists().execute()
}
