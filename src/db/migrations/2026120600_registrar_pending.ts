/**
 * Registrations awaiting their credential activation live in `registrarpending`, apart from the activated records
 * in `registrarmain`: a registration changes nothing of an agent's record until the TPM holding the EK has proved
 * it holds the AK too. Several may wait for one agent (one per challenge) so that a replayed registration cannot
 * displace the challenge the real agent is answering; `registered_at` (ms since epoch) lets them expire.
 * Rows that older versions left unactivated in `registrarmain` move here and expire like any other.
 */
import { type Kysely, sql } from 'kysely'
import { mysqlTableOptions, textType } from '../sql-dialect.ts'

const FIELDS = [
  'aik_tpm',
  'ek_tpm',
  'ekcert',
  'iak_tpm',
  'idevid_tpm',
  'iak_cert',
  'idevid_cert',
  'mtls_cert',
  'ip',
  'port',
] as const

// biome-ignore lint/suspicious/noExplicitAny: migrations never import app types (kysely convention)
export async function up(db: Kysely<any>): Promise<void> {
  const text = textType(db)
  await db.schema
    .createTable('registrarpending')
    .ifNotExists()
    .$call(mysqlTableOptions(db))
    .addColumn('agent_id', 'varchar(80)', (c) => c.notNull())
    .addColumn('key', 'varchar(45)', (c) => c.notNull())
    .addColumn('aik_tpm', text)
    .addColumn('ek_tpm', text)
    .addColumn('ekcert', text)
    .addColumn('iak_tpm', text)
    .addColumn('idevid_tpm', text)
    .addColumn('iak_cert', text)
    .addColumn('idevid_cert', text)
    .addColumn('mtls_cert', text)
    .addColumn('ip', 'varchar(255)')
    .addColumn('port', 'integer')
    .addColumn('registered_at', 'bigint', (c) => c.notNull())
    .addPrimaryKeyConstraint('pk_registrarpending', ['agent_id', 'key'])
    .execute()
  await db.schema
    .createIndex('ix_registrarpending_registered_at')
    .ifNotExists()
    .on('registrarpending')
    .column('registered_at')
    .execute()
  const now = Date.now()
  await db
    .insertInto('registrarpending')
    .columns(['agent_id', 'key', ...FIELDS, 'registered_at'])
    .expression(
      db
        .selectFrom('registrarmain')
        .select(['agent_id', 'key', ...FIELDS, sql<number>`${sql.lit(now)}`.as('registered_at')])
        .where('active', '=', 0)
        .where('key', 'is not', null),
    )
    .execute()
  await db.deleteFrom('registrarmain').where('active', '=', 0).execute()
}

// biome-ignore lint/suspicious/noExplicitAny: see up()
export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.dropTable('registrarpending').ifExists().execute()
}
