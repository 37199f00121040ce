/**
 * Verifier tables (keylime-config-and-cli.md §6: verifiermain, allowlists, mbpolicies) plus the multi-verifier lease
 * columns `lease_holder` / `lease_expires` (ms since epoch). JSON columns are TEXT holding JSON.
 */
import { type ColumnDefinitionBuilder, type Kysely, PostgresAdapter } from 'kysely'
import { mysqlTableOptions, textType } from '../sql-dialect.ts'

// biome-ignore lint/suspicious/noExplicitAny: migrations never import app types (kysely convention)
export async function up(db: Kysely<any>): Promise<void> {
  const text = textType(db)
  // SQLite wants INTEGER PRIMARY KEY AUTOINCREMENT, PostgreSQL a serial
  const isPg = db.getExecutor().adapter instanceof PostgresAdapter
  const idType = isPg ? 'serial' : 'integer'
  const id = (c: ColumnDefinitionBuilder) => (isPg ? c.primaryKey() : c.primaryKey().autoIncrement())
  await db.schema
    .createTable('allowlists')
    .ifNotExists()
    .$call(mysqlTableOptions(db))
    .addColumn('id', idType, id)
    .addColumn('name', 'varchar(255)', (c) => c.notNull())
    .addColumn('checksum', 'varchar(128)')
    .addColumn('generator', 'integer')
    .addColumn('tpm_policy', text)
    .addColumn('ima_policy', text)
    .addUniqueConstraint('uniq_allowlists0name', ['name'])
    .execute()
  await db.schema
    .createTable('mbpolicies')
    .ifNotExists()
    .$call(mysqlTableOptions(db))
    .addColumn('id', idType, id)
    .addColumn('name', 'varchar(255)', (c) => c.notNull())
    .addColumn('mb_policy', text)
    .addUniqueConstraint('uniq_mbpolicies_name', ['name'])
    .execute()
  await db.schema
    .createTable('verifiermain')
    .ifNotExists()
    .$call(mysqlTableOptions(db))
    .addColumn('agent_id', 'varchar(80)', (c) => c.primaryKey())
    .addColumn('v', 'varchar(45)')
    .addColumn('ip', 'varchar(255)')
    .addColumn('port', 'integer')
    .addColumn('verifier_id', 'varchar(80)')
    .addColumn('verifier_ip', 'varchar(255)')
    .addColumn('verifier_port', 'integer')
    .addColumn('operational_state', 'integer')
    .addColumn('public_key', 'varchar(500)')
    .addColumn('tpm_policy', text)
    .addColumn('meta_data', text)
    .addColumn('ima_policy_id', 'integer', (c) => c.references('allowlists.id'))
    .addColumn('mb_policy_id', 'integer', (c) => c.references('mbpolicies.id'))
    .addColumn('ima_sign_verification_keys', text)
    .addColumn('revocation_key', 'varchar(2800)')
    .addColumn('accept_tpm_hash_algs', text)
    .addColumn('accept_tpm_encryption_algs', text)
    .addColumn('accept_tpm_signing_algs', text)
    .addColumn('hash_alg', 'varchar(10)')
    .addColumn('enc_alg', 'varchar(10)')
    .addColumn('sign_alg', 'varchar(10)')
    .addColumn('boottime', 'integer')
    .addColumn('ima_pcrs', text)
    .addColumn('pcr10', text)
    .addColumn('next_ima_ml_entry', 'integer')
    .addColumn('ima_state', text)
    .addColumn('severity_level', 'integer')
    .addColumn('last_event_id', 'varchar(200)')
    .addColumn('learned_ima_keyrings', text)
    .addColumn('supported_version', 'varchar(20)')
    .addColumn('ak_tpm', 'varchar(500)')
    .addColumn('mtls_cert', text)
    .addColumn('attestation_count', 'integer', (c) => c.notNull().defaultTo(0))
    .addColumn('last_received_quote', 'bigint')
    .addColumn('last_successful_attestation', 'bigint')
    .addColumn('tpm_clockinfo', text)
    .addColumn('accept_attestations', 'integer', (c) => c.notNull().defaultTo(1))
    .addColumn('consecutive_attestation_failures', 'integer')
    .addColumn('lease_holder', 'varchar(255)')
    .addColumn('lease_expires', 'bigint')
    .execute()
  await db.schema
    .createIndex('ix_verifiermain_verifier_lease')
    .ifNotExists()
    .on('verifiermain')
    .columns(['verifier_id', 'lease_holder'])
    .execute()
}

// biome-ignore lint/suspicious/noExplicitAny: see up()
export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.dropTable('verifiermain').ifExists().execute()
  await db.schema.dropTable('mbpolicies').ifExists().execute()
  await db.schema.dropTable('allowlists').ifExists().execute()
}
