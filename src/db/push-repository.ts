/**
 * Push mode (API 3.0) storage: upstream's `sessions` and `attestations` tables (keylime-config-and-cli.md §6) and the
 * push columns of `verifiermain`. Everything a request needs is read from and written to the database, so any
 * verifier of a group sharing it can take any request of any agent. Stage changes are conditional updates (the
 * expected stage in the WHERE clause), so two verifiers racing on one attestation cannot both win.
 */
import type { ExpressionBuilder, Insertable, Kysely, Selectable, Updateable } from 'kysely'
import { sql } from 'kysely'
import { AgentState } from '../api/verifier/states.ts'
import { sqlDialectOf } from './sql-dialect.ts'
import { HOT_COLUMNS, type VerifierAgentPatch, type VerifierDatabase } from './verifier-repository.ts'

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

/** A unique or primary-key violation (SQLite, PostgreSQL 23505, MySQL ER_DUP_ENTRY). */
export function isDuplicateKey(err: unknown): boolean {
  const code = (err as { code?: unknown })?.code
  return (
    code === '23505' ||
    code === 'SQLITE_CONSTRAINT_UNIQUE' ||
    code === 'SQLITE_CONSTRAINT_PRIMARYKEY' ||
    code === 'ER_DUP_ENTRY'
  )
}

export class PushRepository {
  constructor(readonly db: Kysely<PushDatabase>) {}

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

  /**
   * Extends the agent's active token to `until` once it has less than until - `renewBefore` left: the write happens
   * about twice per session lifetime, not on every attestation.
   */
  async extendToken(agentId: string, until: string, renewBefore: string): Promise<void> {
    await this.db
      .updateTable('sessions')
      .set({ token_expires_at: until })
      .where('agent_id', '=', agentId)
      .where('active', '=', 1)
      .where('token_expires_at', '<', renewBefore)
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

  /** The latest attestation that passed (where IMA continues from). */
  async latestPassed(agentId: string): Promise<AttestationRow | undefined> {
    return this.db
      .selectFrom('attestations')
      .selectAll()
      .where('agent_id', '=', agentId)
      .where('evaluation', '=', 'pass')
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
    const taken: AttestationRow[] = []
    for (const c of candidates) {
      const r = await this.db
        .updateTable('attestations')
        .set({ evaluation_holder: holder, evaluation_expires: expires })
        .where('agent_id', '=', c.agent_id)
        .where('index', '=', c.index)
        .where('stage', '=', 'evaluating_evidence')
        .where('evaluation_holder', c.evaluation_holder === null ? 'is' : '=', c.evaluation_holder)
        .where('evaluation_expires', '<', now)
        .executeTakeFirst()
      if (r.numUpdatedRows === 0n) continue
      const row = await this.getAttestation(c.agent_id, c.index)
      if (row) taken.push(row)
    }
    return taken
  }

  /**
   * Writes the verdict of an attestation held by `holder` and the agent's new state in one transaction. False when
   * the attestation is no longer this holder's to finish (taken over, or the agent was deleted).
   */
  async completeEvaluation(
    agentId: string,
    index: number,
    holder: string,
    attestation: Updateable<AttestationsTable>,
    agent: VerifierAgentPatch,
    /** pass: attestation_count + 1; fail: consecutive_attestation_failures + 1 (done in SQL, races included). */
    count: 'pass' | 'fail',
  ): Promise<boolean> {
    return this.db.transaction().execute(async (tx) => {
      const r = await tx
        .updateTable('attestations')
        .set({
          ...attestation,
          stage: 'verification_complete',
          evaluation_holder: null,
          evaluation_expires: null,
        })
        .where('agent_id', '=', agentId)
        .where('index', '=', index)
        .where('stage', '=', 'evaluating_evidence')
        .where('evaluation_holder', '=', holder)
        .executeTakeFirst()
      if (r.numUpdatedRows === 0n) return false
      // the enrolment row takes the state; the columns every attestation rewrites live in verifier_attestation_state
      const main: Record<string, unknown> = {}
      const hot: Record<string, unknown> = {}
      for (const [k, v] of Object.entries(agent)) {
        if (v === undefined) continue
        if ((HOT_COLUMNS as readonly string[]).includes(k)) hot[k] = v
        else main[k] = v
      }
      const set = {
        ...main,
        ...(count === 'fail'
          ? { consecutive_attestation_failures: sql`coalesce(consecutive_attestation_failures, 0) + 1` }
          : {}),
      }
      const live = (eb: ExpressionBuilder<VerifierDatabase, 'verifiermain'>) =>
        eb.and([
          eb('agent_id', '=', agentId),
          eb.or([
            eb('operational_state', 'is', null),
            eb('operational_state', 'not in', [AgentState.TERMINATED, AgentState.TENANT_FAILED]),
          ]),
        ])
      const stillEnrolled =
        Object.keys(set).length > 0
          ? (
              await tx
                .updateTable('verifiermain')
                .set(set as VerifierAgentPatch)
                .where(live)
                .executeTakeFirst()
            ).numUpdatedRows > 0n
          : (await tx.selectFrom('verifiermain').select('agent_id').where(live).executeTakeFirst()) !==
            undefined
      if (!stillEnrolled) return true
      const increment =
        count === 'pass'
          ? { attestation_count: sql<number>`verifier_attestation_state.attestation_count + 1` }
          : {}
      if (Object.keys(hot).length === 0 && count === 'fail') return true
      const insert = tx
        .insertInto('verifier_attestation_state')
        .values({ agent_id: agentId, ...hot, attestation_count: count === 'pass' ? 1 : 0 } as never)
      await (sqlDialectOf(tx) === 'mysql'
        ? insert.onDuplicateKeyUpdate({ ...hot, ...increment } as never)
        : insert.onConflict((oc) => oc.column('agent_id').doUpdateSet({ ...hot, ...increment } as never))
      ).execute()
      return true
    })
  }

  /**
   * Retention (keylime-api.md §4.2): when the two latest attestations passed, the older one goes unless it is the
   * first after a boot (IMA and clock continue from a boot's first attestation). Failed ones are kept as a record.
   */
  async applyRetention(agentId: string): Promise<number> {
    const [newest, older, before] = await this.db
      .selectFrom('attestations')
      .select(['index', 'evaluation', 'system_info__boot_time'])
      .where('agent_id', '=', agentId)
      .where('stage', '=', 'verification_complete')
      .orderBy('index', 'desc')
      .limit(3)
      .execute()
    if (!newest || !older || newest.evaluation !== 'pass' || older.evaluation !== 'pass') return 0
    // the first attestation of a boot stays (nothing before it, or a different boot before it)
    if (!before || before.system_info__boot_time !== older.system_info__boot_time) return 0
    const r = await this.db
      .deleteFrom('attestations')
      .where('agent_id', '=', agentId)
      .where('index', '=', older.index)
      .executeTakeFirst()
    return Number(r.numDeletedRows)
  }

  /**
   * Deletes an agent's attestations (before the agent row: a table taken over from upstream may lack the cascade).
   */
  async deleteAttestations(agentId: string): Promise<void> {
    await this.db.deleteFrom('attestations').where('agent_id', '=', agentId).execute()
  }

  /** Drops the bulky logs of a verified attestation's stored evidence. */
  async storeEvidenceSummary(agentId: string, index: number, summary: string): Promise<void> {
    await this.db
      .updateTable('attestations')
      .set({ evidence_collected: summary })
      .where('agent_id', '=', agentId)
      .where('index', '=', index)
      .execute()
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
