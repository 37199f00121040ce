/**
 * `ek_ca_chain` on activated and pending registrations: the EK CA chain an agent read from its TPM's NV (PEM
 * bundle), so the tenant can build the EK certificate's path through intermediates its store does not hold.
 */
import type { Kysely } from 'kysely'
import { textType } from '../sql-dialect.ts'

// biome-ignore lint/suspicious/noExplicitAny: migrations never import app types (kysely convention)
export async function up(db: Kysely<any>): Promise<void> {
  const text = textType(db)
  await db.schema.alterTable('registrarmain').addColumn('ek_ca_chain', text).execute()
  await db.schema.alterTable('registrarpending').addColumn('ek_ca_chain', text).execute()
}

// biome-ignore lint/suspicious/noExplicitAny: see up()
export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('registrarpending').dropColumn('ek_ca_chain').execute()
  await db.schema.alterTable('registrarmain').dropColumn('ek_ca_chain').execute()
}
