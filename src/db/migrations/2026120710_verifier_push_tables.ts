/**
 * Push mode (API 3.0): upstream's `sessions` and `attestations` tables with upstream's names and columns
 * (keylime-config-and-cli.md §6), so a database taken over from upstream keeps its rows, plus what a group of
 * stateless verifiers needs to share through the database:
 * - `attestations`: the requested evidence and its chosen parameters (`evidence_requested`, JSON), the submitted
 *   evidence until it is verified (`evidence_collected`, JSON; logs are dropped once verified), the IMA offsets
 *   (`ima_starting_offset`, `ima_certified_entry_count`) and replay state after a pass (`ima_state`), the failure
 *   (`event_id`, `event_context`) and who is verifying it until when (`evaluation_holder`, `evaluation_expires`,
 *   ms), so another verifier finishes an evaluation whose verifier died;
 * - `verifiermain.push_deadline` (ms since epoch): evidence is overdue after it (the push monitor fails the agent).
 */
import { type Kysely, PostgresAdapter } from 'kysely'
import { mysqlTableOptions, textType } from '../sql-dialect.ts'

// biome-ignore lint/suspicious/noExplicitAny: migrations never import app types (kysely convention)
export async function up(db: Kysely<any>): Promise<void> {
  const text = textType(db)
  const blob = db.getExecutor().adapter instanceof PostgresAdapter ? 'bytea' : 'blob'
  await db.schema
    .createTable('sessions')
    .ifNotExists()
    .$call(mysqlTableOptions(db))
    .addColumn('session_id', 'varchar(36)', (c) => c.primaryKey())
    .addColumn('token_hash', 'varchar(64)')
    .addColumn('token_salt', 'varchar(32)')
    .addColumn('agent_id', 'varchar(80)', (c) => c.notNull())
    .addColumn('active', 'boolean', (c) => c.notNull().defaultTo(false))
    .addColumn('nonce', blob)
    .addColumn('hash_algorithm', 'varchar(15)')
    .addColumn('signing_scheme', 'varchar(15)')
    .addColumn('ak_attest', blob)
    .addColumn('ak_sign', blob)
    .addColumn('nonce_created_at', 'varchar(32)')
    .addColumn('nonce_expires_at', 'varchar(32)')
    .addColumn('pop_received_at', 'varchar(32)')
    .addColumn('token_expires_at', 'varchar(32)')
    .execute()
  await db.schema
    .createIndex('ix_sessions_agent_id')
    .ifNotExists()
    .on('sessions')
    .column('agent_id')
    .execute()
  await db.schema
    .createTable('attestations')
    .ifNotExists()
    .$call(mysqlTableOptions(db))
    .addColumn('agent_id', 'varchar(80)', (c) =>
      c.notNull().references('verifiermain.agent_id').onDelete('cascade'),
    )
    .addColumn('index', 'integer', (c) => c.notNull())
    .addColumn('stage', 'varchar(25)', (c) => c.notNull().defaultTo('awaiting_evidence'))
    .addColumn('evaluation', 'varchar(10)', (c) => c.notNull().defaultTo('pending'))
    .addColumn('failure_reason', 'varchar(25)')
    .addColumn('system_info__boot_time', 'varchar(32)')
    .addColumn('capabilities_received_at', 'varchar(32)')
    .addColumn('challenges_expire_at', 'varchar(32)')
    .addColumn('evidence_received_at', 'varchar(32)')
    .addColumn('verification_completed_at', 'varchar(32)')
    .addPrimaryKeyConstraint('pk_attestations', ['agent_id', 'index'])
    .execute()
  for (const [name, type] of [
    ['evidence_requested', text],
    ['evidence_collected', text],
    ['ima_starting_offset', 'integer'],
    ['ima_certified_entry_count', 'integer'],
    ['ima_state', text],
    ['event_id', 'varchar(200)'],
    ['event_context', text],
    ['evaluation_holder', 'varchar(255)'],
    ['evaluation_expires', 'bigint'],
  ] as const)
    await db.schema.alterTable('attestations').addColumn(name, type).execute()
  await db.schema.alterTable('verifiermain').addColumn('push_deadline', 'bigint').execute()
  await db.schema
    .createIndex('ix_verifiermain_push_deadline')
    .ifNotExists()
    .on('verifiermain')
    .column('push_deadline')
    .execute()
}

// biome-ignore lint/suspicious/noExplicitAny: see up()
export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.dropIndex('ix_verifiermain_push_deadline').ifExists().execute()
  await db.schema.alterTable('verifiermain').dropColumn('push_deadline').execute()
  await db.schema.dropTable('attestations').ifExists().execute()
  await db.schema.dropTable('sessions').ifExists().execute()
}
