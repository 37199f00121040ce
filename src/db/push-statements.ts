/**
 * The statements of push mode's hot path, written once per dialect and run as they are (no query building per
 * request; SQLite reuses the prepared statement by its text, PostgreSQL gets a named prepared statement). A batch of
 * rows is one parameter per column on PostgreSQL (`unnest`) and one JSON array on SQLite (`json_each`) and MySQL
 * (`JSON_TABLE`), so the text never depends on the batch size. Kept apart from the repository so a further dialect
 * adds its branch here.
 *
 * MySQL/MariaDB have no `UPDATE … RETURNING`: there a batched conditional update is two statements in one
 * transaction, a locking read of the rows that qualify (primary-key lookups in key order, so two verifiers lock in
 * the same order and cannot deadlock) and the update of exactly those rows (`mysql` below); the rows read are the
 * rows written, since nothing else can change them while they are locked.
 */
import { AgentState } from '../api/verifier/states.ts'
import type { DbDialect } from './database.ts'

export interface PushStatements {
  /** What a token check needs of a session. */
  sessionById: string
  /**
   * What an attestation request needs of its agent, in one read: the enrolment columns the checks derive from (their
   * parsed forms are cached by text), the state that changes with every attestation, and the latest attestation.
   */
  agentForAttestation: string
  /**
   * What a new attestation needs of its agent: the same enrolment and state columns, and of the latest attestation
   * only what the create checks (index, stage, when its evidence came), not its stored evidence.
   */
  agentForCreate: string
  latestPassed: string
  /** Many new attestations; a row whose (agent, index) exists is skipped and missing from what is returned. */
  insertAttestations: string
  /**
   * Many `awaiting_evidence` -> `evaluating_evidence`, each only while it is its agent's latest attestation and the
   * agent may attest (a push agent not stopped by an operator); returns the rows that changed.
   */
  submitEvidence: string
  /** Many verdicts, each only when still held by its holder; returns the rows written. */
  completeAttestations: string
  /** The enrolment rows of the agents whose verdict was written (still enrolled ones only; returned). */
  completeAgents: string
  /** Their attestation state: counts, times, clock and IMA state. */
  completeState: string
  /** Extends the active tokens of many agents to one expiry (returns the sessions extended). */
  extendTokens: string
  /** Retention for many agents: when the two latest attestations passed, the older goes unless first of its boot. */
  retention: string
  /**
   * MySQL only, the second statement of each write the other dialects do in one: there `insertAttestations` inserts
   * (a duplicate key changes nothing), `submitEvidence`, `completeAttestations`, `completeAgents` and `extendTokens`
   * lock and return the rows that qualify, and these write them.
   */
  mysql?: MysqlPushStatements
}

export interface MysqlPushStatements {
  /** Of the rows given to `submitEvidence`, those that may take evidence (latest, agent a live push agent). */
  submitEligible: string
  /** Deletes the attestations `retention` found (rows of agent and index). */
  retentionDelete: string
  /** Of the rows given to `insertAttestations`, those inserted by it: the stored request is this one (its challenge). */
  insertedAttestations: string
  /** The locked attestations to `evaluating_evidence` (the rows of `submitEvidence`'s parameter that it returned). */
  submitEvidence: string
  /** The verdicts of the locked attestations. */
  completeAttestations: string
  /** The enrolment rows of the locked agents. */
  completeAgents: string
  /** The locked sessions (parameters: the new expiry, the sessions, the new expiry again). */
  extendTokens: string
}

/** Latest attestation columns, selected with an `a_` prefix by `agentForAttestation`. */
export const ATTESTATION_COLUMNS = [
  'index',
  'stage',
  'evaluation',
  'failure_reason',
  'system_info__boot_time',
  'capabilities_received_at',
  'challenges_expire_at',
  'evidence_received_at',
  'verification_completed_at',
  'evidence_requested',
  'evidence_collected',
  'ima_starting_offset',
  'ima_certified_entry_count',
  'ima_state',
  'event_id',
  'event_context',
  'evaluation_holder',
  'evaluation_expires',
] as const

/** The columns of the latest attestation `agentForCreate` reads (same `a_` prefix). */
export const LATEST_SUMMARY_COLUMNS = ['index', 'stage', 'evidence_received_at'] as const

/** The enrolment columns `agentForAttestation` reads (besides the attestation state and the latest attestation). */
export const AGENT_COLUMNS = [
  'ip',
  'operational_state',
  'consecutive_attestation_failures',
  'ak_tpm',
  'tpm_policy',
  'accept_tpm_hash_algs',
  'accept_tpm_encryption_algs',
  'accept_tpm_signing_algs',
  'ima_policy_id',
  'mb_policy_id',
  'meta_data',
  'revocation_key',
] as const

const LIVE = (table: string) =>
  `(${table}.operational_state IS NULL OR ${table}.operational_state NOT IN (${AgentState.TERMINATED}, ${AgentState.TENANT_FAILED}))`

/** MySQL column types of the JSON row parameters (binary collation: compared with our tables' keys and texts). */
const MYSQL_TYPES: Record<string, string> = {
  key: 'VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin',
  text: 'LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin',
  int: 'INT',
  bigint: 'BIGINT',
}

/**
 * The batch row shapes both dialects send: column names and types (`key`: an agent id; PostgreSQL reads it as text,
 * MySQL as a binary-collated VARCHAR so it can be joined to the primary keys).
 */
const INSERT_ROW = {
  names: ['agent_id', 'idx', 'boot', 'received', 'expires', 'requested', 'ima'],
  types: ['key', 'int', 'text', 'text', 'text', 'text', 'int'],
}
const SUBMIT_ROW = {
  names: ['agent_id', 'idx', 'evidence', 'received', 'holder', 'expires'],
  types: ['key', 'int', 'text', 'text', 'text', 'bigint'],
}
const VERDICT_ROW = {
  names: [
    'agent_id',
    'idx',
    'holder',
    'evaluation',
    'reason',
    'completed',
    'ima_state',
    'ima_count',
    'event_id',
    'event_context',
    'evidence',
  ],
  types: ['key', 'int', 'text', 'text', 'text', 'text', 'text', 'int', 'text', 'text', 'text'],
}
const AGENT_ROW = {
  names: [
    'agent_id',
    'deadline',
    'hash_alg',
    'sign_alg',
    'enc_alg',
    'state',
    'failures',
    'event_id',
    'event_context',
    'severity',
  ],
  types: ['key', 'bigint', 'text', 'text', 'text', 'int', 'int', 'text', 'text', 'int'],
}
const STATE_ROW = {
  names: ['agent_id', 'passed', 'received', 'succeeded', 'clock', 'next_ima', 'ima_state'],
  types: ['key', 'int', 'bigint', 'bigint', 'text', 'int', 'text'],
}
type RowShape = { names: readonly string[]; types: readonly string[] }

export function pushStatements(dialect: DbDialect): PushStatements {
  if (dialect === 'mysql') return mysqlPushStatements()
  const pg = dialect === 'postgres'
  const q = (c: string) => (c === 'index' ? '"index"' : c)
  const one = pg ? '$1' : '?'
  /** Rows of `types.length` columns named `names`, as a FROM item called `v`. */
  const rows = ({ names, types }: RowShape, first = 1) =>
    pg
      ? `unnest(${types.map((t, i) => `$${first + i}::${t === 'key' ? 'text' : t}[]`).join(', ')}) AS v(${names.join(', ')})`
      : `(SELECT ${names.map((n, i) => `j.value->>${i} AS ${n}`).join(', ')} FROM json_each(?) AS j) AS v`
  const list = (n = 1) => (pg ? `(SELECT unnest($${n}::text[]))` : '(SELECT value FROM json_each(?))')
  const hot = (c: string) => `CASE WHEN s.agent_id IS NULL THEN m.${c} ELSE s.${c} END AS ${c}`
  const active = pg ? 'active' : 'active = 1'
  const agentWithLatest = (
    latest: readonly string[],
  ) => `SELECT m.agent_id, ${AGENT_COLUMNS.map((c) => `m.${c}`).join(', ')},
        ${hot('last_received_quote')}, ${hot('tpm_clockinfo')}, ${hot('attestation_count')},
        ${latest.map((c) => `a.${q(c)} AS a_${c}`).join(', ')}
      FROM verifiermain m
      LEFT JOIN verifier_attestation_state s ON s.agent_id = m.agent_id
      LEFT JOIN attestations a ON a.agent_id = m.agent_id
        AND a."index" = (SELECT max(x."index") FROM attestations x WHERE x.agent_id = m.agent_id)
      WHERE m.agent_id = ${one}`
  return {
    sessionById: `SELECT session_id, agent_id, active, token_hash, token_salt, token_expires_at FROM sessions
      WHERE session_id = ${one}`,
    agentForAttestation: agentWithLatest(ATTESTATION_COLUMNS),
    agentForCreate: agentWithLatest(LATEST_SUMMARY_COLUMNS),
    latestPassed: `SELECT * FROM attestations WHERE agent_id = ${one} AND evaluation = 'pass'
      ORDER BY "index" DESC LIMIT 1`,
    insertAttestations: `INSERT INTO attestations (agent_id, "index", stage, evaluation, system_info__boot_time,
        capabilities_received_at, challenges_expire_at, evidence_requested, ima_starting_offset)
      SELECT v.agent_id, v.idx, 'awaiting_evidence', 'pending', v.boot, v.received, v.expires, v.requested, v.ima
      FROM ${rows(INSERT_ROW)} WHERE true
      ON CONFLICT (agent_id, "index") DO NOTHING RETURNING agent_id, "index"`,
    submitEvidence: `UPDATE attestations SET stage = 'evaluating_evidence', evidence_collected = v.evidence,
        evidence_received_at = v.received, evaluation_holder = v.holder, evaluation_expires = v.expires
      FROM ${rows(SUBMIT_ROW)}
      WHERE attestations.agent_id = v.agent_id AND attestations."index" = v.idx
        AND attestations.stage = 'awaiting_evidence'
        AND NOT EXISTS (SELECT 1 FROM attestations n WHERE n.agent_id = v.agent_id AND n."index" > v.idx)
        AND EXISTS (SELECT 1 FROM verifiermain m WHERE m.agent_id = v.agent_id AND m.ip IS NULL AND ${LIVE('m')})
      RETURNING attestations.agent_id, attestations."index"`,
    completeAttestations: `UPDATE attestations SET stage = 'verification_complete', evaluation = v.evaluation,
        failure_reason = v.reason, verification_completed_at = v.completed, ima_state = v.ima_state,
        ima_certified_entry_count = v.ima_count, event_id = v.event_id, event_context = v.event_context,
        evidence_collected = COALESCE(v.evidence, attestations.evidence_collected), evaluation_holder = NULL, evaluation_expires = NULL
      FROM ${rows(VERDICT_ROW)}
      WHERE attestations.agent_id = v.agent_id AND attestations."index" = v.idx
        AND attestations.stage = 'evaluating_evidence' AND attestations.evaluation_holder = v.holder
      RETURNING attestations.agent_id`,
    // failures: 0 keeps the count, 1 resets it (a pass that recovers), 2 adds one (a failure, counted in SQL)
    completeAgents: `UPDATE verifiermain SET push_deadline = v.deadline, accept_attestations = 1,
        hash_alg = COALESCE(v.hash_alg, verifiermain.hash_alg), sign_alg = COALESCE(v.sign_alg, verifiermain.sign_alg),
        enc_alg = COALESCE(v.enc_alg, verifiermain.enc_alg),
        operational_state = COALESCE(v.state, verifiermain.operational_state),
        consecutive_attestation_failures = CASE v.failures WHEN 1 THEN 0
          WHEN 2 THEN COALESCE(verifiermain.consecutive_attestation_failures, 0) + 1
          ELSE verifiermain.consecutive_attestation_failures END,
        last_event_id = COALESCE(v.event_id, verifiermain.last_event_id),
        last_event_context = COALESCE(v.event_context, verifiermain.last_event_context),
        severity_level = COALESCE(v.severity, verifiermain.severity_level)
      FROM ${rows(AGENT_ROW)}
      WHERE verifiermain.agent_id = v.agent_id AND ${LIVE('verifiermain')}
      RETURNING verifiermain.agent_id`,
    completeState: `INSERT INTO verifier_attestation_state (agent_id, attestation_count, last_received_quote,
        last_successful_attestation, tpm_clockinfo, next_ima_ml_entry, ima_state)
      SELECT v.agent_id, v.passed, v.received, v.succeeded, v.clock, v.next_ima, v.ima_state
      FROM ${rows(STATE_ROW)} WHERE true
      ON CONFLICT (agent_id) DO UPDATE SET
        attestation_count = verifier_attestation_state.attestation_count + excluded.attestation_count,
        last_received_quote = excluded.last_received_quote,
        last_successful_attestation = COALESCE(excluded.last_successful_attestation,
          verifier_attestation_state.last_successful_attestation),
        tpm_clockinfo = COALESCE(excluded.tpm_clockinfo, verifier_attestation_state.tpm_clockinfo),
        next_ima_ml_entry = COALESCE(excluded.next_ima_ml_entry, verifier_attestation_state.next_ima_ml_entry),
        ima_state = COALESCE(excluded.ima_state, verifier_attestation_state.ima_state)`,
    // parameters: the new expiry, the agents, the new expiry again
    extendTokens: `UPDATE sessions SET token_expires_at = ${pg ? '$1' : '?'} WHERE agent_id IN ${list(2)} AND ${active}
      AND token_expires_at < ${pg ? '$3' : '?'} RETURNING session_id, agent_id, token_expires_at`,
    retention: `WITH r AS (
        SELECT agent_id, "index", evaluation, system_info__boot_time,
          row_number() OVER (PARTITION BY agent_id ORDER BY "index" DESC) AS rn
        FROM attestations WHERE agent_id IN ${list()} AND stage = 'verification_complete')
      DELETE FROM attestations WHERE (agent_id, "index") IN (
        SELECT o.agent_id, o."index" FROM r o
        JOIN r n ON n.agent_id = o.agent_id AND n.rn = 1
        JOIN r b ON b.agent_id = o.agent_id AND b.rn = 3
        WHERE o.rn = 2 AND n.evaluation = 'pass' AND o.evaluation = 'pass'
          AND b.system_info__boot_time IS NOT DISTINCT FROM o.system_info__boot_time)`,
  }
}

/**
 * MySQL/MariaDB (MariaDB 10.6+, MySQL 8): `JSON_TABLE` rows, `ON DUPLICATE KEY UPDATE`, and the two-statement
 * conditional writes described at the top. Locking reads are `STRAIGHT_JOIN`s driven by the parameter, whose rows
 * `rowsParam` sorts by key: InnoDB locks rows as the join reaches them, so in key order (ORDER BY sorts only after).
 */
function mysqlPushStatements(): PushStatements {
  const rows = ({ names, types }: RowShape) =>
    `JSON_TABLE(?, '$[*]' COLUMNS (${names.map((n, i) => `${n} ${MYSQL_TYPES[types[i] as string]} PATH '$[${i}]'`).join(', ')})) AS v`
  const list = `JSON_TABLE(?, '$[*]' COLUMNS (value ${MYSQL_TYPES.key} PATH '$')) AS l`
  const hot = (c: string) => `CASE WHEN s.agent_id IS NULL THEN m.${c} ELSE s.${c} END AS ${c}`
  const byKey = 'FORCE INDEX (PRIMARY) ON a.agent_id = v.agent_id AND a.`index` = v.idx'
  const agentWithLatest = (
    latest: readonly string[],
  ) => `SELECT m.agent_id, ${AGENT_COLUMNS.map((c) => `m.${c}`).join(', ')},
        ${hot('last_received_quote')}, ${hot('tpm_clockinfo')}, ${hot('attestation_count')},
        ${latest.map((c) => `a.\`${c}\` AS a_${c}`).join(', ')}
      FROM verifiermain m
      LEFT JOIN verifier_attestation_state s ON s.agent_id = m.agent_id
      LEFT JOIN attestations a ON a.agent_id = m.agent_id
        AND a.\`index\` = (SELECT max(x.\`index\`) FROM attestations x WHERE x.agent_id = m.agent_id)
      WHERE m.agent_id = ?`
  return {
    sessionById: `SELECT session_id, agent_id, active, token_hash, token_salt, token_expires_at FROM sessions
      WHERE session_id = ?`,
    agentForAttestation: agentWithLatest(ATTESTATION_COLUMNS),
    agentForCreate: agentWithLatest(LATEST_SUMMARY_COLUMNS),
    latestPassed: `SELECT * FROM attestations WHERE agent_id = ? AND evaluation = 'pass'
      ORDER BY \`index\` DESC LIMIT 1`,
    // a duplicate key changes nothing (as DO NOTHING; INSERT IGNORE would also swallow a missing agent)
    insertAttestations: `INSERT INTO attestations (agent_id, \`index\`, stage, evaluation, system_info__boot_time,
        capabilities_received_at, challenges_expire_at, evidence_requested, ima_starting_offset)
      SELECT v.agent_id, v.idx, 'awaiting_evidence', 'pending', v.boot, v.received, v.expires, v.requested, v.ima
      FROM ${rows(INSERT_ROW)}
      ON DUPLICATE KEY UPDATE attestations.agent_id = attestations.agent_id`,
    // only the attestation rows: which of them may take evidence is read beforehand without locks
    // (`mysql.submitEligible`), as a locking read would lock the rows its subqueries read too
    submitEvidence: `SELECT STRAIGHT_JOIN a.agent_id, a.\`index\`
      FROM ${rows(SUBMIT_ROW)} JOIN attestations a ${byKey}
      WHERE a.stage = 'awaiting_evidence' ORDER BY a.agent_id, a.\`index\` FOR UPDATE`,
    completeAttestations: `SELECT STRAIGHT_JOIN a.agent_id, a.\`index\`
      FROM ${rows(VERDICT_ROW)} JOIN attestations a ${byKey}
      WHERE a.stage = 'evaluating_evidence' AND a.evaluation_holder = v.holder
      ORDER BY a.agent_id, a.\`index\` FOR UPDATE`,
    completeAgents: `SELECT STRAIGHT_JOIN m.agent_id
      FROM ${rows(AGENT_ROW)} JOIN verifiermain m FORCE INDEX (PRIMARY) ON m.agent_id = v.agent_id
      WHERE ${LIVE('m')} ORDER BY m.agent_id FOR UPDATE`,
    // each assignment reads only its own column: MySQL gives a multi-table UPDATE's assignments no order
    completeState: `INSERT INTO verifier_attestation_state (agent_id, attestation_count, last_received_quote,
        last_successful_attestation, tpm_clockinfo, next_ima_ml_entry, ima_state)
      SELECT v.agent_id, v.passed, v.received, v.succeeded, v.clock, v.next_ima, v.ima_state
      FROM ${rows(STATE_ROW)}
      ON DUPLICATE KEY UPDATE
        attestation_count = verifier_attestation_state.attestation_count + VALUES(attestation_count),
        last_received_quote = VALUES(last_received_quote),
        last_successful_attestation = COALESCE(VALUES(last_successful_attestation),
          verifier_attestation_state.last_successful_attestation),
        tpm_clockinfo = COALESCE(VALUES(tpm_clockinfo), verifier_attestation_state.tpm_clockinfo),
        next_ima_ml_entry = COALESCE(VALUES(next_ima_ml_entry), verifier_attestation_state.next_ima_ml_entry),
        ima_state = COALESCE(VALUES(ima_state), verifier_attestation_state.ima_state)`,
    // parameters: the agents, the new expiry
    extendTokens: `SELECT STRAIGHT_JOIN s.session_id, s.agent_id
      FROM ${list}
      JOIN sessions s FORCE INDEX (ix_sessions_agent_id) ON s.agent_id = l.value
      WHERE s.active = 1 AND s.token_expires_at < ? ORDER BY s.agent_id, s.session_id FOR UPDATE`,
    // the attestation two back per agent (LEAD) must exist and share the boot time of the one removed (rn = 2);
    // a plain read of the agents' attestations by primary key, then `mysql.retentionDelete` of the keys found (a
    // DELETE joined to this read would lock the rows it scans)
    retention: `SELECT r.agent_id, r.\`index\` FROM (
        SELECT STRAIGHT_JOIN x.agent_id, x.\`index\`, x.evaluation, x.system_info__boot_time AS boot,
          row_number() OVER w AS rn, LAG(x.evaluation) OVER w AS newer_evaluation,
          LEAD(x.\`index\`) OVER w AS older_index, LEAD(x.system_info__boot_time) OVER w AS older_boot
        FROM ${list}
        JOIN attestations x FORCE INDEX (PRIMARY) ON x.agent_id = l.value
        WHERE x.stage = 'verification_complete'
        WINDOW w AS (PARTITION BY x.agent_id ORDER BY x.\`index\` DESC)) r
      WHERE r.rn = 2 AND r.newer_evaluation = 'pass' AND r.evaluation = 'pass' AND r.older_index IS NOT NULL
        AND r.older_boot <=> r.boot ORDER BY r.agent_id, r.\`index\``,
    mysql: {
      submitEligible: `SELECT STRAIGHT_JOIN a.agent_id, a.\`index\`
        FROM ${rows(SUBMIT_ROW)} JOIN attestations a ${byKey}
        JOIN verifiermain m FORCE INDEX (PRIMARY) ON m.agent_id = v.agent_id
        WHERE a.stage = 'awaiting_evidence' AND m.ip IS NULL AND ${LIVE('m')}
          AND NOT EXISTS (SELECT 1 FROM attestations n WHERE n.agent_id = v.agent_id AND n.\`index\` > v.idx)`,
      insertedAttestations: `SELECT STRAIGHT_JOIN a.agent_id, a.\`index\`
        FROM ${rows(INSERT_ROW)} JOIN attestations a ${byKey}
        WHERE a.evidence_requested = v.requested`,
      submitEvidence: `UPDATE ${rows(SUBMIT_ROW)} STRAIGHT_JOIN attestations a ${byKey}
        SET a.stage = 'evaluating_evidence', a.evidence_collected = v.evidence, a.evidence_received_at = v.received,
          a.evaluation_holder = v.holder, a.evaluation_expires = v.expires
        WHERE a.stage = 'awaiting_evidence'`,
      completeAttestations: `UPDATE ${rows(VERDICT_ROW)} STRAIGHT_JOIN attestations a ${byKey}
        SET a.stage = 'verification_complete', a.evaluation = v.evaluation, a.failure_reason = v.reason,
          a.verification_completed_at = v.completed, a.ima_state = v.ima_state, a.ima_certified_entry_count = v.ima_count,
          a.event_id = v.event_id, a.event_context = v.event_context,
          a.evidence_collected = COALESCE(v.evidence, a.evidence_collected), a.evaluation_holder = NULL,
          a.evaluation_expires = NULL
        WHERE a.stage = 'evaluating_evidence' AND a.evaluation_holder = v.holder`,
      completeAgents: `UPDATE ${rows(AGENT_ROW)}
          STRAIGHT_JOIN verifiermain m FORCE INDEX (PRIMARY) ON m.agent_id = v.agent_id
        SET m.push_deadline = v.deadline, m.accept_attestations = 1, m.hash_alg = COALESCE(v.hash_alg, m.hash_alg),
          m.sign_alg = COALESCE(v.sign_alg, m.sign_alg), m.enc_alg = COALESCE(v.enc_alg, m.enc_alg),
          m.operational_state = COALESCE(v.state, m.operational_state),
          m.consecutive_attestation_failures = CASE v.failures WHEN 1 THEN 0
            WHEN 2 THEN COALESCE(m.consecutive_attestation_failures, 0) + 1
            ELSE m.consecutive_attestation_failures END,
          m.last_event_id = COALESCE(v.event_id, m.last_event_id),
          m.last_event_context = COALESCE(v.event_context, m.last_event_context),
          m.severity_level = COALESCE(v.severity, m.severity_level)`,
      retentionDelete: `DELETE a FROM ${rows({ names: ['agent_id', 'idx'], types: ['key', 'int'] })} STRAIGHT_JOIN attestations a ${byKey}`,
      extendTokens: `UPDATE ${list}
          STRAIGHT_JOIN sessions s FORCE INDEX (PRIMARY) ON s.session_id = l.value
        SET s.token_expires_at = ? WHERE s.active = 1 AND s.token_expires_at < ?`,
    },
  }
}

/**
 * Rows as statement parameters: one array per column on PostgreSQL (for unnest), one JSON array on SQLite and MySQL.
 * Sorted by their first two columns, the key, on the servers where two verifiers write concurrently: rows are locked
 * (and inserted) in the order the statement reads them, and two batches of the same rows in opposite orders would
 * deadlock (MySQL's locking reads follow the parameter; PostgreSQL's inserts and small joins follow unnest).
 */
export function rowsParam(
  dialect: DbDialect,
  rows: readonly (readonly unknown[])[],
  width: number,
): unknown[] {
  if (dialect === 'sqlite') return [JSON.stringify(rows)]
  const sorted = [...rows].sort(byKey)
  if (dialect === 'mysql') return [JSON.stringify(sorted)]
  return Array.from({ length: width }, (_, i) => sorted.map((r) => r[i] ?? null))
}

/** A list of values as one parameter: an array on PostgreSQL, JSON text on SQLite and MySQL (sorted there). */
export function listParam(dialect: DbDialect, values: readonly unknown[]): unknown {
  if (dialect === 'mysql') return JSON.stringify([...values].sort())
  return dialect === 'postgres' ? values : JSON.stringify(values)
}

function byKey(a: readonly unknown[], b: readonly unknown[]): number {
  for (let i = 0; i < 2; i++) {
    const x = a[i] as string | number
    const y = b[i] as string | number
    if (x < y) return -1
    if (x > y) return 1
  }
  return 0
}
