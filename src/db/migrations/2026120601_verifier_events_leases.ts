/**
 * Verifier: `last_event_context` (JSON: the specific reason behind `last_event_id`, e.g. which quote check failed),
 * `lease_epoch` (bumped on every claim of an agent; the loop's writes are fenced by holder and epoch, so a stale
 * holder cannot write) and `config_version` (bumped by a trigger whenever a column the loop attests with changes,
 * whoever changes it, so a running verifier notices edits made by another verifier or an operator).
 */
import { type Kysely, PostgresAdapter, sql } from 'kysely'
import { sqlDialectOf, textType } from '../sql-dialect.ts'

/** Columns whose change makes the loop reload the agent (not the ones the loop itself writes). */
export const CONFIG_COLUMNS = [
  'v',
  'ip',
  'port',
  'tpm_policy',
  'meta_data',
  'ima_policy_id',
  'mb_policy_id',
  'ima_sign_verification_keys',
  'revocation_key',
  'accept_tpm_hash_algs',
  'accept_tpm_encryption_algs',
  'accept_tpm_signing_algs',
  'ak_tpm',
  'mtls_cert',
] as const

// biome-ignore lint/suspicious/noExplicitAny: migrations never import app types (kysely convention)
export async function up(db: Kysely<any>): Promise<void> {
  const text = textType(db)
  const isPg = db.getExecutor().adapter instanceof PostgresAdapter
  await db.schema.alterTable('verifiermain').addColumn('last_event_context', text).execute()
  await db.schema
    .alterTable('verifiermain')
    .addColumn('lease_epoch', 'integer', (c) => c.notNull().defaultTo(0))
    .execute()
  await db.schema
    .alterTable('verifiermain')
    .addColumn('config_version', 'integer', (c) => c.notNull().defaultTo(0))
    .execute()
  const cols = CONFIG_COLUMNS.join(', ')
  if (isPg) {
    const changed = CONFIG_COLUMNS.map((c) => `OLD.${c} IS DISTINCT FROM NEW.${c}`).join(' OR ')
    await sql
      .raw(
        `CREATE OR REPLACE FUNCTION verifiermain_bump_config_version() RETURNS trigger AS $$
         BEGIN NEW.config_version := OLD.config_version + 1; RETURN NEW; END $$ LANGUAGE plpgsql`,
      )
      .execute(db)
    await sql
      .raw(
        `CREATE TRIGGER verifiermain_config_version BEFORE UPDATE OF ${cols} ON verifiermain
         FOR EACH ROW WHEN (${changed}) EXECUTE FUNCTION verifiermain_bump_config_version()`,
      )
      .execute(db)
  } else if (sqlDialectOf(db) === 'mysql') {
    // MySQL triggers fire on any UPDATE of the row (no column list, no WHEN): the condition moves into the body,
    // which sets the new row's column directly (a BEFORE trigger may not update its own table)
    const changed = CONFIG_COLUMNS.map((c) => `NOT (OLD.${c} <=> NEW.${c})`).join(' OR ')
    await sql
      .raw(
        `CREATE TRIGGER verifiermain_config_version BEFORE UPDATE ON verifiermain FOR EACH ROW
         SET NEW.config_version = IF(${changed}, OLD.config_version + 1, NEW.config_version)`,
      )
      .execute(db)
  } else {
    const changed = CONFIG_COLUMNS.map((c) => `OLD.${c} IS NOT NEW.${c}`).join(' OR ')
    await sql
      .raw(
        `CREATE TRIGGER verifiermain_config_version AFTER UPDATE OF ${cols} ON verifiermain
         FOR EACH ROW WHEN ${changed}
         BEGIN UPDATE verifiermain SET config_version = OLD.config_version + 1 WHERE agent_id = NEW.agent_id; END`,
      )
      .execute(db)
  }
}

// biome-ignore lint/suspicious/noExplicitAny: see up()
export async function down(db: Kysely<any>): Promise<void> {
  const isPg = db.getExecutor().adapter instanceof PostgresAdapter
  await sql
    .raw(`DROP TRIGGER IF EXISTS verifiermain_config_version${isPg ? ' ON verifiermain' : ''}`)
    .execute(db)
  for (const c of ['config_version', 'lease_epoch', 'last_event_context'])
    await db.schema.alterTable('verifiermain').dropColumn(c).execute()
}
