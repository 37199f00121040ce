/**
 * Takeover of a database created and used by upstream Keylime 7.x. Upstream records its schema position in
 * `alembic_version_cloud_verifier` / `alembic_version_registrar`; a known revision is converted, in one transaction
 * (on MySQL, which commits table changes on their own, step by step with every step undone on failure),
 * into the shape of this project's first migration of the service (2026112600_registrar, 2026112601_verifier), which
 * kysely then records as applied, so the ordinary migration chain continues from there. Every row is kept: upstream's
 * tables are set aside, ours are created by that very migration, the rows are copied over converted (rows.ts), the
 * counts are compared and the old tables dropped. Upstream's push tables (`attestations`, `evidence_items`,
 * `sessions`) are left in place in the shape of upstream's latest revision. The Alembic table is renamed
 * (`upstream_alembic_version_*`): it records where the database came from, and an upstream service started on the
 * converted database by mistake finds no version and refuses to create tables that exist, instead of writing to it.
 */
import { type Kysely, type Migration, sql, type Transaction } from 'kysely'
import { DbError } from '../db-error.ts'
import { migrate } from '../migrate.ts'
import { REGISTRAR_MIGRATIONS, type ServiceName, VERIFIER_MIGRATIONS } from '../migrations/index.ts'
import { type SqlDialect, sqlDialectOf } from '../sql-dialect.ts'
import {
  atLeast,
  describeRevision,
  revisionIndex,
  UPSTREAM_REVISIONS,
  UPSTREAM_REVISIONS_BEFORE_7,
} from './revisions.ts'
import {
  type ConversionCounts,
  convertRegistrarRow,
  convertVerifierRow,
  dssePayload,
  hasDmPolicy,
  type UpstreamRow,
} from './rows.ts'

// biome-ignore lint/suspicious/noExplicitAny: the takeover reads upstream tables our types do not describe
type AnyDb = Kysely<any> | Transaction<any>

/** Upstream's name for each service's database (its Alembic version table is `alembic_version_<name>`). */
const UPSTREAM_NAME: Record<ServiceName, string> = { registrar: 'registrar', verifier: 'cloud_verifier' }
const FIRST_MIGRATION: Record<ServiceName, string> = {
  registrar: '2026112600_registrar',
  verifier: '2026112601_verifier',
}
/** The tables of ours that the first migration creates and the takeover rebuilds, parents first. */
const OWN_TABLES: Record<ServiceName, readonly string[]> = {
  registrar: ['registrarmain'],
  verifier: ['allowlists', 'mbpolicies', 'verifiermain'],
}
const PRIMARY_KEY: Record<string, string> = {
  registrarmain: 'agent_id',
  verifiermain: 'agent_id',
  allowlists: 'id',
  mbpolicies: 'id',
}
/** Rows per copy batch: policies can be megabytes each, agent rows are small. */
const BATCH: Record<string, number> = {
  allowlists: 20,
  mbpolicies: 50,
  registrarmain: 500,
  verifiermain: 500,
}
/** Where PostgreSQL's upstream tables wait during the takeover (same names, other schema: no name clashes). */
const PG_ASIDE_SCHEMA = 'keylime_takeover_upstream'
/** SQLite's and MySQL's names for upstream's tables during the takeover. */
const SQLITE_ASIDE_PREFIX = 'upstream_takeover_'

export type DatabaseOrigin =
  | { kind: 'empty' }
  | { kind: 'keylime-ts' }
  | { kind: 'upstream'; revision: string }
  | { kind: 'unknown'; reason: string }

export interface TakeoverReport {
  service: ServiceName
  revision: string
  /** `<revision> (Keylime 7.x)` */
  description: string
  tables: { name: string; rows: number; note: string }[]
  conversions: ConversionCounts
  notes: string[]
}

/** The dialect of any Kysely handle (a transaction or a connection too, which the dialect registry does not know). */
function dialectOf(db: AnyDb): SqlDialect {
  return sqlDialectOf(db)
}

async function tableNames(db: AnyDb): Promise<Set<string>> {
  if (sqlDialectOf(db) === 'mysql') {
    const q = sql<{
      name: string
    }>`select table_name as name from information_schema.tables where table_schema = database()`
    return new Set((await q.execute(db)).rows.map((r) => r.name))
  }
  const dialect = dialectOf(db)
  const q =
    dialect === 'postgres'
      ? sql<{
          name: string
        }>`select table_name as name from information_schema.tables where table_schema = current_schema()`
      : sql<{ name: string }>`select name from sqlite_master where type = 'table'`
  return new Set((await q.execute(db)).rows.map((r) => r.name))
}

/** What a service's database holds: nothing yet, ours, upstream's at a revision, or something else. */
export async function databaseOrigin(db: AnyDb, service: ServiceName): Promise<DatabaseOrigin> {
  let tables: Set<string>
  try {
    tables = await tableNames(db)
  } catch (err) {
    throw new DbError(`cannot read the ${service} database: ${(err as Error).message}`, { cause: err })
  }
  const kyselyTable = `kysely_migration_${service}`
  if (tables.has(kyselyTable)) {
    const { rows } = await sql<{ name: string }>`select name from ${sql.table(kyselyTable)}`.execute(db)
    if (rows.some((r) => r.name === FIRST_MIGRATION[service])) return { kind: 'keylime-ts' }
  }
  const versionTable = `alembic_version_${UPSTREAM_NAME[service]}`
  if (tables.has(versionTable)) {
    const { rows } = await sql<{
      version_num: string
    }>`select version_num from ${sql.table(versionTable)}`.execute(db)
    if (rows.length !== 1 || !rows[0]?.version_num)
      return { kind: 'unknown', reason: `${versionTable} holds ${rows.length} revisions, not one` }
    return { kind: 'upstream', revision: rows[0].version_num }
  }
  const main = service === 'verifier' ? 'verifiermain' : 'registrarmain'
  if (tables.has(main))
    return {
      kind: 'unknown',
      reason: `table ${main} exists without a Keylime TS migration record or an upstream Alembic version`,
    }
  return { kind: 'empty' }
}

/** The refusal for a revision this version cannot convert. */
function refuseRevision(service: ServiceName, revision: string): DbError {
  const db = `${service} database (upstream ${UPSTREAM_NAME[service]})`
  if ((UPSTREAM_REVISIONS_BEFORE_7 as readonly string[]).includes(revision))
    return new DbError(
      `the ${db} is at Alembic revision ${revision}, from Keylime 6.x: run upstream Keylime 7.x on it once ` +
        '(auto_migrate_db = True) to bring it to a 7.x revision, then start Keylime TS',
    )
  const first = UPSTREAM_REVISIONS[0]?.id
  const last = UPSTREAM_REVISIONS.at(-1)?.id
  return new DbError(
    `the ${db} is at Alembic revision ${revision}, which Keylime TS does not know: it takes over revisions ` +
      `${first} (Keylime 7.0.0) to ${last} (Keylime 7.14.3); nothing was changed`,
  )
}

/** Counters and notes of one run, with the source tables to read from. */
interface Run {
  db: AnyDb
  dialect: SqlDialect
  revision: string
  dryRun: boolean
  report: TakeoverReport
  /** Where an upstream table is read from (its own name in a dry run, set aside otherwise). */
  source(table: string): string
}

async function rowCount(db: AnyDb, table: string): Promise<number> {
  const { rows } = await sql<{ n: number | string }>`select count(*) as n from ${sql.table(table)}`.execute(
    db,
  )
  return Number(rows[0]?.n ?? 0)
}

/** Reads `table` in primary-key order, a batch at a time. */
async function* batches(run: Run, table: string): AsyncGenerator<UpstreamRow[]> {
  const pk = PRIMARY_KEY[table] as string
  const size = BATCH[table] ?? 200
  let last: unknown
  for (;;) {
    const after = last === undefined ? sql`` : sql`where ${sql.ref(pk)} > ${last}`
    const { rows } = await sql<UpstreamRow>`select * from ${sql.table(run.source(table))} ${after}
      order by ${sql.ref(pk)} limit ${sql.lit(size)}`.execute(run.db)
    if (rows.length === 0) return
    yield rows
    last = rows.at(-1)?.[pk]
    if (rows.length < size) return
  }
}

async function insertAll(run: Run, table: string, rows: Record<string, unknown>[]): Promise<void> {
  if (run.dryRun || rows.length === 0) return
  await run.db.insertInto(table).values(rows).execute()
}

function bump(run: Run, what: string, n = 1): void {
  run.report.conversions[what] = (run.report.conversions[what] ?? 0) + n
}

async function copyRegistrar(run: Run): Promise<void> {
  let n = 0
  for await (const rows of batches(run, 'registrarmain')) {
    await insertAll(
      run,
      'registrarmain',
      rows.map((r) => convertRegistrarRow(r, run.report.conversions)),
    )
    n += rows.length
  }
  run.report.tables.push({
    name: 'registrarmain',
    rows: n,
    note: 'rebuilt: ip VARCHAR(15) → VARCHAR(255), keys and certificates → TEXT, active and virtual → INTEGER NOT NULL',
  })
  run.report.notes.push(
    'registrations never activated (active = 0) move to registrarpending and expire there (2026120600_registrar_pending)',
  )
}

async function copyVerifier(run: Run, tables: Set<string>): Promise<void> {
  const policiesWithDm = new Set<number>()
  let n = 0
  for await (const rows of batches(run, 'allowlists')) {
    const out = rows.map((r) => {
      const stored = r.ima_policy === null || r.ima_policy === undefined ? null : String(r.ima_policy)
      const payload = dssePayload(stored)
      if (payload !== null) bump(run, 'runtime policy kept as its verified DSSE payload')
      const policy = payload ?? stored
      if (hasDmPolicy(policy)) policiesWithDm.add(Number(r.id))
      return {
        id: Number(r.id),
        name: String(r.name),
        checksum: r.checksum ?? null,
        generator: r.generator === null || r.generator === undefined ? null : Number(r.generator),
        tpm_policy: r.tpm_policy ?? null,
        ima_policy: policy,
      }
    })
    await insertAll(run, 'allowlists', out)
    n += rows.length
  }
  run.report.tables.push({ name: 'allowlists', rows: n, note: 'runtime policies' })

  n = 0
  const mbNames = new Set<string>()
  if (tables.has('mbpolicies')) {
    for await (const rows of batches(run, 'mbpolicies')) {
      const out = rows.map((r) => ({
        id: Number(r.id),
        name: String(r.name),
        mb_policy: r.mb_policy ?? null,
      }))
      for (const r of out) mbNames.add(r.name)
      await insertAll(run, 'mbpolicies', out)
      n += rows.length
    }
  }
  // before 7.10 each agent kept its measured-boot reference state in verifiermain.mb_refstate; upstream's
  // f4196d13fe45/9d2f6fab52b1 move it to a policy named after the agent, and so does the takeover
  const movesRefstates = !atLeast(run.revision, 'f4196d13fe45')
  let nextMbId = 1
  if (movesRefstates && !run.dryRun) {
    const { rows } = await sql<{ m: number | null }>`select max(id) as m from mbpolicies`.execute(run.db)
    nextMbId = Number(rows[0]?.m ?? 0) + 1
  }
  const movedRefstates = { n: 0 }

  let agents = 0
  for await (const rows of batches(run, 'verifiermain')) {
    const out: Record<string, unknown>[] = []
    const newMb: Record<string, unknown>[] = []
    for (const r of rows) {
      const policyId =
        r.ima_policy_id === null || r.ima_policy_id === undefined ? null : Number(r.ima_policy_id)
      const row = convertVerifierRow(r, run.report.conversions, {
        noImaContinuation: policyId !== null && policiesWithDm.has(policyId),
      })
      if (movesRefstates) {
        const name = String(r.agent_id)
        if (mbNames.has(name)) {
          run.report.notes.push(
            `agent ${name}: measured-boot policy ${name} exists already; mb_refstate not moved`,
          )
        } else {
          mbNames.add(name)
          newMb.push({ id: nextMbId, name, mb_policy: r.mb_refstate ?? null })
          row.mb_policy_id = nextMbId++
          movedRefstates.n++
        }
      }
      out.push(row)
    }
    await insertAll(run, 'mbpolicies', newMb)
    await insertAll(run, 'verifiermain', out)
    agents += rows.length
  }
  run.report.tables.push({
    name: 'mbpolicies',
    rows: n + movedRefstates.n,
    note: movesRefstates
      ? `measured-boot policies (${movedRefstates.n} from verifiermain.mb_refstate, one per agent as upstream 7.10 does)`
      : 'measured-boot policies',
  })
  const dropped = ['tpm_version (never used by upstream)']
  if (movesRefstates) dropped.push('mb_refstate (moved to mbpolicies)')
  run.report.tables.push({
    name: 'verifiermain',
    rows: agents,
    note: `rebuilt: + ima_state, lease_holder, lease_expires; − ${dropped.join(', ')}; pcr10 BLOB → hex TEXT`,
  })
  for (const push of ['attestations', 'evidence_items', 'sessions'])
    if (tables.has(push))
      run.report.tables.push({
        name: push,
        rows: await rowCount(run.db, push),
        note: 'push-mode table, kept as upstream left it',
      })
}

/** Upstream push tables of development revisions brought to the shape of upstream's latest revision. */
async function alignPushTables(run: Run, tables: Set<string>): Promise<void> {
  if (tables.has('sessions') && !atLeast(run.revision, '5a8b2c3d4e6f')) {
    // upstream's 5a8b2c3d4e6f drops these sessions too: their bearer tokens were stored in clear
    run.report.notes.push(
      'sessions: plain-token push sessions dropped, as upstream 5a8b2c3d4e6f does (agents open new ones)',
    )
    if (!run.dryRun) await run.db.schema.dropTable('sessions').execute()
    tables.delete('sessions')
  }
  if (tables.has('evidence_items') && !atLeast(run.revision, 'a59cc9366774') && run.dialect === 'mysql') {
    // MySQL refuses to change a column of a foreign key (ER_FK_COLUMN_CANNOT_CHANGE)
    run.report.notes.push(
      'evidence_items.agent_id left at VARCHAR(20): MySQL cannot widen a foreign-key column',
    )
  } else if (tables.has('evidence_items') && !atLeast(run.revision, 'a59cc9366774')) {
    run.report.notes.push('evidence_items.agent_id widened to VARCHAR(80), as upstream a59cc9366774 does')
    if (!run.dryRun && run.dialect === 'postgres')
      await sql`alter table evidence_items alter column agent_id type varchar(80)`.execute(run.db)
  }
}

/** Foreign keys of tables that stay (push tables) pointing at tables the takeover rebuilds (PostgreSQL). */
async function pgForeignKeysInto(
  db: AnyDb,
  rebuilt: readonly string[],
): Promise<{ table: string; name: string; definition: string }[]> {
  const { rows } = await sql<{ table: string; name: string; definition: string }>`
    select cl.relname as "table", c.conname as name, pg_get_constraintdef(c.oid) as definition
    from pg_constraint c
    join pg_class cl on cl.oid = c.conrelid
    join pg_namespace ns on ns.oid = cl.relnamespace
    join pg_class target on target.oid = c.confrelid
    where c.contype = 'f' and ns.nspname = current_schema()
      and target.relname in (${sql.join(rebuilt)}) and cl.relname not in (${sql.join(rebuilt)})`.execute(db)
  return rows
}

/** Foreign keys (MySQL) of tables other than `from` pointing at `into`, or of `from` among themselves. */
async function mysqlForeignKeysInto(
  db: AnyDb,
  rebuilt: readonly string[],
  among = false,
): Promise<{ table: string; name: string; columns: string[]; target: string; targetColumns: string[] }[]> {
  const { rows } = await sql<{ t: string; n: string; c: string; rt: string; rc: string }>`
    select k.table_name as t, k.constraint_name as n, k.column_name as c,
      k.referenced_table_name as rt, k.referenced_column_name as rc
    from information_schema.key_column_usage k
    where k.table_schema = database() and k.referenced_table_name in (${sql.join(rebuilt)})
      and ${among ? sql`` : sql`not`} k.table_name in (${sql.join(rebuilt)})
    order by k.table_name, k.constraint_name, k.ordinal_position`.execute(db)
  const byName = new Map<
    string,
    { table: string; name: string; columns: string[]; target: string; targetColumns: string[] }
  >()
  for (const r of rows) {
    const key = `${r.t}.${r.n}`
    const fk = byName.get(key) ?? { table: r.t, name: r.n, columns: [], target: r.rt, targetColumns: [] }
    fk.columns.push(r.c)
    fk.targetColumns.push(r.rc)
    byName.set(key, fk)
  }
  return [...byName.values()]
}

/**
 * MySQL: its table changes commit on their own, so the conversion cannot run in one transaction. Upstream's tables
 * are renamed aside, the push tables' references into them dropped and re-created on the rebuilt tables; any
 * failure undoes what was done (our tables dropped, upstream's renamed back, their references restored), so a
 * failed takeover still leaves the database as it was.
 */
async function convertMysql(
  run: Run,
  service: ServiceName,
  tables: Set<string>,
  own: string[],
  versionTable: string,
): Promise<void> {
  const { db } = run
  const foreignKeys = await mysqlForeignKeysInto(db, own)
  const ids = (names: string[]) => sql.join(names.map((c) => sql.id(c)))
  const addForeignKeys = async (keys = foreignKeys) => {
    for (const fk of keys)
      await sql`alter table ${sql.table(fk.table)} add constraint ${sql.id(fk.name)} foreign key (${ids(fk.columns)})
        references ${sql.table(fk.target)} (${ids(fk.targetColumns)})`.execute(db)
  }
  const dropForeignKeys = async (keys: typeof foreignKeys) => {
    for (const fk of keys)
      await sql`alter table ${sql.table(fk.table)} drop foreign key ${sql.id(fk.name)}`.execute(db)
  }
  // Our tables compare byte for byte (utf8mb4_bin); a foreign key needs the same collation on both sides, so the
  // push tables that stay (server default collation, usually utf8mb4_general_ci) are converted to ours
  const staying = ['attestations', 'evidence_items', 'sessions'].filter((t) => tables.has(t))
  const { rows: collations } = await sql<{ t: string; c: string }>`
    select table_name as t, table_collation as c from information_schema.tables
    where table_schema = database() and table_name in (${sql.join(staying.length > 0 ? staying : [''])})`.execute(
    db,
  )
  // evidence_items references attestations: that key goes while both change (MySQL changes no key's column)
  const amongStaying = staying.length > 0 ? await mysqlForeignKeysInto(db, staying, true) : []
  const convertStaying = async (collation: (table: string) => string) => {
    for (const t of staying)
      await sql`alter table ${sql.table(t)} convert to character set utf8mb4 collate ${sql.raw(collation(t))}`.execute(
        db,
      )
  }
  const original = (t: string) => {
    const c = collations.find((r) => r.t === t)?.c ?? 'utf8mb4_general_ci'
    if (!/^utf8mb4_[a-z0-9_]+$/.test(c)) throw new DbError(`table ${t} has collation ${c}, not utf8mb4`)
    return c
  }
  for (const t of staying) original(t)
  await dropForeignKeys(foreignKeys)
  const setAside: string[] = []
  let created = false
  let converted = false
  try {
    for (const t of own) {
      await sql`rename table ${sql.table(t)} to ${sql.table(run.source(t))}`.execute(db)
      setAside.push(t)
    }
    const first = (service === 'verifier' ? VERIFIER_MIGRATIONS : REGISTRAR_MIGRATIONS)[
      FIRST_MIGRATION[service]
    ]
    created = true
    await (first as Migration).up(db as Kysely<unknown>)
    if (service === 'registrar') await copyRegistrar(run)
    else await copyVerifier(run, tables)
    await compareCounts(run, own)
    converted = true
    await dropForeignKeys(amongStaying)
    await convertStaying(() => 'utf8mb4_bin')
    await addForeignKeys(amongStaying)
    await addForeignKeys()
  } catch (err) {
    if (converted) {
      await dropForeignKeys(amongStaying).catch(() => {})
      await convertStaying(original).catch(() => {})
      await addForeignKeys(amongStaying).catch(() => {})
    }
    if (created)
      for (const t of [...OWN_TABLES[service]].reverse())
        await sql`drop table if exists ${sql.table(t)}`.execute(db).catch(() => {})
    for (const t of setAside.reverse())
      await sql`rename table ${sql.table(run.source(t))} to ${sql.table(t)}`.execute(db).catch(() => {})
    await addForeignKeys().catch(() => {})
    throw err
  }
  for (const t of [...own].reverse()) await sql`drop table ${sql.table(run.source(t))}`.execute(db)
  await sql`rename table ${sql.table(versionTable)} to ${sql.table(`upstream_${versionTable}`)}`.execute(db)
}

/** Every upstream row of the rebuilt tables was copied (or counted into another table, as refstates are). */
async function compareCounts(run: Run, own: readonly string[]): Promise<void> {
  for (const t of own) {
    const before = await rowCount(run.db, run.source(t))
    const after = await rowCount(run.db, t)
    const expected = run.report.tables.find((x) => x.name === t)?.rows ?? before
    if (after !== expected || before > after)
      throw new DbError(`takeover of ${t}: ${before} upstream rows but ${after} copied; nothing was changed`)
  }
}

async function convert(run: Run, service: ServiceName): Promise<void> {
  const { db, dialect } = run
  const tables = await tableNames(db)
  const own = OWN_TABLES[service].filter((t) => tables.has(t))
  const versionTable = `alembic_version_${UPSTREAM_NAME[service]}`
  // another process starting on the same SQLite file may have converted it between our look and our write lock
  if (!tables.has(versionTable)) return
  if (service === 'verifier') await alignPushTables(run, tables)
  if (run.dryRun) {
    if (service === 'registrar') await copyRegistrar(run)
    else await copyVerifier(run, tables)
    return
  }
  if (dialect === 'mysql') return convertMysql(run, service, tables, own, versionTable)
  const foreignKeys = dialect === 'postgres' ? await pgForeignKeysInto(db, own) : []
  if (dialect === 'postgres') {
    await sql`create schema ${sql.id(PG_ASIDE_SCHEMA)}`.execute(db)
    for (const t of own)
      await sql`alter table ${sql.table(t)} set schema ${sql.id(PG_ASIDE_SCHEMA)}`.execute(db)
  } else {
    // references from the tables that stay (push tables) keep naming the rebuilt tables, not the set-aside ones
    await sql`pragma legacy_alter_table = on`.execute(db)
    for (const t of own)
      await sql`alter table ${sql.table(t)} rename to ${sql.table(`${SQLITE_ASIDE_PREFIX}${t}`)}`.execute(db)
    await sql`pragma legacy_alter_table = off`.execute(db)
  }
  const first = (service === 'verifier' ? VERIFIER_MIGRATIONS : REGISTRAR_MIGRATIONS)[
    FIRST_MIGRATION[service]
  ]
  await (first as Migration).up(db as Kysely<unknown>)
  if (service === 'registrar') await copyRegistrar(run)
  else await copyVerifier(run, tables)

  await compareCounts(run, own)
  if (dialect === 'postgres') {
    for (const t of ['allowlists', 'mbpolicies'].filter((x) => own.includes(x)))
      await sql`select setval(pg_get_serial_sequence(${t}, 'id'), coalesce(max(id), 0) + 1, false)
        from ${sql.table(t)}`.execute(db)
    await sql`drop schema ${sql.id(PG_ASIDE_SCHEMA)} cascade`.execute(db)
    for (const fk of foreignKeys)
      await sql`alter table ${sql.table(fk.table)} add constraint ${sql.id(fk.name)} ${sql.raw(fk.definition)}`.execute(
        db,
      )
  } else {
    for (const t of [...own].reverse()) await sql`drop table ${sql.table(run.source(t))}`.execute(db)
    const { rows } = await sql`pragma foreign_key_check`.execute(db)
    if (rows.length > 0)
      throw new DbError(
        `takeover left ${rows.length} rows whose references do not resolve; nothing was changed`,
      )
  }
  await sql`alter table ${sql.table(versionTable)} rename to ${sql.table(`upstream_${versionTable}`)}`.execute(
    db,
  )
}

function newReport(service: ServiceName, revision: string): TakeoverReport {
  return {
    service,
    revision,
    description: describeRevision(revision),
    tables: [],
    conversions: {},
    notes: [],
  }
}

/**
 * What a takeover of this database would do, read without changing anything; null when the database is not
 * upstream's. Throws a DbError for a database it would refuse.
 */
export async function planTakeover(db: AnyDb, service: ServiceName): Promise<TakeoverReport | null> {
  const origin = await databaseOrigin(db, service)
  if (origin.kind === 'unknown') throw new DbError(`cannot use the ${service} database: ${origin.reason}`)
  if (origin.kind !== 'upstream') return null
  if (revisionIndex(origin.revision) < 0) throw refuseRevision(service, origin.revision)
  const report = newReport(service, origin.revision)
  await convert(
    {
      db,
      dialect: dialectOf(db),
      revision: origin.revision,
      dryRun: true,
      report,
      source: (t) => t,
    },
    service,
  )
  return report
}

/**
 * Converts an upstream database of `service` in place (see the file comment) and records the first migration as
 * applied; returns what it did, or null when the database is not upstream's. Runs inside kysely's migrator, so
 * two processes starting at once do not both convert (the migration lock on PostgreSQL and MySQL; one connection
 * on SQLite).
 */
export async function takeOverUpstreamDatabase(
  db: AnyDb,
  service: ServiceName,
  opts: { schema?: string | undefined } = {},
): Promise<TakeoverReport | null> {
  const origin = await databaseOrigin(db, service)
  if (origin.kind === 'unknown') throw new DbError(`cannot use the ${service} database: ${origin.reason}`)
  if (origin.kind !== 'upstream') return null
  const revision = origin.revision
  if (revisionIndex(revision) < 0) throw refuseRevision(service, revision)
  const dialect = dialectOf(db)
  const report = newReport(service, revision)
  const source = (t: string) =>
    dialect === 'postgres' ? `${PG_ASIDE_SCHEMA}.${t}` : `${SQLITE_ASIDE_PREFIX}${t}`
  const up = async (conn: AnyDb): Promise<void> => {
    const run: Run = { db: conn, dialect, revision, dryRun: false, report, source }
    if (dialect === 'mysql') {
      // no transaction to run in (MySQL commits table changes on its own): convertMysql undoes a failure itself
      await convert(run, service)
      return
    }
    if (dialect === 'postgres') {
      // the migrator runs this inside its transaction
      await convert(run, service)
      return
    }
    // SQLite checks foreign keys per statement unless switched off, which only works outside a transaction
    await sql`pragma foreign_keys = off`.execute(conn)
    try {
      await conn.transaction().execute((trx) => convert({ ...run, db: trx }, service))
    } finally {
      await sql`pragma foreign_keys = on`.execute(conn)
    }
  }
  await migrate(db as Kysely<unknown>, { [FIRST_MIGRATION[service]]: { up } }, service, opts)
  return report.tables.length > 0 ? report : null
}

/** For a service started without migrations: an upstream database cannot be used as it is. */
export async function refuseUpstreamDatabase(db: AnyDb, service: ServiceName): Promise<void> {
  const origin = await databaseOrigin(db, service)
  if (origin.kind === 'upstream')
    throw new DbError(
      `the ${service} database is upstream Keylime's (Alembic revision ${describeRevision(origin.revision)}) and ` +
        'auto_migrate_db is off: run `keylime db upgrade` (see --dry-run) or start with auto_migrate_db = True',
    )
}

/** The report as lines for the log and `keylime db upgrade`. */
export function formatTakeoverReport(r: TakeoverReport, dryRun: boolean): string[] {
  const lines = [
    `${r.service} database: upstream Keylime at Alembic revision ${r.description}; ${dryRun ? 'would be' : 'was'} taken over in place`,
  ]
  for (const t of r.tables) lines.push(`  ${t.name}: ${t.rows} rows (${t.note})`)
  for (const [what, n] of Object.entries(r.conversions)) lines.push(`  ${what}: ${n} rows`)
  for (const note of r.notes) lines.push(`  ${note}`)
  return lines
}
