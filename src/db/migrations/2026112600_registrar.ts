/**
 * Registrar table `registrarmain` (keylime-config-and-cli.md §6). Binary TPM structures are stored as base64 TEXT
 * (upstream's String(500) is too short for RSA-4096 EKs, so TEXT everywhere a key or certificate lives).
 */
import type { Kysely } from 'kysely'
import { mysqlTableOptions, textType } from '../sql-dialect.ts'

// biome-ignore lint/suspicious/noExplicitAny: migrations never import app types (kysely convention)
export async function up(db: Kysely<any>): Promise<void> {
  const text = textType(db)
  await db.schema
    .createTable('registrarmain')
    .ifNotExists()
    .$call(mysqlTableOptions(db))
    .addColumn('agent_id', 'varchar(80)', (c) => c.primaryKey())
    .addColumn('key', 'varchar(45)')
    .addColumn('aik_tpm', text)
    .addColumn('ek_tpm', text)
    .addColumn('ekcert', text)
    .addColumn('iak_tpm', text)
    .addColumn('idevid_tpm', text)
    .addColumn('iak_cert', text)
    .addColumn('idevid_cert', text)
    .addColumn('mtls_cert', text)
    .addColumn('virtual', 'integer', (c) => c.notNull().defaultTo(0))
    .addColumn('ip', 'varchar(255)')
    .addColumn('port', 'integer')
    .addColumn('active', 'integer', (c) => c.notNull().defaultTo(0))
    .addColumn('provider_keys', text)
    .addColumn('regcount', 'integer', (c) => c.notNull().defaultTo(0))
    .execute()
}

// biome-ignore lint/suspicious/noExplicitAny: see up()
export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.dropTable('registrarmain').ifExists().execute()
}
