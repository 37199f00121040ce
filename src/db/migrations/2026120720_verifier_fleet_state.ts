/**
 * Verifier tables for a fleet on one shared database:
 * - `verifier_holders`: one row per running verifier instance (`holder`, `expires` in ms since epoch). The heartbeat
 *   extends this one row; an agent's lease is valid while the row of its `lease_holder` has not expired, so renewing
 *   costs one statement whatever the number of agents, and never touches an agent row.
 * - `verifier_attestation_state`: the columns every successful attestation rewrites (count, times, clock, IMA state
 *   and offset), one narrow row per agent apart from the wide enrolment row in `verifiermain`, so the hot write
 *   leaves few and small dead row versions (fillfactor leaves room for in-page HOT updates on PostgreSQL).
 * Existing values move to the new table; the old columns of `verifiermain` are cleared (they are no longer
 * maintained) and `lease_expires` is no longer used.
 */
import { type Kysely, PostgresAdapter, sql } from 'kysely'
import { mysqlTableOptions, textType } from '../sql-dialect.ts'

const MOVED = [
  'attestation_count',
  'last_received_quote',
  'last_successful_attestation',
  'tpm_clockinfo',
  'ima_state',
  'next_ima_ml_entry',
] as const

// biome-ignore lint/suspicious/noExplicitAny: migrations never import app types (kysely convention)
export async function up(db: Kysely<any>): Promise<void> {
  const text = textType(db)
  const isPg = db.getExecutor().adapter instanceof PostgresAdapter
  await db.schema
    .createTable('verifier_holders')
    .ifNotExists()
    .$call(mysqlTableOptions(db))
    .addColumn('holder', 'varchar(255)', (c) => c.primaryKey())
    .addColumn('expires', 'bigint', (c) => c.notNull())
    .execute()
  await db.schema
    .createTable('verifier_attestation_state')
    .ifNotExists()
    .$call(mysqlTableOptions(db))
    .addColumn('agent_id', 'varchar(80)', (c) =>
      c.primaryKey().references('verifiermain.agent_id').onDelete('cascade'),
    )
    .addColumn('attestation_count', 'integer', (c) => c.notNull().defaultTo(0))
    .addColumn('last_received_quote', 'bigint')
    .addColumn('last_successful_attestation', 'bigint')
    .addColumn('tpm_clockinfo', text)
    .addColumn('next_ima_ml_entry', 'integer')
    .addColumn('ima_state', text)
    .execute()
  if (isPg) await sql`ALTER TABLE verifier_attestation_state SET (fillfactor = 50)`.execute(db)
  const cols = MOVED.join(', ')
  await sql
    .raw(
      `INSERT INTO verifier_attestation_state (agent_id, ${cols}) SELECT agent_id, ${cols} FROM verifiermain`,
    )
    .execute(db)
  await db
    .updateTable('verifiermain')
    .set({
      attestation_count: 0,
      last_received_quote: null,
      last_successful_attestation: null,
      tpm_clockinfo: null,
      ima_state: null,
      next_ima_ml_entry: null,
      lease_expires: null,
    })
    .execute()
  // the holder lookups of claims, reconcile and metrics, instead of a scan of every agent
  await db.schema
    .createIndex('ix_verifiermain_lease_holder')
    .ifNotExists()
    .on('verifiermain')
    .column('lease_holder')
    .execute()
}

// biome-ignore lint/suspicious/noExplicitAny: see up()
export async function down(db: Kysely<any>): Promise<void> {
  for (const c of MOVED)
    await sql
      .raw(
        `UPDATE verifiermain SET ${c} = (SELECT s.${c} FROM verifier_attestation_state s WHERE s.agent_id = verifiermain.agent_id) WHERE EXISTS (SELECT 1 FROM verifier_attestation_state s WHERE s.agent_id = verifiermain.agent_id)`,
      )
      .execute(db)
  await db.schema.dropIndex('ix_verifiermain_lease_holder').ifExists().execute()
  await db.schema.dropTable('verifier_attestation_state').ifExists().execute()
  await db.schema.dropTable('verifier_holders').ifExists().execute()
}
