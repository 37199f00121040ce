/**
 * Push mode (API 3.0) storage: upstream's `sessions` and `attestations` tables (keylime-config-and-cli.md §6) and the
 * push columns of `verifiermain`. Everything a request needs is read from and written to the database, so any
 * verifier of a group sharing it can take any request of any agent. Stage changes are conditional updates (the
 * expected stage in the WHERE clause), so two verifiers racing on one attestation cannot both win.
 */
import type { Insertable, Kysely, Selectable, Transaction, Updateable } from 'kysely'
import { CompiledQuery, sql } from 'kysely'
import { AgentState } from '../api/verifier/states.ts'
import { type DbDialect, databaseDialect, registerPreparedStatement } from './database.ts'
import {
  ATTESTATION_COLUMNS,
  listParam,
  type PushStatements,
  pushStatements,
  rowsParam,
} from './push-statements.ts'
import type { VerifierDatabase } from './verifier-repository.ts'

export interface SessionsTable {
  session_id: string
  token_hash: string | null
  token_salt: string | null
  agent_id: string
  /** 0 or 1 (a boolean column on PostgreSQL reads back as true/false). */
  active: number | boolean
  nonce: Uint8Array | null
  hash_algorithm: string | null
  signing_scheme: string | null
  ak_attest: Uint8Array | null
  ak_sign: Uint8Array | null
  nonce_created_at: string | null
  nonce_expires_at: string | null
  pop_received_at: string | null
  token_expires_at: string | null
}

export type AttestationStage = 'awaiting_evidence' | 'evaluating_evidence' | 'verification_complete'
export type AttestationEvaluation = 'pending' | 'pass' | 'fail'

export interface AttestationsTable {
  agent_id: string
  index: number
  stage: AttestationStage
  evaluation: AttestationEvaluation
  failure_reason: string | null
  system_info__boot_time: string | null
  capabilities_received_at: string | null
  challenges_expire_at: string | null
  evidence_received_at: string | null
  verification_completed_at: string | null
  /** JSON list: the evidence items requested, with the capabilities received and the chosen parameters. */
  evidence_requested: string | null
  /** JSON list: the evidence submitted; the bulky logs are dropped once verified. */
  evidence_collected: string | null
  ima_starting_offset: number | null
  ima_certified_entry_count: number | null
  /** IMA replay state after this attestation when it passed (JSON), where the next one continues from. */
  ima_state: string | null
  event_id: string | null
  event_context: string | null
  evaluation_holder: string | null
  evaluation_expires: number | null
}

export interface PushDatabase extends VerifierDatabase {
  sessions: SessionsTable
  attestations: AttestationsTable
}

export type SessionRow = Selectable<SessionsTable>
export type AttestationRow = Selectable<AttestationsTable>
export type NewAttestation = Insertable<AttestationsTable>

/** What an attestation request reads of its agent's enrolment and attestation state. */
export interface PushAgentRow {
  agent_id: string
  ip: string | null
  operational_state: number | null
  consecutive_attestation_failures: number | null
  ak_tpm: string | null
  tpm_policy: string | null
  accept_tpm_hash_algs: string | null
  accept_tpm_encryption_algs: string | null
  accept_tpm_signing_algs: string | null
  ima_policy_id: number | null
  mb_policy_id: number | null
  meta_data: string | null
  revocation_key: string | null
  last_received_quote: number | null
  tpm_clockinfo: string | null
  attestation_count: number
}

/** What an attestation request reads of its agent (one statement): the changing state and the latest attestation. */
export interface AgentForAttestation extends PushAgentRow {
  latest: AttestationRow | undefined
}

/** What a create checks of the latest attestation. */
export type LatestSummary = Pick<AttestationRow, 'index' | 'stage' | 'evidence_received_at'>

/** What a new attestation reads of its agent (one statement): as `AgentForAttestation`, the latest summarised. */
export interface AgentForCreate extends PushAgentRow {
  latest: LatestSummary | undefined
}

/** A new attestation as `insertAttestations` takes it. */
export interface NewAttestationRow {
  agent_id: string
  index: number
  system_info__boot_time: string | null
  capabilities_received_at: string
  challenges_expire_at: string
  evidence_requested: string
  ima_starting_offset: number | null
}

export interface SubmittedEvidence {
  agentId: string
  index: number
  evidenceCollected: string
  receivedAt: string
  holder: string
  expires: number
}

/** One verdict as `completeMany` writes it (see `completeEvaluation` for the meaning of each part). */
export interface CompletedEvaluation {
  agentId: string
  index: number
  holder: string
  attestation: {
    evaluation: 'pass' | 'fail'
    failure_reason: string | null
    verification_completed_at: string
    ima_state: string | null
    ima_certified_entry_count: number | null
    event_id: string | null
    event_context: string | null
    /** the evidence without its logs; null keeps what is stored */
    evidence_collected: string | null
  }
  agent: {
    push_deadline: number
    hash_alg: string | null
    sign_alg: string | null
    enc_alg: string | null
    /** null keeps the state */
    operational_state: number | null
    /** keep, reset to 0, or add one (in SQL) */
    failures: 'keep' | 'reset' | 'increment'
    last_event_id: string | null
    last_event_context: string | null
    severity_level: number | null
  }
  state: {
    passed: boolean
    last_received_quote: number
    last_successful_attestation: number | null
    tpm_clockinfo: string | null
    next_ima_ml_entry: number | null
    ima_state: string | null
  }
}

export interface CompletedBatch {
  /** Agents whose verdict was written (still held by its holder). */
  written: Set<string>
  /** Of those, the agents still enrolled (their state was written). */
  enrolled: Set<string>
  /** Sessions whose token was extended, with the new expiry. */
  extended: { session_id: string; agent_id: string; token_expires_at: string }[]
}

const FAILURES = { keep: 0, reset: 1, increment: 2 } as const

type Queryable = Kysely<PushDatabase> | Transaction<PushDatabase>

async function run<R>(db: Queryable, text: string, params: readonly unknown[]): Promise<R[]> {
  return (await db.executeQuery<R>(CompiledQuery.raw(text, [...params]))).rows
}

const num = (v: unknown) => (v === null || v === undefined ? null : Number(v))

/** An agent as read, with its latest attestation (numbers as numbers whatever the driver returns). */
function pushAgentRow<L>(
  agentId: string,
  r: Record<string, unknown>,
  latest: L,
): PushAgentRow & { latest: L } {
  return {
    agent_id: agentId,
    ip: r.ip as string | null,
    operational_state: num(r.operational_state),
    consecutive_attestation_failures: num(r.consecutive_attestation_failures),
    ak_tpm: r.ak_tpm as string | null,
    tpm_policy: r.tpm_policy as string | null,
    accept_tpm_hash_algs: r.accept_tpm_hash_algs as string | null,
    accept_tpm_encryption_algs: r.accept_tpm_encryption_algs as string | null,
    accept_tpm_signing_algs: r.accept_tpm_signing_algs as string | null,
    ima_policy_id: num(r.ima_policy_id),
    mb_policy_id: num(r.mb_policy_id),
    meta_data: r.meta_data as string | null,
    revocation_key: r.revocation_key as string | null,
    last_received_quote: num(r.last_received_quote),
    tpm_clockinfo: r.tpm_clockinfo as string | null,
    attestation_count: Number(r.attestation_count ?? 0),
    latest,
  }
}

const attestationKey = (agentId: string, index: number) => `${agentId}\u0000${index}`
/** Keys of row parameters: an attestation's (agent and index, its first two columns), or an agent's. */
const attestationRowKey = (row: readonly unknown[]) => attestationKey(row[0] as string, row[1] as number)
const agentRowKey = (row: readonly unknown[]) => row[0] as string

export class PushRepository {
  readonly dialect: DbDialect
  private readonly sql: PushStatements

  constructor(readonly db: Kysely<PushDatabase>) {
    this.dialect = databaseDialect(db)
    this.sql = pushStatements(this.dialect)
    if (this.dialect === 'postgres')
      for (const text of Object.values(this.sql)) registerPreparedStatement(text)
  }

  /** The key `insertAttestations` and `submitEvidenceMany` return for an attestation. */
  static key = attestationKey

  // ---------------------------------------------------------------------------- hot path (precompiled)

  /** What a token check needs of a session. */
  async sessionForToken(
    sessionId: string,
  ): Promise<
    | Pick<
        SessionRow,
        'session_id' | 'agent_id' | 'active' | 'token_hash' | 'token_salt' | 'token_expires_at'
      >
    | undefined
  > {
    return (await run<SessionRow>(this.db, this.sql.sessionById, [sessionId]))[0]
  }

  /** The agent's changing state and latest attestation in one read; undefined when the agent is not enrolled. */
  async agentForAttestation(agentId: string): Promise<AgentForAttestation | undefined> {
    const r = (await run<Record<string, unknown>>(this.db, this.sql.agentForAttestation, [agentId]))[0]
    if (!r) return undefined
    let latest: AttestationRow | undefined
    if (r.a_index !== null && r.a_index !== undefined) {
      const a: Record<string, unknown> = { agent_id: agentId }
      for (const c of ATTESTATION_COLUMNS) a[c] = r[`a_${c}`]
      a.index = Number(a.index)
      if (a.evaluation_expires !== null) a.evaluation_expires = Number(a.evaluation_expires)
      latest = a as unknown as AttestationRow
    }
    return pushAgentRow(agentId, r, latest)
  }

  /**
   * `agentForAttestation` for a new attestation: of the latest attestation only what the create checks (its stored
   * evidence and requests are not read).
   */
  async agentForCreate(agentId: string): Promise<AgentForCreate | undefined> {
    const r = (await run<Record<string, unknown>>(this.db, this.sql.agentForCreate, [agentId]))[0]
    if (!r) return undefined
    const latest =
      r.a_index === null || r.a_index === undefined
        ? undefined
        : {
            index: Number(r.a_index),
            stage: r.a_stage as AttestationStage,
            evidence_received_at: r.a_evidence_received_at as string | null,
          }
    return pushAgentRow(agentId, r, latest)
  }

  /**
   * Many new attestations in one statement; returns the keys (`PushRepository.key`) of those inserted. A row whose
   * agent and index exist already (another create won) is not inserted.
   */
  async insertAttestations(
    rows: readonly NewAttestationRow[],
    db: Queryable = this.db,
  ): Promise<Set<string>> {
    const values = rows.map((r) => [
      r.agent_id,
      r.index,
      r.system_info__boot_time,
      r.capabilities_received_at,
      r.challenges_expire_at,
      r.evidence_requested,
      r.ima_starting_offset,
    ])
    const params = rowsParam(this.dialect, values, 7)
    let done = await run<{ agent_id: string; index: number }>(db, this.sql.insertAttestations, params)
    // MySQL returns nothing: the rows that hold this request's challenges are the ones inserted (a row's
    // requested evidence never changes, so no transaction is needed to read it back)
    if (this.sql.mysql) done = await run(db, this.sql.mysql.insertedAttestations, params)
    return new Set(done.map((d) => attestationKey(d.agent_id, Number(d.index))))
  }

  /**
   * Many `awaiting_evidence` -> `evaluating_evidence` in one statement, each held by its holder until `expires`;
   * returns the keys of those that changed (the others were no longer awaiting evidence, no longer the latest, or
   * their agent was deleted or stopped meanwhile).
   */
  async submitEvidenceMany(
    rows: readonly SubmittedEvidence[],
    db: Queryable = this.db,
  ): Promise<Set<string>> {
    let values = rows.map((r) => [r.agentId, r.index, r.evidenceCollected, r.receivedAt, r.holder, r.expires])
    if (this.sql.mysql) {
      const eligible = await run<{ agent_id: string; index: number }>(
        db,
        this.sql.mysql.submitEligible,
        rowsParam(this.dialect, values, 6),
      )
      const keys = new Set(eligible.map((e) => attestationKey(e.agent_id, Number(e.index))))
      values = values.filter((v) => keys.has(attestationRowKey(v)))
      if (values.length === 0) return new Set()
    }
    const done = await this.updateReturning<{ agent_id: string; index: number }>(
      db,
      this.sql.submitEvidence,
      this.sql.mysql?.submitEvidence,
      values,
      (r) => attestationKey(r.agent_id, Number(r.index)),
      attestationRowKey,
    )
    return new Set(done.map((d) => attestationKey(d.agent_id, Number(d.index))))
  }

  /**
   * New attestations and accepted evidence of one write batch in one transaction (SQLite: one commit, and the pages
   * both touch, the table's newest rows, written to the log once instead of twice). Returns the keys of the rows
   * inserted and of those that took their evidence, as the two statements alone would.
   */
  async writeRequests(
    inserts: readonly NewAttestationRow[],
    submits: readonly SubmittedEvidence[],
  ): Promise<{ inserted: Set<string>; submitted: Set<string> }> {
    return this.db.transaction().execute(async (tx) => ({
      inserted: inserts.length > 0 ? await this.insertAttestations(inserts, tx) : new Set<string>(),
      submitted: submits.length > 0 ? await this.submitEvidenceMany(submits, tx) : new Set<string>(),
    }))
  }

  /**
   * One batched conditional update returning the rows it wrote: the statement itself on SQLite and PostgreSQL; on
   * MySQL, in one transaction, `statement` locks and returns the rows that qualify and `mysqlApply` writes them
   * (given only those rows: `keyOf` a locked row is `rowKeyOf` its parameter row).
   */
  private async updateReturning<R>(
    db: Queryable,
    statement: string,
    mysqlApply: string | undefined,
    rows: readonly (readonly unknown[])[],
    keyOf: (locked: R) => string,
    rowKeyOf: (row: readonly unknown[]) => string,
  ): Promise<R[]> {
    const params = rowsParam(this.dialect, rows, rows[0]?.length ?? 0)
    if (mysqlApply === undefined) return run<R>(db, statement, params)
    const apply = async (tx: Queryable) => {
      const locked = await run<R>(tx, statement, params)
      const keys = new Set(locked.map(keyOf))
      const mine = rows.filter((r) => keys.has(rowKeyOf(r)))
      if (mine.length > 0) await run(tx, mysqlApply, rowsParam(this.dialect, mine, mine[0]?.length ?? 0))
      return locked
    }
    return db.isTransaction ? apply(db) : db.transaction().execute(apply)
  }

  /**
   * Many verdicts in one transaction of five statements whatever their number: the attestations still held by their
   * holder, the enrolment rows of those agents still enrolled, their attestation state, the tokens of the passing
   * ones extended to `extendUntil` (unless null), and retention. At most one verdict per agent.
   */
  async completeMany(
    items: readonly CompletedEvaluation[],
    extendUntil: string | null,
  ): Promise<CompletedBatch> {
    const none: CompletedBatch = { written: new Set(), enrolled: new Set(), extended: [] }
    if (items.length === 0) return none
    return this.db.transaction().execute(async (tx) => {
      const written = new Set(
        (
          await this.updateReturning<{ agent_id: string; index: number }>(
            tx,
            this.sql.completeAttestations,
            this.sql.mysql?.completeAttestations,
            items.map((i) => [
              i.agentId,
              i.index,
              i.holder,
              i.attestation.evaluation,
              i.attestation.failure_reason,
              i.attestation.verification_completed_at,
              i.attestation.ima_state,
              i.attestation.ima_certified_entry_count,
              i.attestation.event_id,
              i.attestation.event_context,
              i.attestation.evidence_collected,
            ]),
            (r) => attestationKey(r.agent_id, Number(r.index)),
            attestationRowKey,
          )
        ).map((r) => r.agent_id),
      )
      const mine = items.filter((i) => written.has(i.agentId))
      if (mine.length === 0) return none
      const enrolled = new Set(
        (
          await this.updateReturning<{ agent_id: string }>(
            tx,
            this.sql.completeAgents,
            this.sql.mysql?.completeAgents,
            mine.map((i) => [
              i.agentId,
              i.agent.push_deadline,
              i.agent.hash_alg,
              i.agent.sign_alg,
              i.agent.enc_alg,
              i.agent.operational_state,
              FAILURES[i.agent.failures],
              i.agent.last_event_id,
              i.agent.last_event_context,
              i.agent.severity_level,
            ]),
            (r) => r.agent_id,
            agentRowKey,
          )
        ).map((r) => r.agent_id),
      )
      const live = mine.filter((i) => enrolled.has(i.agentId))
      if (live.length === 0) return { written, enrolled, extended: [] }
      await run(
        tx,
        this.sql.completeState,
        rowsParam(
          this.dialect,
          live.map((i) => [
            i.agentId,
            i.state.passed ? 1 : 0,
            i.state.last_received_quote,
            i.state.last_successful_attestation,
            i.state.tpm_clockinfo,
            i.state.next_ima_ml_entry,
            i.state.ima_state,
          ]),
          7,
        ),
      )
      const passed = live.filter((i) => i.state.passed).map((i) => i.agentId)
      if (passed.length === 0) return { written, enrolled, extended: [] }
      const extended = extendUntil === null ? [] : await this.extendTokens(tx, passed, extendUntil)
      await this.retention(tx, passed)
      return { written, enrolled, extended }
    })
  }

  /** Retention of the agents whose attestation passed (see `PushStatements.retention`). */
  private async retention(tx: Queryable, agentIds: readonly string[]): Promise<void> {
    const found = await run<{ agent_id: string; index: number }>(tx, this.sql.retention, [
      listParam(this.dialect, agentIds),
    ])
    if (!this.sql.mysql || found.length === 0) return
    await run(tx, this.sql.mysql.retentionDelete, [
      JSON.stringify(found.map((r) => [r.agent_id, Number(r.index)])),
    ])
  }

  /** The active tokens of `agentIds` extended to `until` (those expiring earlier); returns the sessions extended. */
  private async extendTokens(
    tx: Queryable,
    agentIds: readonly string[],
    until: string,
  ): Promise<{ session_id: string; agent_id: string; token_expires_at: string }[]> {
    const agents = listParam(this.dialect, agentIds)
    if (!this.sql.mysql) return run(tx, this.sql.extendTokens, [until, agents, until])
    const locked = await run<{ session_id: string; agent_id: string }>(tx, this.sql.extendTokens, [
      agents,
      until,
    ])
    if (locked.length === 0) return []
    const sessions = listParam(
      this.dialect,
      locked.map((s) => s.session_id),
    )
    await run(tx, this.sql.mysql.extendTokens, [sessions, until, until])
    return locked.map((s) => ({ ...s, token_expires_at: until }))
  }

  /** The latest attestation that passed (where IMA continues from). */
  async latestPassed(agentId: string): Promise<AttestationRow | undefined> {
    const r = (await run<AttestationRow>(this.db, this.sql.latestPassed, [agentId]))[0]
    if (r) {
      r.index = Number(r.index)
      if (r.evaluation_expires !== null) r.evaluation_expires = Number(r.evaluation_expires)
    }
    return r
  }

  // ---------------------------------------------------------------------------- sessions

  async insertSession(row: Insertable<SessionsTable>): Promise<void> {
    await this.db.insertInto('sessions').values(row).execute()
  }

  async getSession(sessionId: string): Promise<SessionRow | undefined> {
    return this.db.selectFrom('sessions').selectAll().where('session_id', '=', sessionId).executeTakeFirst()
  }

  /**
   * Records a passed proof of possession: this session becomes the agent's one active session with the token's
   * hash; every other session of the agent is deleted (one active session per agent). False when the session was
   * answered already (a replayed PATCH) or is gone.
   */
  async activateSession(
    sessionId: string,
    agentId: string,
    patch: Pick<
      Updateable<SessionsTable>,
      'token_hash' | 'token_salt' | 'ak_attest' | 'ak_sign' | 'pop_received_at' | 'token_expires_at'
    >,
  ): Promise<boolean> {
    return this.db.transaction().execute(async (tx) => {
      const r = await tx
        .updateTable('sessions')
        .set({ ...patch, active: 1 })
        .where('session_id', '=', sessionId)
        .where('agent_id', '=', agentId)
        .where('token_hash', 'is', null)
        .executeTakeFirst()
      if (r.numUpdatedRows === 0n) return false
      await tx
        .deleteFrom('sessions')
        .where('agent_id', '=', agentId)
        .where('session_id', '!=', sessionId)
        .execute()
      return true
    })
  }

  /** Marks a challenge as answered without a token (failed PoP): it cannot be answered again. */
  async failSession(sessionId: string, receivedAt: string): Promise<void> {
    await this.db
      .updateTable('sessions')
      .set({ active: 0, token_hash: '', pop_received_at: receivedAt })
      .where('session_id', '=', sessionId)
      .execute()
  }

  /** Deletes sessions whose token and challenge have both expired; returns how many. */
  async purgeExpiredSessions(nowIso: string): Promise<number> {
    const r = await this.db
      .deleteFrom('sessions')
      .where((eb) =>
        eb.or([
          eb.and([eb('token_expires_at', 'is not', null), eb('token_expires_at', '<', nowIso)]),
          eb.and([eb('token_expires_at', 'is', null), eb('nonce_expires_at', '<', nowIso)]),
        ]),
      )
      .executeTakeFirst()
    return Number(r.numDeletedRows)
  }

  // ---------------------------------------------------------------------------- attestations

  async latestAttestation(agentId: string): Promise<AttestationRow | undefined> {
    return this.db
      .selectFrom('attestations')
      .selectAll()
      .where('agent_id', '=', agentId)
      .orderBy('index', 'desc')
      .limit(1)
      .executeTakeFirst()
  }

  async getAttestation(agentId: string, index: number): Promise<AttestationRow | undefined> {
    return this.db
      .selectFrom('attestations')
      .selectAll()
      .where('agent_id', '=', agentId)
      .where('index', '=', index)
      .executeTakeFirst()
  }

  async listAttestations(agentId: string): Promise<AttestationRow[]> {
    return this.db
      .selectFrom('attestations')
      .selectAll()
      .where('agent_id', '=', agentId)
      .orderBy('index', 'asc')
      .execute()
  }

  /** Inserts a new attestation; a concurrent create of the same index raises a duplicate-key error (409). */
  async createAttestation(row: NewAttestation): Promise<void> {
    await this.db.insertInto('attestations').values(row).execute()
  }

  /**
   * `awaiting_evidence` -> `evaluating_evidence` with the evidence, held by `holder` until `expires`. False when
   * the attestation is no longer awaiting evidence (a replayed or concurrent PATCH).
   */
  async submitEvidence(
    agentId: string,
    index: number,
    patch: { evidence_collected: string; evidence_received_at: string; holder: string; expires: number },
  ): Promise<boolean> {
    const r = await this.db
      .updateTable('attestations')
      .set({
        stage: 'evaluating_evidence',
        evidence_collected: patch.evidence_collected,
        evidence_received_at: patch.evidence_received_at,
        evaluation_holder: patch.holder,
        evaluation_expires: patch.expires,
      })
      .where('agent_id', '=', agentId)
      .where('index', '=', index)
      .where('stage', '=', 'awaiting_evidence')
      .executeTakeFirst()
    return r.numUpdatedRows > 0n
  }

  /**
   * Evaluations whose verifier stopped before finishing (hold expired): taken over by `holder` until `expires`,
   * one verifier per attestation. Returns the taken rows.
   */
  async takeAbandonedEvaluations(
    now: number,
    holder: string,
    expires: number,
    limit: number,
  ): Promise<AttestationRow[]> {
    const candidates = await this.db
      .selectFrom('attestations')
      .select(['agent_id', 'index', 'evaluation_holder'])
      .where('stage', '=', 'evaluating_evidence')
      .where('evaluation_expires', '<', now)
      .limit(limit)
      .execute()
    return this.takeEvaluations(candidates, holder, expires)
  }

  /**
   * Evaluations held by earlier processes at this verifier's address (`<address>#…`): a restarted verifier owns its
   * address, so they are abandoned whatever their hold says, and taken over at once instead of when it expires.
   */
  async takeEvaluationsOfPredecessors(
    address: string,
    holder: string,
    expires: number,
    limit: number,
  ): Promise<AttestationRow[]> {
    const prefix = `${address}#`
    const candidates = await this.db
      .selectFrom('attestations')
      .select(['agent_id', 'index', 'evaluation_holder'])
      .where('stage', '=', 'evaluating_evidence')
      .where(sql<string>`substr(evaluation_holder, 1, ${prefix.length})`, '=', prefix)
      .where('evaluation_holder', '<>', holder)
      .limit(limit)
      .execute()
    return this.takeEvaluations(candidates, holder, expires)
  }

  /** Each candidate taken over only if still held by the holder it was found with (one verifier wins). */
  private async takeEvaluations(
    candidates: readonly { agent_id: string; index: number; evaluation_holder: string | null }[],
    holder: string,
    expires: number,
  ): Promise<AttestationRow[]> {
    const taken: AttestationRow[] = []
    for (const c of candidates) {
      const r = await this.db
        .updateTable('attestations')
        .set({ evaluation_holder: holder, evaluation_expires: expires })
        .where('agent_id', '=', c.agent_id)
        .where('index', '=', c.index)
        .where('stage', '=', 'evaluating_evidence')
        .where('evaluation_holder', c.evaluation_holder === null ? 'is' : '=', c.evaluation_holder)
        .executeTakeFirst()
      if (r.numUpdatedRows === 0n) continue
      const row = await this.getAttestation(c.agent_id, c.index)
      if (row) taken.push(row)
    }
    return taken
  }

  /**
   * Deletes an agent's attestations (before the agent row: a table taken over from upstream may lack the cascade).
   */
  async deleteAttestations(agentId: string): Promise<void> {
    await this.db.deleteFrom('attestations').where('agent_id', '=', agentId).execute()
  }

  // ---------------------------------------------------------------------------- push agents

  /**
   * Push agents whose evidence is overdue, marked FAILED and not accepting attestations, each by exactly one
   * verifier (the conditional update decides). Returns the agents this call failed.
   */
  async failOverdue(
    now: number,
    event: { eventId: string; context: string; severityLevel: number },
    limit = 500,
  ) {
    const candidates = await this.db
      .selectFrom('verifiermain')
      .select('agent_id')
      .where('ip', 'is', null)
      .where('push_deadline', '<', now)
      .where('accept_attestations', '=', 1)
      .where('operational_state', 'not in', [AgentState.TERMINATED, AgentState.TENANT_FAILED])
      .limit(limit)
      .execute()
    const failed = []
    for (const c of candidates) {
      const r = await this.db
        .updateTable('verifiermain')
        .set({
          accept_attestations: 0,
          operational_state: AgentState.FAILED,
          last_event_id: event.eventId,
          last_event_context: event.context,
          severity_level: event.severityLevel,
        })
        .where('agent_id', '=', c.agent_id)
        .where('push_deadline', '<', now)
        .where('accept_attestations', '=', 1)
        .executeTakeFirst()
      if (r.numUpdatedRows === 0n) continue
      const row = await this.db
        .selectFrom('verifiermain')
        .selectAll()
        .where('agent_id', '=', c.agent_id)
        .executeTakeFirst()
      if (row) failed.push(row)
    }
    return failed
  }

  /** `PUT /agents/:id/reactivate` of a push agent: failures cleared, attestations accepted, evidence due again. */
  async reactivate(agentId: string, deadline: number): Promise<boolean> {
    const r = await this.db
      .updateTable('verifiermain')
      .set({
        accept_attestations: 1,
        consecutive_attestation_failures: 0,
        operational_state: AgentState.GET_QUOTE,
        push_deadline: deadline,
      })
      .where('agent_id', '=', agentId)
      .executeTakeFirst()
    return r.numUpdatedRows > 0n
  }
}
