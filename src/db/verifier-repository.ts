/**
 * The verifier's tables and every query the verifier runs. Writes from the attestation loop are fenced: they apply
 * only while `operational_state` is not one an operator set (TERMINATED, TENANT_FAILED; protocols §D.7) and while the
 * caller still holds the agent's lease with the same epoch, so a verifier that lost an agent to another one (or a
 * stale instance of itself) never overwrites it.
 */
import { createHash } from 'node:crypto'
import {
  CompiledQuery,
  type ExpressionBuilder,
  type Generated,
  type Insertable,
  type Kysely,
  type Selectable,
  sql,
  type Transaction,
  type Updateable,
} from 'kysely'
import { AgentState, OPERATOR_HELD_STATES, RESUMABLE_STATES } from '../api/verifier/states.ts'
import { KeylimeError } from '../common/errors.ts'
import { type DbDialect, databaseDialect, migrate, registerPreparedStatement } from './database.ts'
import { VERIFIER_MIGRATIONS } from './migrations/index.ts'
import { sqlDialectOf } from './sql-dialect.ts'

export interface VerifierMainTable {
  agent_id: string
  v: string | null
  ip: string | null
  port: number | null
  verifier_id: string | null
  verifier_ip: string | null
  verifier_port: number | null
  operational_state: number | null
  public_key: string | null
  tpm_policy: string | null
  meta_data: string | null
  ima_policy_id: number | null
  mb_policy_id: number | null
  ima_sign_verification_keys: string | null
  revocation_key: string | null
  accept_tpm_hash_algs: string | null
  accept_tpm_encryption_algs: string | null
  accept_tpm_signing_algs: string | null
  hash_alg: string | null
  enc_alg: string | null
  sign_alg: string | null
  boottime: number | null
  ima_pcrs: string | null
  pcr10: string | null
  next_ima_ml_entry: number | null
  /** Opaque IMA replay state (JSON) of the IMA module. */
  ima_state: string | null
  severity_level: number | null
  last_event_id: string | null
  /** JSON: the specific reason behind last_event_id (e.g. which quote check failed). */
  last_event_context: string | null
  learned_ima_keyrings: string | null
  supported_version: string | null
  ak_tpm: string | null
  mtls_cert: string | null
  attestation_count: Generated<number>
  last_received_quote: number | null
  last_successful_attestation: number | null
  tpm_clockinfo: string | null
  accept_attestations: Generated<number>
  consecutive_attestation_failures: number | null
  lease_holder: string | null
  /**
   * Read: when the holder's heartbeat row expires (the lease of every agent it holds). The column itself is no
   * longer maintained.
   */
  lease_expires: number | null
  /** Bumped on every claim; the loop's writes carry the epoch they claimed with. */
  lease_epoch: Generated<number>
  /** Bumped by a trigger when a column the loop attests with changes (see the migration). */
  config_version: Generated<number>
  /** Push agents: evidence is overdue after this time (ms since epoch); null for pull agents. */
  push_deadline: number | null
}

export interface AllowlistsTable {
  id: Generated<number>
  name: string
  checksum: string | null
  generator: number | null
  tpm_policy: string | null
  /** Texts from before bodies were stored once; new rows reference `body_digest`. */
  ima_policy: string | null
  body_digest: string | null
}

export interface MbPoliciesTable {
  id: Generated<number>
  name: string
  /** Texts from before bodies were stored once; new rows reference `body_digest`. */
  mb_policy: string | null
  body_digest: string | null
}

/** Each distinct policy text once, by SHA-256 (hex); referenced by `allowlists` / `mbpolicies` rows. */
export interface PolicyBodiesTable {
  digest: string
  kind: string
  /** Runtime policies: the generator their one parse found. */
  generator: number | null
  body: string
}

/** One row per running verifier instance; its agents' leases are valid while `expires` (ms) is ahead. */
export interface HoldersTable {
  holder: string
  expires: number
}

/** What every successful attestation rewrites, apart from the wide enrolment row. */
export interface AttestationStateTable {
  agent_id: string
  attestation_count: Generated<number>
  last_received_quote: number | null
  last_successful_attestation: number | null
  tpm_clockinfo: string | null
  next_ima_ml_entry: number | null
  ima_state: string | null
}

export interface VerifierDatabase {
  verifiermain: VerifierMainTable
  allowlists: AllowlistsTable
  mbpolicies: MbPoliciesTable
  verifier_policy_bodies: PolicyBodiesTable
  verifier_holders: HoldersTable
  verifier_attestation_state: AttestationStateTable
}

export type VerifierAgentRow = Selectable<VerifierMainTable>
export type NewVerifierAgent = Insertable<VerifierMainTable>
export type VerifierAgentPatch = Updateable<VerifierMainTable>
export type AllowlistRow = Selectable<AllowlistsTable>
export type MbPolicyRow = Pick<Selectable<MbPoliciesTable>, 'id' | 'name' | 'mb_policy' | 'body_digest'>
/** A named policy without its text. */
export interface PolicyMeta {
  id: number
  name: string
  generator: number | null
  body_digest: string | null
}

const WRITE_GUARD_EXCLUDED = OPERATOR_HELD_STATES

export class DuplicateError extends KeylimeError {
  constructor(what: string) {
    super('ERR_DUPLICATE', `${what} already exists`, { statusCode: 409 })
  }
}

/** One success's attestation-state row, in the column order of the batch statements. */
function attestationStateColumns(s: AttestationSuccess): unknown[] {
  return [
    s.agentId,
    s.attestationCount,
    s.lastReceivedQuote,
    s.lastSuccessfulAttestation,
    s.tpmClockinfo,
    s.nextImaEntry ?? nextImaEntryOf(s.imaState),
    s.imaState,
  ]
}

export async function migrateVerifierDatabase(db: Kysely<VerifierDatabase>): Promise<void> {
  await migrate(db, VERIFIER_MIGRATIONS, 'verifier')
}

/** One successful attestation, written in batches by the scheduler. */
export interface AttestationSuccess {
  agentId: string
  /** Lease epoch the agent was claimed with (fencing). */
  leaseEpoch: number
  attestationCount: number
  lastReceivedQuote: number
  lastSuccessfulAttestation: number
  tpmClockinfo: string | null
  operationalState: number
  publicKey: string | null
  imaState: string | null
  /** `nextEntry` of `imaState` when the caller has it (the loop does), so this hot path need not parse it back. */
  nextImaEntry?: number
  /** Algorithms the agent quoted with (shown by `GET /agents/:id` as hash_alg, enc_alg, sign_alg). */
  hashAlg: string
  encAlg: string
  signAlg: string
}

/** The columns a successful attestation rewrites, kept in `verifier_attestation_state` (see the migration). */
export const HOT_COLUMNS = [
  'attestation_count',
  'last_received_quote',
  'last_successful_attestation',
  'tpm_clockinfo',
  'next_ima_ml_entry',
  'ima_state',
] as const

/** `verifiermain` columns read as they are (the hot ones and `lease_expires` come from elsewhere). */
const MAIN_COLUMNS = [
  'agent_id',
  'v',
  'ip',
  'port',
  'verifier_id',
  'verifier_ip',
  'verifier_port',
  'operational_state',
  'public_key',
  'tpm_policy',
  'meta_data',
  'ima_policy_id',
  'mb_policy_id',
  'ima_sign_verification_keys',
  'revocation_key',
  'accept_tpm_hash_algs',
  'accept_tpm_encryption_algs',
  'accept_tpm_signing_algs',
  'hash_alg',
  'enc_alg',
  'sign_alg',
  'boottime',
  'ima_pcrs',
  'pcr10',
  'severity_level',
  'last_event_id',
  'last_event_context',
  'learned_ima_keyrings',
  'supported_version',
  'ak_tpm',
  'mtls_cert',
  'accept_attestations',
  'consecutive_attestation_failures',
  'lease_holder',
  'lease_epoch',
  'config_version',
] as const

/**
 * An agent as one row: the enrolment row, its attestation state (the enrolment row's old values for a row that has
 * none yet) and `lease_expires`, the expiry of its holder's heartbeat row.
 */
const AGENT_SELECT = `SELECT ${MAIN_COLUMNS.map((c) => `m.${c}`).join(', ')}, ${HOT_COLUMNS.map(
  (c) => `CASE WHEN s.agent_id IS NULL THEN m.${c} ELSE s.${c} END AS ${c}`,
).join(', ')}, h.expires AS lease_expires
  FROM verifiermain m
  LEFT JOIN verifier_attestation_state s ON s.agent_id = m.agent_id
  LEFT JOIN verifier_holders h ON h.holder = m.lease_holder`

const NOT_OPERATOR_HELD = `(operational_state IS NULL OR operational_state NOT IN (${WRITE_GUARD_EXCLUDED.join(', ')}))`
const RESUMABLE = `operational_state IN (${RESUMABLE_STATES.join(', ')})`
/** Pull agents only: push agents (no address) submit their evidence and are never polled. */
const POLLED = 'ip IS NOT NULL'
/** The agent's holder has no live heartbeat row at `now` (or there is none): anyone may claim it. */
const holderGone = (now: string) => `(lease_holder IS NULL OR NOT EXISTS
  (SELECT 1 FROM verifier_holders h WHERE h.holder = verifiermain.lease_holder AND h.expires >= ${now}))`

/**
 * The statements of the hot paths, written once per dialect and run as they are (no query building per call;
 * SQLite reuses the prepared statement by its text, PostgreSQL gets a named prepared statement). A list of agents
 * is one parameter (a PostgreSQL array, a JSON array on SQLite), so the text never depends on the batch size.
 * Every statement that locks several agent rows locks them in `agent_id` order (or skips locked ones), and the
 * attestation state row of an agent is written only by a transaction already holding its `verifiermain` row: one
 * lock order, so the verifiers sharing a database cannot deadlock.
 */
interface Statements {
  heartbeat: string
  register: string
  unregister: string
  /** Heartbeat rows long expired: whether a row is missing or expired makes no difference to a claim. */
  forgetExpired: string
  /**
   * SQLite and MySQL: locks the batch's rows the holder still holds (ordered) and returns what the batch compares
   * with; then `upsertHot` and `updateMainChanged`, in one transaction. Empty on PostgreSQL (`recordBatch`).
   */
  lockBatch: string
  /**
   * PostgreSQL: the whole batch as one statement (lock, compare, upsert, changed enrolment rows), returning the
   * refused agent ids: one round trip instead of a transaction of five. Empty on other dialects.
   */
  recordBatch: string
  upsertHot: string
  updateMainChanged: string
  claimLock: string
  claimApply: string
  lockHeld: string
  release: string
  takeOverLock: string
  takeOverApply: string
}

function statements(dialect: DbDialect): Statements {
  const pg = dialect === 'postgres'
  const my = dialect === 'mysql'
  let n = 0
  // positional placeholders: $1, $2… on PostgreSQL, ? on SQLite (each used once, in order of appearance)
  const p = (pgType = '') => (pg ? `$${++n}${pgType}` : '?')
  const reset = (build: () => string) => {
    n = 0
    return build()
  }
  const list = (pgType: string) =>
    pg
      ? `(SELECT unnest(${p(`::${pgType}[]`)}))`
      : my
        ? mysqlList(p())
        : `(SELECT value FROM json_each(${p()}))`
  // MySQL has no NO KEY UPDATE: FOR UPDATE is the lock that keeps a row from being written meanwhile
  const lock = (mode: string) =>
    pg ? ` FOR ${mode}` : my ? ` FOR ${mode.replace('NO KEY UPDATE', 'UPDATE')}` : ''
  // InnoDB locks the index records a locking read walks: through `ix_verifiermain_lease_holder` a reader would hold
  // secondary-index locks that a claim moving the row to another holder must take, while waiting for the row that
  // claim holds (a deadlock PostgreSQL's row locks cannot have). Locking reads walk the primary key, in its order.
  const pkOnly = my ? ' FORCE INDEX (PRIMARY)' : ''
  const hotCols = HOT_COLUMNS.join(', ')
  return {
    heartbeat: reset(
      () => `UPDATE verifier_holders SET expires = ${p()} WHERE holder = ${p()} AND expires >= ${p()}`,
    ),
    register: reset(() =>
      my
        ? `INSERT INTO verifier_holders (holder, expires) VALUES (?, ?)
           ON DUPLICATE KEY UPDATE expires = VALUES(expires)`
        : `INSERT INTO verifier_holders (holder, expires) VALUES (${p()}, ${p()})
       ON CONFLICT (holder) DO UPDATE SET expires = excluded.expires`,
    ),
    unregister: reset(() => `DELETE FROM verifier_holders WHERE holder = ${p()}`),
    forgetExpired: reset(() => `DELETE FROM verifier_holders WHERE expires < ${p()}`),
    lockBatch: reset(() =>
      pg
        ? ''
        : my
          ? // rows are locked as the join reaches them (before ORDER BY sorts): one primary-key lookup per id, in the
            // order of the list, which listParam sorts
            `SELECT STRAIGHT_JOIN m.agent_id, m.lease_epoch, m.operational_state, m.hash_alg, m.enc_alg, m.sign_alg
           FROM ${mysqlListTable('?')} JOIN verifiermain m ON m.agent_id = l.value
           WHERE m.lease_holder = ? AND ${NOT_OPERATOR_HELD} ORDER BY m.agent_id FOR UPDATE`
          : `SELECT agent_id, lease_epoch, operational_state, hash_alg, enc_alg, sign_alg FROM verifiermain
       WHERE agent_id IN ${list('text')} AND lease_holder = ${p()} AND ${NOT_OPERATOR_HELD}
       ORDER BY agent_id${lock('NO KEY UPDATE')}`,
    ),
    recordBatch: pg
      ? `WITH v AS MATERIALIZED (
           SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bigint[], $5::text[], $6::int[], $7::text[],
               $8::int[], $9::int[], $10::text[], $11::text[], $12::text[], $13::text[])
             AS v(agent_id, ${hotCols}, lease_epoch, state, public_key, hash_alg, enc_alg, sign_alg)),
         locked AS MATERIALIZED (
           SELECT agent_id, lease_epoch, operational_state, public_key, hash_alg, enc_alg, sign_alg FROM verifiermain
           WHERE agent_id = ANY($1::text[]) AND lease_holder = $14 AND ${NOT_OPERATOR_HELD}
           ORDER BY agent_id FOR NO KEY UPDATE),
         accepted AS MATERIALIZED (
           SELECT v.*, (l.operational_state IS DISTINCT FROM v.state
               OR (v.public_key IS NOT NULL AND v.public_key IS DISTINCT FROM l.public_key)
               OR l.hash_alg IS DISTINCT FROM v.hash_alg OR l.enc_alg IS DISTINCT FROM v.enc_alg
               OR l.sign_alg IS DISTINCT FROM v.sign_alg) AS changed
           FROM v JOIN locked l ON l.agent_id = v.agent_id AND l.lease_epoch = v.lease_epoch),
         hot AS (
           INSERT INTO verifier_attestation_state (agent_id, ${hotCols})
           SELECT agent_id, ${hotCols} FROM accepted ORDER BY agent_id
           ON CONFLICT (agent_id) DO UPDATE SET ${HOT_COLUMNS.map((c) => `${c} = excluded.${c}`).join(', ')}),
         main AS (
           UPDATE verifiermain AS m SET operational_state = a.state, public_key = COALESCE(a.public_key, m.public_key),
             hash_alg = a.hash_alg, enc_alg = a.enc_alg, sign_alg = a.sign_alg
           FROM accepted a WHERE m.agent_id = a.agent_id AND a.changed)
       SELECT agent_id FROM v WHERE agent_id NOT IN (SELECT agent_id FROM accepted)`
      : '',
    upsertHot: reset(() =>
      pg
        ? ''
        : my
          ? `INSERT INTO verifier_attestation_state (agent_id, ${hotCols})
             SELECT agent_id, ${hotCols} FROM ${mysqlRows(['agent_id', ...HOT_COLUMNS])}
             ON DUPLICATE KEY UPDATE ${HOT_COLUMNS.map((c) => `${c} = VALUES(${c})`).join(', ')}`
          : `INSERT INTO verifier_attestation_state (agent_id, ${hotCols})
           SELECT value->>0, ${HOT_COLUMNS.map((_, i) => `value->>${i + 1}`).join(', ')} FROM json_each(?) WHERE true
           ON CONFLICT (agent_id) DO UPDATE SET ${HOT_COLUMNS.map((c) => `${c} = excluded.${c}`).join(', ')}`,
    ),
    updateMainChanged: reset(() =>
      pg
        ? ''
        : my
          ? `UPDATE verifiermain AS m
             JOIN ${mysqlRows(['agent_id', 'operational_state', 'public_key', 'hash_alg', 'enc_alg', 'sign_alg'])}
               ON m.agent_id = v.agent_id
             SET m.operational_state = v.operational_state, m.public_key = COALESCE(v.public_key, m.public_key),
               m.hash_alg = v.hash_alg, m.enc_alg = v.enc_alg, m.sign_alg = v.sign_alg`
          : `UPDATE verifiermain SET operational_state = j.value->>1,
             public_key = COALESCE(j.value->>2, verifiermain.public_key),
             hash_alg = j.value->>3, enc_alg = j.value->>4, sign_alg = j.value->>5
           FROM json_each(?) AS j WHERE verifiermain.agent_id = j.value->>0`,
    ),
    claimLock: reset(
      () => `SELECT agent_id FROM verifiermain${pkOnly}
       WHERE verifier_id = ${p()} AND ${RESUMABLE} AND ${POLLED} AND ${holderGone(p('::bigint'))}
       ORDER BY agent_id LIMIT ${p('::int')}${lock('NO KEY UPDATE SKIP LOCKED')}`,
    ),
    claimApply: reset(
      () => `UPDATE verifiermain SET lease_holder = ${p()}, lease_epoch = lease_epoch + 1, operational_state = ${AgentState.START}
       WHERE agent_id IN ${list('text')}`,
    ),
    lockHeld: reset(
      () =>
        `SELECT agent_id FROM verifiermain${pkOnly} WHERE lease_holder = ${p()} ORDER BY agent_id${lock('NO KEY UPDATE')}`,
    ),
    release: reset(() => `UPDATE verifiermain SET lease_holder = NULL WHERE lease_holder = ${p()}`),
    takeOverLock: reset(
      () => `SELECT agent_id, lease_holder FROM verifiermain${pkOnly}
       WHERE substr(lease_holder, 1, ${p('::int')}) = ${p()} AND lease_holder <> ${p()} AND ${RESUMABLE} AND ${POLLED}
       ORDER BY agent_id${lock('NO KEY UPDATE')}`,
    ),
    takeOverApply: reset(
      () => `UPDATE verifiermain SET lease_holder = ${p()}, lease_epoch = lease_epoch + 1, operational_state = ${AgentState.START}
       WHERE agent_id IN ${list('text')}`,
    ),
  }
}

/** PostgreSQL types of the attestation state columns (parameters in a SELECT list are not typed by their target). */
const HOT_COLUMN_PG_TYPES: Record<string, string> = {
  attestation_count: 'int',
  last_received_quote: 'bigint',
  last_successful_attestation: 'bigint',
  tpm_clockinfo: 'text',
  next_ima_ml_entry: 'int',
  ima_state: 'text',
}

const KNOWN_COLUMNS: ReadonlySet<string> = new Set<string>([...MAIN_COLUMNS, ...HOT_COLUMNS, 'push_deadline'])

/** A column name put into statement text: only the tables' own columns pass. */
function checkedColumn(name: string): string {
  if (!KNOWN_COLUMNS.has(name)) throw new Error(`unknown verifier column ${JSON.stringify(name)}`)
  return name
}

/** MySQL types of the columns a JSON row parameter carries (binary collation: compared with our tables' keys). */
const MYSQL_JSON_COLUMN_TYPES: Record<string, string> = {
  agent_id: 'VARCHAR(80) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin',
  attestation_count: 'INT',
  last_received_quote: 'BIGINT',
  last_successful_attestation: 'BIGINT',
  tpm_clockinfo: 'LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin',
  next_ima_ml_entry: 'INT',
  ima_state: 'LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin',
  operational_state: 'INT',
  public_key: 'VARCHAR(500) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin',
  hash_alg: 'VARCHAR(10) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin',
  enc_alg: 'VARCHAR(10) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin',
  sign_alg: 'VARCHAR(10) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin',
}

/** MySQL: the rows of one JSON parameter (an array of arrays, columns in this order) as a table `v`. */
function mysqlRows(columns: readonly string[]): string {
  const defs = columns.map((c, i) => `${c} ${MYSQL_JSON_COLUMN_TYPES[c]} PATH '$[${i}]'`).join(', ')
  return `JSON_TABLE(?, '$[*]' COLUMNS (${defs})) AS v`
}

/** MySQL: the values of one JSON array parameter as a table `l` of one column, `value`. */
function mysqlListTable(placeholder: string): string {
  return `JSON_TABLE(${placeholder}, '$[*]' COLUMNS (value VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$')) AS l`
}

/** MySQL: the values of one JSON array parameter, as an `IN` list. */
function mysqlList(placeholder: string): string {
  return `(SELECT l.value FROM ${mysqlListTable(placeholder)})`
}

/**
 * A list of values as one statement parameter: an array for PostgreSQL, JSON text for SQLite and MySQL (sorted
 * there: MySQL locks rows in the order a join reads the list, see lockBatch).
 */
function listParam(dialect: DbDialect, values: readonly unknown[]): unknown {
  if (dialect === 'mysql') return JSON.stringify([...values].sort())
  return dialect === 'postgres' ? values : JSON.stringify(values)
}

type Queryable = Kysely<VerifierDatabase> | Transaction<VerifierDatabase>

/** Lookups every enrolment makes, as fixed texts (prepared on PostgreSQL, reused by text on SQLite). */
const PG_AGENT_EXISTS = 'SELECT 1 FROM verifiermain WHERE agent_id = $1'
const SQLITE_AGENT_EXISTS = 'SELECT 1 FROM verifiermain WHERE agent_id = ?'
const PG_ALLOWLIST_META = 'SELECT id, name, generator, body_digest FROM allowlists WHERE name = $1'
const SQLITE_ALLOWLIST_META = 'SELECT id, name, generator, body_digest FROM allowlists WHERE name = ?'
const PG_POLICY_BODY_META = 'SELECT kind, generator FROM verifier_policy_bodies WHERE digest = $1'
const SQLITE_POLICY_BODY_META = 'SELECT kind, generator FROM verifier_policy_bodies WHERE digest = ?'
for (const text of [PG_AGENT_EXISTS, PG_ALLOWLIST_META, PG_POLICY_BODY_META]) registerPreparedStatement(text)

const FOREIGN_KEY_VIOLATION = '23503'

/** PostgreSQL enrolment statements by the columns they insert (a handful of shapes: pull, push, tests' rows). */
const enrolStatements = new Map<string, string>()

/**
 * One PostgreSQL statement enrolling an agent: data-modifying CTEs insert the new policy names (referencing bodies
 * already stored; the foreign key refuses a missing one), the agent row with their ids and its attestation state,
 * and return the row as `AGENT_SELECT` reads it. Parameters in order: runtime policy name, checksum, generator,
 * body digest; measured-boot policy name, body digest; the main columns; the attestation state columns.
 */
function enrolStatement(mainCols: string[], hotCols: string[], runtime: boolean, mb: boolean): string {
  const key = `${mainCols.join(',')}|${hotCols.join(',')}|${runtime}|${mb}`
  let text = enrolStatements.get(key)
  if (text !== undefined) return text
  let n = 0
  const p = () => `$${++n}`
  const ctes: string[] = []
  const policyCols: string[] = []
  const policyValues: string[] = []
  if (runtime) {
    ctes.push(`rt AS (INSERT INTO allowlists (name, checksum, generator, tpm_policy, ima_policy, body_digest)
      VALUES (${p()}, ${p()}, ${p()}, NULL, NULL, ${p()}) RETURNING id)`)
    policyCols.push('ima_policy_id')
    policyValues.push('(SELECT id FROM rt)')
  }
  if (mb) {
    ctes.push(
      `mbp AS (INSERT INTO mbpolicies (name, mb_policy, body_digest) VALUES (${p()}, NULL, ${p()}) RETURNING id)`,
    )
    policyCols.push('mb_policy_id')
    policyValues.push('(SELECT id FROM mbp)')
  }
  ctes.push(`m AS (INSERT INTO verifiermain (${[...mainCols, ...policyCols].join(', ')})
    VALUES (${[...mainCols.map(p), ...policyValues].join(', ')}) RETURNING *)`)
  ctes.push(`s AS (INSERT INTO verifier_attestation_state (${hotCols.join(', ')})
    VALUES (${hotCols.map(p).join(', ')}) RETURNING *)`)
  text = `WITH ${ctes.join(',\n')}
    SELECT ${MAIN_COLUMNS.map((c) => `m.${c}`).join(', ')}, ${HOT_COLUMNS.map((c) => `s.${c}`).join(', ')},
      h.expires AS lease_expires
    FROM m JOIN s ON s.agent_id = m.agent_id LEFT JOIN verifier_holders h ON h.holder = m.lease_holder`
  enrolStatements.set(key, text)
  registerPreparedStatement(text)
  return text
}

async function run<R>(db: Queryable, sqlText: string, params: readonly unknown[]): Promise<R[]> {
  return (await db.executeQuery<R>(CompiledQuery.raw(sqlText, [...params]))).rows
}

interface LockedRow {
  agent_id: string
  lease_epoch: number
  operational_state: number | null
  hash_alg: string | null
  enc_alg: string | null
  sign_alg: string | null
}

function toAgentRow(r: VerifierAgentRow): VerifierAgentRow {
  if (r.lease_expires !== null && typeof r.lease_expires !== 'number')
    r.lease_expires = Number(r.lease_expires)
  return r
}

export class VerifierRepository {
  readonly dialect: DbDialect
  private readonly sql: Statements

  constructor(readonly db: Kysely<VerifierDatabase>) {
    this.dialect = databaseDialect(db)
    this.sql = statements(this.dialect)
    if (this.dialect === 'postgres')
      for (const text of Object.values(this.sql)) if (text !== '') registerPreparedStatement(text)
  }

  private list(values: readonly unknown[]): unknown {
    return listParam(this.dialect, values)
  }

  // ---------------------------------------------------------------------------- agents

  /** Inserts one agent row (tests and tools; enrolment goes through `enrolAgent`). */
  async insertAgent(row: NewVerifierAgent): Promise<void> {
    await this.enrolAgent(row, {})
  }

  /**
   * Enrolment in one transaction: the policies stored with this agent (if new; a body already stored is only
   * referenced), the agent row and its attestation state. A duplicate agent or policy name (a racing identical add
   * included) raises DuplicateError and leaves nothing behind. Returns the stored agent as `getAgent` reads it.
   */
  async enrolAgent(
    row: NewVerifierAgent,
    newPolicies: NewAgentPolicies,
  ): Promise<VerifierAgentRow | undefined> {
    const hot: Record<string, unknown> = { agent_id: row.agent_id }
    const main: Record<string, unknown> = {}
    for (const [k, v] of Object.entries(row)) {
      if (v === undefined || k === 'lease_expires') continue
      if ((HOT_COLUMNS as readonly string[]).includes(k)) hot[k] = v
      else main[k] = v
    }
    if (hot.next_ima_ml_entry === undefined)
      hot.next_ima_ml_entry = nextImaEntryOf((row.ima_state as string | null | undefined) ?? null)
    if (this.dialect === 'postgres') {
      const stored = await this.enrolInOneStatement(main, hot, newPolicies)
      if (stored) return stored
    }
    try {
      await this.db.transaction().execute(async (tx) => {
        if (newPolicies.runtime) {
          const r = newPolicies.runtime
          const digest = await this.storeBody(tx, 'runtime', r.body, r.generator)
          main.ima_policy_id = await insertPolicyName(tx, 'allowlists', `runtime policy ${r.name}`, {
            name: r.name,
            checksum: r.checksum,
            generator: r.generator,
            tpm_policy: null,
            ima_policy: null,
            body_digest: digest,
          })
        }
        if (newPolicies.mb) {
          const m = newPolicies.mb
          const digest = await this.storeBody(tx, 'mb', m.body, null)
          main.mb_policy_id = await insertPolicyName(tx, 'mbpolicies', `measured boot policy ${m.name}`, {
            name: m.name,
            mb_policy: null,
            body_digest: digest,
          })
        }
        await tx
          .insertInto('verifiermain')
          .values(main as NewVerifierAgent)
          .execute()
        await tx
          .insertInto('verifier_attestation_state')
          .values(hot as Insertable<AttestationStateTable>)
          .execute()
      })
    } catch (err) {
      if (isUniqueViolation(err)) throw new DuplicateError(`agent ${row.agent_id} or one of its policies`)
      throw err
    }
    return this.getAgent(row.agent_id)
  }

  /**
   * PostgreSQL: the whole enrolment as one prepared statement (its new policy names, the agent row, its attestation
   * state, the stored row read back) instead of a transaction of five to eight round trips; a statement is atomic, so
   * a refused part leaves nothing behind. New policy bodies are not written here: undefined when a body is not
   * stored yet (a foreign-key violation, nothing written), and the caller stores it in the transaction.
   */
  private async enrolInOneStatement(
    main: Record<string, unknown>,
    hot: Record<string, unknown>,
    newPolicies: NewAgentPolicies,
  ): Promise<VerifierAgentRow | undefined> {
    const { runtime, mb } = newPolicies
    const mainCols = Object.keys(main).filter(
      (c) => !(runtime && c === 'ima_policy_id') && !(mb && c === 'mb_policy_id'),
    )
    const hotCols = Object.keys(hot)
    const params: unknown[] = []
    if (runtime) params.push(runtime.name, runtime.checksum, runtime.generator, runtime.body.digest)
    if (mb) params.push(mb.name, mb.body.digest)
    for (const c of mainCols) params.push(main[c])
    for (const c of hotCols) params.push(hot[c])
    try {
      const rows = await run<VerifierAgentRow>(
        this.db,
        enrolStatement(mainCols, hotCols, runtime !== undefined, mb !== undefined),
        params,
      )
      return rows[0] ? toAgentRow(rows[0]) : undefined
    } catch (err) {
      if ((err as { code?: unknown })?.code === FOREIGN_KEY_VIOLATION) return undefined
      if (isUniqueViolation(err)) {
        // named as the transaction names them: the table PostgreSQL reports tells which insert clashed
        const table = (err as { table?: unknown }).table
        if (table === 'allowlists' && runtime) throw new DuplicateError(`runtime policy ${runtime.name}`)
        if (table === 'mbpolicies' && mb) throw new DuplicateError(`measured boot policy ${mb.name}`)
        throw new DuplicateError(`agent ${String(main.agent_id)} or one of its policies`)
      }
      throw err
    }
  }

  async agentExists(agentId: string): Promise<boolean> {
    const rows = await run(this.db, this.dialect === 'postgres' ? PG_AGENT_EXISTS : SQLITE_AGENT_EXISTS, [
      agentId,
    ])
    return rows.length > 0
  }

  async getAgent(agentId: string): Promise<VerifierAgentRow | undefined> {
    const rows = await run<VerifierAgentRow>(this.db, `${AGENT_SELECT} WHERE m.agent_id = ${this.p(1)}`, [
      agentId,
    ])
    return rows[0] ? toAgentRow(rows[0]) : undefined
  }

  async listAgentIds(verifierId?: string): Promise<string[]> {
    let q = this.db.selectFrom('verifiermain').select('agent_id').orderBy('agent_id')
    if (verifierId !== undefined) q = q.where('verifier_id', '=', verifierId)
    return (await q.execute()).map((r) => r.agent_id)
  }

  async listAgents(verifierId?: string): Promise<VerifierAgentRow[]> {
    const rows =
      verifierId === undefined
        ? await run<VerifierAgentRow>(this.db, `${AGENT_SELECT} ORDER BY m.agent_id`, [])
        : await run<VerifierAgentRow>(
            this.db,
            `${AGENT_SELECT} WHERE m.verifier_id = ${this.p(1)} ORDER BY m.agent_id`,
            [verifierId],
          )
    return rows.map(toAgentRow)
  }

  /** Agents by id (held by `leaseHolder`), as one row each. */
  private async agentsHeldBy(ids: readonly string[], leaseHolder: string): Promise<VerifierAgentRow[]> {
    if (ids.length === 0) return []
    const inList =
      this.dialect === 'postgres'
        ? '(SELECT unnest($1::text[]))'
        : this.dialect === 'mysql'
          ? mysqlList('?')
          : '(SELECT value FROM json_each(?))'
    const rows = await run<VerifierAgentRow>(
      this.db,
      `${AGENT_SELECT} WHERE m.agent_id IN ${inList} AND m.lease_holder = ${this.p(2)}`,
      [this.list(ids), leaseHolder],
    )
    return rows.map(toAgentRow)
  }

  private p(i: number): string {
    return this.dialect === 'postgres' ? `$${i}` : '?'
  }

  /** Unconditional state change (API stop/terminate). */
  async setState(agentId: string, state: number): Promise<boolean> {
    const r = await this.db
      .updateTable('verifiermain')
      .set({ operational_state: state })
      .where('agent_id', '=', agentId)
      .executeTakeFirst()
    return r.numUpdatedRows > 0n
  }

  /** Used by reactivate: back to START, owned by `leaseHolder` under a new epoch (severity/last event kept). */
  async reactivate(agentId: string, leaseHolder: string): Promise<boolean> {
    const r = await this.db
      .updateTable('verifiermain')
      .set({
        operational_state: AgentState.START,
        lease_holder: leaseHolder,
        lease_epoch: sql`lease_epoch + 1`,
      })
      .where('agent_id', '=', agentId)
      .executeTakeFirst()
    return r.numUpdatedRows > 0n
  }

  /**
   * Fenced write from the attestation loop (state changes, failures); false when refused (deleted, stopped, lease
   * lost or a newer epoch). The enrolment row is written (or locked) first, then the attestation state: the one
   * lock order.
   */
  async updateGuarded(
    agentId: string,
    lease: { holder: string; epoch: number },
    patch: VerifierAgentPatch,
  ): Promise<boolean> {
    const main: Record<string, unknown> = {}
    const hot: Record<string, unknown> = {}
    for (const [k, v] of Object.entries(withImaOffset(patch))) {
      if (v === undefined || k === 'lease_expires') continue
      if ((HOT_COLUMNS as readonly string[]).includes(k)) hot[k] = v
      else main[k] = v
    }
    const pg = this.dialect === 'postgres'
    if (pg) return this.updateGuardedPg(agentId, lease, main, hot)
    return this.db.transaction().execute(async (tx) => {
      const fence = (eb: ExpressionBuilder<VerifierDatabase, 'verifiermain'>) =>
        eb.and([
          eb('agent_id', '=', agentId),
          eb('lease_holder', '=', lease.holder),
          eb('lease_epoch', '=', lease.epoch),
          eb.or([
            eb('operational_state', 'is', null),
            eb('operational_state', 'not in', WRITE_GUARD_EXCLUDED),
          ]),
        ])
      let ok: boolean
      if (Object.keys(main).length > 0) {
        const r = await tx
          .updateTable('verifiermain')
          .set(main as VerifierAgentPatch)
          .where(fence)
          .executeTakeFirst()
        ok = r.numUpdatedRows > 0n
      } else {
        let q = tx.selectFrom('verifiermain').select('agent_id').where(fence)
        if (pg) q = q.forNoKeyUpdate()
        else if (this.dialect === 'mysql') q = q.forUpdate()
        ok = (await q.executeTakeFirst()) !== undefined
      }
      if (ok && Object.keys(hot).length > 0) {
        const insert = tx
          .insertInto('verifier_attestation_state')
          .values({ agent_id: agentId, ...hot } as Insertable<AttestationStateTable>)
        await (this.dialect === 'mysql'
          ? insert.onDuplicateKeyUpdate(hot as Updateable<AttestationStateTable>)
          : insert.onConflict((oc) =>
              oc.column('agent_id').doUpdateSet(hot as Updateable<AttestationStateTable>),
            )
        ).execute()
      }
      return ok
    })
  }

  /**
   * PostgreSQL: `updateGuarded` as one statement instead of BEGIN, two statements and COMMIT (a state change holds
   * its agent's step until written). The fenced update (or, with no enrolment column to write, a fenced lock) of the
   * enrolment row comes first, and the attestation state is written only for the row it returned: the one lock
   * order. Column names come from the patch's keys, checked against the tables' columns.
   */
  private async updateGuardedPg(
    agentId: string,
    lease: { holder: string; epoch: number },
    main: Record<string, unknown>,
    hot: Record<string, unknown>,
  ): Promise<boolean> {
    const params: unknown[] = [agentId, lease.holder, lease.epoch]
    const p = (v: unknown) => `$${params.push(v)}`
    const fence = `agent_id = $1 AND lease_holder = $2 AND lease_epoch = $3 AND ${NOT_OPERATOR_HELD}`
    const mainCols = Object.keys(main).map(checkedColumn)
    const fenced =
      mainCols.length > 0
        ? `UPDATE verifiermain SET ${mainCols.map((c) => `${c} = ${p(main[c])}`).join(', ')} WHERE ${fence} RETURNING agent_id`
        : `SELECT agent_id FROM verifiermain WHERE ${fence} FOR NO KEY UPDATE`
    const hotCols = Object.keys(hot).map(checkedColumn)
    const state =
      hotCols.length > 0
        ? `, s AS (INSERT INTO verifier_attestation_state (agent_id, ${hotCols.join(', ')})
             SELECT agent_id, ${hotCols.map((c) => `${p(hot[c])}::${HOT_COLUMN_PG_TYPES[c]}`).join(', ')} FROM m
             ON CONFLICT (agent_id) DO UPDATE SET ${hotCols.map((c) => `${c} = excluded.${c}`).join(', ')})`
        : ''
    const rows = await run<{ n: number }>(
      this.db,
      `WITH m AS MATERIALIZED (${fenced})${state} SELECT count(*)::int AS n FROM m`,
      params,
    )
    return (rows[0]?.n ?? 0) > 0
  }

  /**
   * Writes many successful attestations in one transaction of a few statements whatever the batch size: lock the
   * rows still held under the same epoch (in `agent_id` order), upsert their attestation state, and write the
   * enrolment row only for the few whose state, key or algorithms changed. Returns the agent ids the fence refused.
   */
  async recordSuccesses(leaseHolder: string, batch: readonly AttestationSuccess[]): Promise<string[]> {
    if (batch.length === 0) return []
    if (this.dialect === 'postgres') return this.recordSuccessesPg(leaseHolder, batch)
    return this.db.transaction().execute(async (tx) => {
      const locked = await run<LockedRow>(tx, this.sql.lockBatch, [
        this.list(batch.map((s) => s.agentId)),
        leaseHolder,
      ])
      const byId = new Map(locked.map((r) => [r.agent_id, r]))
      const accepted: AttestationSuccess[] = []
      const refused: string[] = []
      for (const s of batch) {
        const row = byId.get(s.agentId)
        if (row && Number(row.lease_epoch) === s.leaseEpoch) accepted.push(s)
        else refused.push(s.agentId)
      }
      if (accepted.length === 0) return refused
      await run(tx, this.sql.upsertHot, this.rowsParam(accepted.map(attestationStateColumns)))
      const changed = accepted
        .filter((s) => {
          const row = byId.get(s.agentId) as LockedRow
          return (
            row.operational_state !== s.operationalState ||
            // set only when the agent's key changed (rare): its PEM is not read back for every row of every batch
            s.publicKey !== null ||
            row.hash_alg !== s.hashAlg ||
            row.enc_alg !== s.encAlg ||
            row.sign_alg !== s.signAlg
          )
        })
        .map((s) => [s.agentId, s.operationalState, s.publicKey, s.hashAlg, s.encAlg, s.signAlg])
      if (changed.length > 0) await run(tx, this.sql.updateMainChanged, this.rowsParam(changed))
      return refused
    })
  }

  /**
   * PostgreSQL: `recordSuccesses` as one statement. Its locking CTE takes the enrolment rows in `agent_id` order
   * (a sort below the row locks) before the attestation state rows they guard are written, as the transaction
   * does; a statement is atomic, so a failure leaves nothing written and the batch is kept for the next flush.
   */
  private async recordSuccessesPg(
    leaseHolder: string,
    batch: readonly AttestationSuccess[],
  ): Promise<string[]> {
    const rows = batch.map((s) => [
      ...attestationStateColumns(s),
      s.leaseEpoch,
      s.operationalState,
      s.publicKey,
      s.hashAlg,
      s.encAlg,
      s.signAlg,
    ])
    const refused = await run<{ agent_id: string }>(this.db, this.sql.recordBatch, [
      ...this.rowsParam(rows),
      leaseHolder,
    ])
    return refused.map((r) => r.agent_id)
  }

  /** Rows as statement parameters: one array per column on PostgreSQL (for unnest), one JSON array on SQLite. */
  private rowsParam(rows: unknown[][]): unknown[] {
    if (this.dialect !== 'postgres') return [JSON.stringify(rows)]
    const width = rows[0]?.length ?? 0
    return Array.from({ length: width }, (_, i) => rows.map((r) => r[i]))
  }

  /** Deletes the agent (its attestation state goes with it) and its own policies no other agent uses. */
  async deleteAgent(agentId: string): Promise<boolean> {
    return this.db.transaction().execute(async (tx) => {
      const r = await tx.deleteFrom('verifiermain').where('agent_id', '=', agentId).executeTakeFirst()
      for (const table of ['allowlists', 'mbpolicies'] as const) {
        const col = table === 'allowlists' ? 'ima_policy_id' : 'mb_policy_id'
        const pol = await tx
          .selectFrom(table)
          .select(['id', 'body_digest'])
          .where('name', '=', agentId)
          .executeTakeFirst()
        if (!pol) continue
        const user = await tx
          .selectFrom('verifiermain')
          .select('agent_id')
          .where(col, '=', pol.id)
          .executeTakeFirst()
        if (user) continue
        await tx.deleteFrom(table).where('id', '=', pol.id).execute()
        await collectBody(tx, pol.body_digest)
      }
      return r.numDeletedRows > 0n
    })
  }

  // ---------------------------------------------------------------------------- leases (multi-verifier)

  /**
   * The heartbeat: one statement extending this holder's row, whatever the number of agents. False when the row had
   * expired (or did not exist): it is registered again, and agents other verifiers claimed meanwhile are theirs
   * (their writes from here are refused by the epoch fence).
   */
  async heartbeat(leaseHolder: string, now: number, until: number): Promise<boolean> {
    const r = await this.db.executeQuery(CompiledQuery.raw(this.sql.heartbeat, [until, leaseHolder, now]))
    if (Number(r.numAffectedRows ?? 0n) > 0) return true
    await run(this.db, this.sql.register, [leaseHolder, until])
    return false
  }

  /** Deletes heartbeat rows expired before `before` (dead processes'); their agents stay claimable. */
  async forgetExpiredHolders(before: number): Promise<void> {
    await run(this.db, this.sql.forgetExpired, [before])
  }

  /**
   * Claims up to `limit` resumable agents of `verifierId` that nobody holds or whose holder's heartbeat expired (a
   * dead verifier's), resets them to START under a new epoch and returns them. Rows another transaction has locked
   * are skipped (PostgreSQL), so two verifiers never both get one agent and a claim never waits on a lock.
   */
  async claimAgents(
    verifierId: string,
    leaseHolder: string,
    now: number,
    limit: number,
  ): Promise<VerifierAgentRow[]> {
    const ids = await this.db.transaction().execute(async (tx) => {
      const rows = await run<{ agent_id: string }>(tx, this.sql.claimLock, [verifierId, now, limit])
      if (rows.length === 0) return []
      const ids = rows.map((r) => r.agent_id)
      await run(tx, this.sql.claimApply, [leaseHolder, this.list(ids)])
      return ids
    })
    return this.agentsHeldBy(ids, leaseHolder)
  }

  /**
   * At start: agents held by a previous instance at this same address (`<holder prefix>…`, a process that died) in
   * a resumable state are taken over at once under a new epoch, instead of waiting for their lease to expire.
   */
  async takeOverFromAddress(
    addressPrefix: string,
    leaseHolder: string,
  ): Promise<{ agents: VerifierAgentRow[]; previousHolders: string[] }> {
    const previous = await this.db.transaction().execute(async (tx) => {
      const rows = await run<{ agent_id: string; lease_holder: string }>(tx, this.sql.takeOverLock, [
        addressPrefix.length,
        addressPrefix,
        leaseHolder,
      ])
      if (rows.length > 0)
        await run(tx, this.sql.takeOverApply, [leaseHolder, this.list(rows.map((r) => r.agent_id))])
      const holders = [...new Set(rows.map((r) => r.lease_holder))]
      for (const h of holders) await run(tx, this.sql.unregister, [h])
      return holders
    })
    const held = await run<VerifierAgentRow>(
      this.db,
      `${AGENT_SELECT} WHERE m.lease_holder = ${this.p(1)} AND m.${RESUMABLE}`,
      [leaseHolder],
    )
    return { agents: held.map(toAgentRow), previousHolders: previous }
  }

  /**
   * What changed under this holder since it loaded its agents: the epoch, configuration version and state of every
   * row it holds (rows taken over by another verifier are simply absent). One narrow query per heartbeat.
   */
  async heldRows(
    leaseHolder: string,
  ): Promise<
    { agent_id: string; lease_epoch: number; config_version: number; operational_state: number | null }[]
  > {
    return this.db
      .selectFrom('verifiermain')
      .select(['agent_id', 'lease_epoch', 'config_version', 'operational_state'])
      .where('lease_holder', '=', leaseHolder)
      .execute()
  }

  /** TERMINATED agents whose holder is gone (no lease or an expired one): their deletion must be finished. */
  async orphanedTerminated(verifierId: string, now: number): Promise<string[]> {
    const rows = await this.db
      .selectFrom('verifiermain')
      .select('agent_id')
      .where('verifier_id', '=', verifierId)
      .where('operational_state', '=', AgentState.TERMINATED)
      .where((eb) =>
        eb.or([
          eb('lease_holder', 'is', null),
          eb.not(
            eb.exists(
              eb
                .selectFrom('verifier_holders')
                .select('holder')
                .whereRef('verifier_holders.holder', '=', 'verifiermain.lease_holder')
                .where('verifier_holders.expires', '>=', now),
            ),
          ),
        ]),
      )
      .execute()
    return rows.map((r) => r.agent_id)
  }

  /** Gives up this holder's leases (graceful shutdown) so another verifier can pick the agents up at once. */
  async releaseLeases(leaseHolder: string): Promise<number> {
    return this.db.transaction().execute(async (tx) => {
      const held = await run(tx, this.sql.lockHeld, [leaseHolder])
      await run(tx, this.sql.release, [leaseHolder])
      await run(tx, this.sql.unregister, [leaseHolder])
      return held.length
    })
  }

  /** Whether a holder's heartbeat row is live at `now` (another verifier attests its agents). */
  async holderAlive(leaseHolder: string, now: number): Promise<boolean> {
    const r = await this.db
      .selectFrom('verifier_holders')
      .select('holder')
      .where('holder', '=', leaseHolder)
      .where('expires', '>=', now)
      .executeTakeFirst()
    return r !== undefined
  }

  // ---------------------------------------------------------------------------- policy bodies

  /** Kind and parse result of a stored policy body, or undefined when no body has this digest. */
  async policyBody(digest: string): Promise<{ kind: string; generator: number | null } | undefined> {
    const rows = await run<{ kind: string; generator: number | null }>(
      this.db,
      this.dialect === 'postgres' ? PG_POLICY_BODY_META : SQLITE_POLICY_BODY_META,
      [digest],
    )
    return rows[0]
  }

  async policyBodyText(digest: string): Promise<string | undefined> {
    const r = await this.db
      .selectFrom('verifier_policy_bodies')
      .select('body')
      .where('digest', '=', digest)
      .executeTakeFirst()
    return r?.body
  }

  /** Stores a body unless one with its digest is there (then it is only locked against collection). */
  private async storeBody(
    tx: Transaction<VerifierDatabase>,
    kind: 'runtime' | 'mb',
    body: PolicyBodyInput,
    generator: number | null,
  ): Promise<string> {
    let present = tx.selectFrom('verifier_policy_bodies').select('digest').where('digest', '=', body.digest)
    if (this.dialect === 'postgres') present = present.forKeyShare()
    else if (this.dialect === 'mysql') present = present.modifyEnd(sql`LOCK IN SHARE MODE`)
    if (!(await present.executeTakeFirst())) {
      const insert = tx
        .insertInto('verifier_policy_bodies')
        .values({ digest: body.digest, kind, generator, body: body.text })
      await (this.dialect === 'mysql'
        ? insert.onDuplicateKeyUpdate({ digest: (eb) => eb.ref('digest') })
        : insert.onConflict((oc) => oc.column('digest').doNothing())
      ).execute()
    }
    return body.digest
  }

  // ---------------------------------------------------------------------------- runtime policies

  /** A named runtime policy with its text. */
  async getAllowlist(name: string): Promise<AllowlistRow | undefined> {
    return this.allowlistWithText().where('a.name', '=', name).executeTakeFirst()
  }

  /** A runtime policy with its text, by id. */
  async getAllowlistById(id: number): Promise<AllowlistRow | undefined> {
    return this.allowlistWithText().where('a.id', '=', id).executeTakeFirst()
  }

  private allowlistWithText() {
    return this.db
      .selectFrom('allowlists as a')
      .leftJoin('verifier_policy_bodies as b', 'b.digest', 'a.body_digest')
      .select([
        'a.id',
        'a.name',
        'a.checksum',
        'a.generator',
        'a.tpm_policy',
        'a.body_digest',
        sql<string | null>`coalesce(b.body, a.ima_policy)`.as('ima_policy'),
      ])
  }

  /** A named runtime policy without its text. */
  async allowlistMeta(name: string): Promise<PolicyMeta | undefined> {
    const rows = await run<PolicyMeta>(
      this.db,
      this.dialect === 'postgres' ? PG_ALLOWLIST_META : SQLITE_ALLOWLIST_META,
      [name],
    )
    return rows[0]
  }

  /** A runtime policy without its text, by id. */
  async allowlistMetaById(id: number): Promise<PolicyMeta | undefined> {
    return this.db
      .selectFrom('allowlists')
      .select(['id', 'name', 'generator', 'body_digest'])
      .where('id', '=', id)
      .executeTakeFirst()
  }

  async listAllowlistNames(): Promise<string[]> {
    return this.listPolicyNames('allowlists')
  }

  async insertAllowlist(row: NewRuntimePolicy): Promise<number> {
    return this.db.transaction().execute(async (tx) => {
      const digest = await this.storeBody(tx, 'runtime', bodyInput(row.ima_policy), row.generator)
      return insertPolicyName(tx, 'allowlists', `runtime policy ${row.name}`, {
        name: row.name,
        checksum: row.checksum,
        generator: row.generator,
        tpm_policy: row.tpm_policy,
        ima_policy: null,
        body_digest: digest,
      })
    })
  }

  async updateAllowlist(name: string, row: Omit<NewRuntimePolicy, 'name'>): Promise<boolean> {
    return this.updatePolicy(
      'allowlists',
      name,
      (tx) => this.storeBody(tx, 'runtime', bodyInput(row.ima_policy), row.generator),
      (digest) => ({
        checksum: row.checksum,
        generator: row.generator,
        tpm_policy: row.tpm_policy,
        ima_policy: null,
        body_digest: digest,
      }),
    )
  }

  async deleteAllowlist(name: string): Promise<boolean> {
    return this.deletePolicy('allowlists', name)
  }

  async agentUsingPolicy(kind: 'ima' | 'mb', id: number): Promise<string | undefined> {
    const col = kind === 'ima' ? 'ima_policy_id' : 'mb_policy_id'
    const r = await this.db
      .selectFrom('verifiermain')
      .select('agent_id')
      .where(col, '=', id)
      .executeTakeFirst()
    return r?.agent_id
  }

  // ---------------------------------------------------------------------------- measured-boot policies

  /** A named measured-boot policy with its text. */
  async getMbPolicy(name: string): Promise<MbPolicyRow | undefined> {
    return this.mbPolicyWithText().where('p.name', '=', name).executeTakeFirst()
  }

  /** A measured-boot policy with its text, by id. */
  async getMbPolicyById(id: number): Promise<MbPolicyRow | undefined> {
    return this.mbPolicyWithText().where('p.id', '=', id).executeTakeFirst()
  }

  private mbPolicyWithText() {
    return this.db
      .selectFrom('mbpolicies as p')
      .leftJoin('verifier_policy_bodies as b', 'b.digest', 'p.body_digest')
      .select([
        'p.id',
        'p.name',
        'p.body_digest',
        sql<string | null>`coalesce(b.body, p.mb_policy)`.as('mb_policy'),
      ])
  }

  async mbPolicyMeta(name: string): Promise<PolicyMeta | undefined> {
    return this.mbPolicyMetaQuery().where('name', '=', name).executeTakeFirst()
  }

  /** A measured-boot policy without its text, by id. */
  async mbPolicyMetaById(id: number): Promise<PolicyMeta | undefined> {
    return this.mbPolicyMetaQuery().where('id', '=', id).executeTakeFirst()
  }

  private mbPolicyMetaQuery() {
    return this.db
      .selectFrom('mbpolicies')
      .select(['id', 'name', sql<null>`null`.as('generator'), 'body_digest'])
  }

  async listMbPolicyNames(): Promise<string[]> {
    return this.listPolicyNames('mbpolicies')
  }

  /** Stores a named measured-boot policy; `null` (or empty) text is a policy without a body. */
  async insertMbPolicy(name: string, mbPolicy: string | null): Promise<number> {
    return this.db.transaction().execute(async (tx) => {
      const digest = mbPolicy ? await this.storeBody(tx, 'mb', bodyInput(mbPolicy), null) : null
      return insertPolicyName(tx, 'mbpolicies', `measured boot policy ${name}`, {
        name,
        mb_policy: null,
        body_digest: digest,
      })
    })
  }

  async updateMbPolicy(name: string, mbPolicy: string | null): Promise<boolean> {
    return this.updatePolicy(
      'mbpolicies',
      name,
      async (tx) => (mbPolicy ? this.storeBody(tx, 'mb', bodyInput(mbPolicy), null) : null),
      (digest) => ({ mb_policy: null, body_digest: digest }),
    )
  }

  async deleteMbPolicy(name: string): Promise<boolean> {
    return this.deletePolicy('mbpolicies', name)
  }

  // ---------------------------------------------------------------------------- either kind of named policy

  private async listPolicyNames(table: PolicyTable): Promise<string[]> {
    return (await this.db.selectFrom(table).select('name').orderBy('name').execute()).map((r) => r.name)
  }

  /**
   * Rewrites a named policy with the body `storeBody` stores (its digest, or null for none) and drops the old body
   * when no policy refers to it any more. False when no policy has that name.
   */
  private async updatePolicy<T extends PolicyTable>(
    table: T,
    name: string,
    storeBody: (tx: Transaction<VerifierDatabase>) => Promise<string | null>,
    values: (digest: string | null) => Updateable<VerifierDatabase[T]>,
  ): Promise<boolean> {
    return this.db.transaction().execute(async (tx) => {
      const old = await policyBodyDigest(tx, table, name)
      if (!old) return false
      const digest = await storeBody(tx)
      await tx
        .updateTable(table as PolicyTable)
        .set(values(digest) as Updateable<AllowlistsTable>)
        .where('name', '=', name)
        .execute()
      if (old.body_digest !== digest) await collectBody(tx, old.body_digest)
      return true
    })
  }

  /** Deletes a named policy and its body when no other policy refers to it. False when no policy has that name. */
  private async deletePolicy(table: PolicyTable, name: string): Promise<boolean> {
    return this.db.transaction().execute(async (tx) => {
      const old = await policyBodyDigest(tx, table, name)
      if (!old) return false
      await tx.deleteFrom(table).where('name', '=', name).execute()
      await collectBody(tx, old.body_digest)
      return true
    })
  }
}

type PolicyTable = 'allowlists' | 'mbpolicies'

async function policyBodyDigest(
  tx: Transaction<VerifierDatabase>,
  table: PolicyTable,
  name: string,
): Promise<{ body_digest: string | null } | undefined> {
  return tx.selectFrom(table).select('body_digest').where('name', '=', name).executeTakeFirst()
}

/** A policy text and its SHA-256 (hex), the key it is stored under. */
export interface PolicyBodyInput {
  digest: string
  text: string
}

export function bodyInput(text: string): PolicyBodyInput {
  return { digest: policyDigest(text), text }
}

export function policyDigest(text: string): string {
  return createHash('sha256').update(text).digest('hex')
}

/** Policies an enrolment brings along, stored under their names (bodies shared by digest). */
export interface NewAgentPolicies {
  runtime?: { name: string; body: PolicyBodyInput; checksum: string; generator: number }
  mb?: { name: string; body: PolicyBodyInput }
}

export interface NewRuntimePolicy {
  name: string
  ima_policy: string
  checksum: string
  generator: number
  tpm_policy: string | null
}

/** Inserts a named policy row; a name already taken raises DuplicateError. Returns its id. */
async function insertPolicyName(
  tx: Transaction<VerifierDatabase>,
  table: PolicyTable,
  what: string,
  values: Insertable<AllowlistsTable> | Insertable<MbPoliciesTable>,
): Promise<number> {
  try {
    const insert = tx.insertInto(table).values(values as Insertable<AllowlistsTable>)
    // MySQL has no RETURNING (MariaDB has, MySQL 8 not): the driver reports the new id
    if (sqlDialectOf(tx) === 'mysql') return Number((await insert.executeTakeFirstOrThrow()).insertId)
    const r = await insert.returning('id').executeTakeFirstOrThrow()
    return r.id
  } catch (err) {
    if (isUniqueViolation(err)) throw new DuplicateError(what)
    throw err
  }
}

/** Deletes a policy body no named policy references any more. */
async function collectBody(tx: Transaction<VerifierDatabase>, digest: string | null): Promise<void> {
  if (digest === null) return
  await tx
    .deleteFrom('verifier_policy_bodies')
    .where('digest', '=', digest)
    .where((eb) =>
      eb.not(
        eb.or([
          eb.exists(eb.selectFrom('allowlists').select('id').where('body_digest', '=', digest)),
          eb.exists(eb.selectFrom('mbpolicies').select('id').where('body_digest', '=', digest)),
        ]),
      ),
    )
    .execute()
}

/**
 * The entry number the verifier asks for next, kept in the `ima_state` JSON; `null` or unreadable state means the
 * loop starts again from entry 0.
 */
function nextImaEntryOf(imaState: string | null): number {
  if (!imaState) return 0
  try {
    const next = (JSON.parse(imaState) as { nextEntry?: unknown }).nextEntry
    return typeof next === 'number' && Number.isSafeInteger(next) && next >= 0 ? next : 0
  } catch {
    return 0
  }
}

/** Mirrors the IMA offset into upstream's `next_ima_ml_entry` column (operators query it) when `ima_state` is written. */
function withImaOffset(patch: VerifierAgentPatch): VerifierAgentPatch {
  if (patch.ima_state === undefined || patch.next_ima_ml_entry !== undefined) return patch
  return { ...patch, next_ima_ml_entry: nextImaEntryOf(patch.ima_state) }
}

/** A unique or primary-key violation (SQLite SQLITE_CONSTRAINT_*, PostgreSQL 23505, MySQL ER_DUP_ENTRY). */
function isUniqueViolation(err: unknown): boolean {
  const code = (err as { code?: unknown })?.code
  return (
    code === '23505' ||
    code === 'SQLITE_CONSTRAINT_UNIQUE' ||
    code === 'SQLITE_CONSTRAINT_PRIMARYKEY' ||
    code === 'ER_DUP_ENTRY'
  )
}
