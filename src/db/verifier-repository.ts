/**
 * The verifier's tables and every query the verifier runs. Writes from the attestation loop are fenced: they apply
 * only while `operational_state` is not one an operator set (TERMINATED, TENANT_FAILED; protocols §D.7) and while the
 * caller still holds the agent's lease with the same epoch, so a verifier that lost an agent to another one (or a
 * stale instance of itself) never overwrites it.
 */
import {
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
import { migrate } from './database.ts'
import { VERIFIER_MIGRATIONS } from './migrations/index.ts'

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
  ima_policy: string | null
}

export interface MbPoliciesTable {
  id: Generated<number>
  name: string
  mb_policy: string | null
}

export interface VerifierDatabase {
  verifiermain: VerifierMainTable
  allowlists: AllowlistsTable
  mbpolicies: MbPoliciesTable
}

export type VerifierAgentRow = Selectable<VerifierMainTable>
export type NewVerifierAgent = Insertable<VerifierMainTable>
export type VerifierAgentPatch = Updateable<VerifierMainTable>
export type AllowlistRow = Selectable<AllowlistsTable>
export type MbPolicyRow = Selectable<MbPoliciesTable>

const WRITE_GUARD_EXCLUDED = OPERATOR_HELD_STATES

export class DuplicateError extends KeylimeError {
  constructor(what: string) {
    super('ERR_DUPLICATE', `${what} already exists`, { statusCode: 409 })
  }
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

export class VerifierRepository {
  constructor(readonly db: Kysely<VerifierDatabase>) {}

  // ---------------------------------------------------------------------------- agents

  /** Inserts one agent row (tests and tools; enrolment goes through `enrolAgent`). */
  async insertAgent(row: NewVerifierAgent): Promise<void> {
    await this.enrolAgent(row, {})
  }

  /**
   * Enrolment in one transaction: the policies stored with this agent (if new) and the agent row. A duplicate agent
   * or policy name (a racing identical add included) raises DuplicateError and leaves nothing behind.
   */
  async enrolAgent(
    row: NewVerifierAgent,
    newPolicies: { runtime?: Insertable<AllowlistsTable>; mb?: { name: string; mb_policy: string } },
  ): Promise<void> {
    const values =
      row.next_ima_ml_entry === undefined
        ? { ...row, next_ima_ml_entry: nextImaEntryOf(row.ima_state ?? null) }
        : row
    try {
      await this.db.transaction().execute(async (tx) => {
        if (
          await tx
            .selectFrom('verifiermain')
            .select('agent_id')
            .where('agent_id', '=', row.agent_id)
            .executeTakeFirst()
        )
          throw new DuplicateError(`agent ${row.agent_id}`)
        if (newPolicies.runtime) {
          const r = newPolicies.runtime
          if (await tx.selectFrom('allowlists').select('id').where('name', '=', r.name).executeTakeFirst())
            throw new DuplicateError(`runtime policy ${r.name}`)
          await tx.insertInto('allowlists').values(r).execute()
          const id = await tx
            .selectFrom('allowlists')
            .select('id')
            .where('name', '=', r.name)
            .executeTakeFirstOrThrow()
          values.ima_policy_id = id.id
        }
        if (newPolicies.mb) {
          const m = newPolicies.mb
          if (await tx.selectFrom('mbpolicies').select('id').where('name', '=', m.name).executeTakeFirst())
            throw new DuplicateError(`measured boot policy ${m.name}`)
          await tx.insertInto('mbpolicies').values(m).execute()
          const id = await tx
            .selectFrom('mbpolicies')
            .select('id')
            .where('name', '=', m.name)
            .executeTakeFirstOrThrow()
          values.mb_policy_id = id.id
        }
        await tx.insertInto('verifiermain').values(values).execute()
      })
    } catch (err) {
      if (isUniqueViolation(err)) throw new DuplicateError(`agent ${row.agent_id} or one of its policies`)
      throw err
    }
  }

  async getAgent(agentId: string): Promise<VerifierAgentRow | undefined> {
    return this.db.selectFrom('verifiermain').selectAll().where('agent_id', '=', agentId).executeTakeFirst()
  }

  async listAgentIds(verifierId?: string): Promise<string[]> {
    let q = this.db.selectFrom('verifiermain').select('agent_id').orderBy('agent_id')
    if (verifierId !== undefined) q = q.where('verifier_id', '=', verifierId)
    return (await q.execute()).map((r) => r.agent_id)
  }

  async listAgents(verifierId?: string): Promise<VerifierAgentRow[]> {
    let q = this.db.selectFrom('verifiermain').selectAll().orderBy('agent_id')
    if (verifierId !== undefined) q = q.where('verifier_id', '=', verifierId)
    return q.execute()
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
  async reactivate(agentId: string, leaseHolder: string, leaseExpires: number): Promise<boolean> {
    const r = await this.db
      .updateTable('verifiermain')
      .set({
        operational_state: AgentState.START,
        lease_holder: leaseHolder,
        lease_expires: leaseExpires,
        lease_epoch: sql`lease_epoch + 1`,
      })
      .where('agent_id', '=', agentId)
      .executeTakeFirst()
    return r.numUpdatedRows > 0n
  }

  /** Fenced write from the attestation loop; false when refused (deleted, stopped, lease lost or a newer epoch). */
  async updateGuarded(
    agentId: string,
    lease: { holder: string; epoch: number },
    patch: VerifierAgentPatch,
  ): Promise<boolean> {
    return updateGuardedIn(this.db, agentId, lease, patch)
  }

  /** Writes many successful attestations in one transaction; returns the agent ids the guard refused. */
  async recordSuccesses(leaseHolder: string, batch: readonly AttestationSuccess[]): Promise<string[]> {
    if (batch.length === 0) return []
    const refused: string[] = []
    await this.db.transaction().execute(async (tx) => {
      for (const s of batch) {
        const patch: VerifierAgentPatch = {
          attestation_count: s.attestationCount,
          last_received_quote: s.lastReceivedQuote,
          last_successful_attestation: s.lastSuccessfulAttestation,
          tpm_clockinfo: s.tpmClockinfo,
          operational_state: s.operationalState,
          ima_state: s.imaState,
          hash_alg: s.hashAlg,
          enc_alg: s.encAlg,
          sign_alg: s.signAlg,
        }
        if (s.publicKey !== null) patch.public_key = s.publicKey
        if (s.nextImaEntry !== undefined) patch.next_ima_ml_entry = s.nextImaEntry
        const ok = await updateGuardedIn(tx, s.agentId, { holder: leaseHolder, epoch: s.leaseEpoch }, patch)
        if (!ok) refused.push(s.agentId)
      }
    })
    return refused
  }

  /** Deletes the agent and the policies named after it that no other agent uses. */
  async deleteAgent(agentId: string): Promise<boolean> {
    return this.db.transaction().execute(async (tx) => {
      const r = await tx.deleteFrom('verifiermain').where('agent_id', '=', agentId).executeTakeFirst()
      for (const table of ['allowlists', 'mbpolicies'] as const) {
        const col = table === 'allowlists' ? 'ima_policy_id' : 'mb_policy_id'
        const pol = await tx.selectFrom(table).select('id').where('name', '=', agentId).executeTakeFirst()
        if (!pol) continue
        const user = await tx
          .selectFrom('verifiermain')
          .select('agent_id')
          .where(col, '=', pol.id)
          .executeTakeFirst()
        if (!user) await tx.deleteFrom(table).where('id', '=', pol.id).execute()
      }
      return r.numDeletedRows > 0n
    })
  }

  // ---------------------------------------------------------------------------- leases (multi-verifier)

  /** Extends every lease this holder has; returns how many rows it holds. */
  async renewLeases(leaseHolder: string, until: number): Promise<number> {
    const r = await this.db
      .updateTable('verifiermain')
      .set({ lease_expires: until })
      .where('lease_holder', '=', leaseHolder)
      .executeTakeFirst()
    return Number(r.numUpdatedRows)
  }

  /**
   * Claims up to `limit` resumable agents of `verifierId` that nobody holds or whose lease expired (a dead
   * verifier's), resets them to START and returns them. Row-level atomic on PostgreSQL (the WHERE is re-checked on
   * concurrent updates), so two verifiers never both get one agent.
   */
  async claimAgents(
    verifierId: string,
    leaseHolder: string,
    now: number,
    until: number,
    limit: number,
  ): Promise<VerifierAgentRow[]> {
    const candidates = await this.db
      .selectFrom('verifiermain')
      .select('agent_id')
      .where('verifier_id', '=', verifierId)
      .where('operational_state', 'in', RESUMABLE_STATES)
      // push agents (no address) submit their evidence: never polled
      .where('ip', 'is not', null)
      .where((eb) => eb.or([eb('lease_holder', 'is', null), eb('lease_expires', '<', now)]))
      .limit(limit)
      .execute()
    if (candidates.length === 0) return []
    const ids = candidates.map((c) => c.agent_id)
    await this.db
      .updateTable('verifiermain')
      .set({
        lease_holder: leaseHolder,
        lease_expires: until,
        lease_epoch: sql`lease_epoch + 1`,
        operational_state: AgentState.START,
      })
      .where('agent_id', 'in', ids)
      .where('operational_state', 'in', RESUMABLE_STATES)
      .where((eb) => eb.or([eb('lease_holder', 'is', null), eb('lease_expires', '<', now)]))
      .execute()
    return this.db
      .selectFrom('verifiermain')
      .selectAll()
      .where('agent_id', 'in', ids)
      .where('lease_holder', '=', leaseHolder)
      .execute()
  }

  /**
   * At start: agents held by a previous instance at this same address (`<holder prefix>…`, a process that died) in
   * a resumable state are taken over at once under a new epoch, instead of waiting for their lease to expire.
   */
  async takeOverFromAddress(
    addressPrefix: string,
    leaseHolder: string,
    until: number,
  ): Promise<{ agents: VerifierAgentRow[]; previousHolders: string[] }> {
    const samePrefix = sql<boolean>`substr(lease_holder, 1, ${addressPrefix.length}) = ${addressPrefix}`
    const previous = await this.db
      .selectFrom('verifiermain')
      .select('lease_holder')
      .distinct()
      .where(samePrefix)
      .where('lease_holder', '!=', leaseHolder)
      .where('operational_state', 'in', RESUMABLE_STATES)
      .where('ip', 'is not', null)
      .execute()
    if (previous.length > 0)
      await this.db
        .updateTable('verifiermain')
        .set({
          operational_state: AgentState.START,
          lease_holder: leaseHolder,
          lease_expires: until,
          lease_epoch: sql`lease_epoch + 1`,
        })
        .where(samePrefix)
        .where('lease_holder', '!=', leaseHolder)
        .where('operational_state', 'in', RESUMABLE_STATES)
        .where('ip', 'is not', null)
        .execute()
    const agents = await this.db
      .selectFrom('verifiermain')
      .selectAll()
      .where('lease_holder', '=', leaseHolder)
      .where('operational_state', 'in', RESUMABLE_STATES)
      .execute()
    return { agents, previousHolders: previous.map((p) => p.lease_holder as string) }
  }

  /**
   * What changed under this holder since it loaded its agents: the lease, epoch, configuration version and state of
   * every row it holds (rows taken over by another verifier are simply absent). One narrow query per heartbeat.
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
      .where((eb) => eb.or([eb('lease_holder', 'is', null), eb('lease_expires', '<', now)]))
      .execute()
    return rows.map((r) => r.agent_id)
  }

  /** Gives up this holder's leases (graceful shutdown) so another verifier can pick the agents up at once. */
  async releaseLeases(leaseHolder: string): Promise<number> {
    const r = await this.db
      .updateTable('verifiermain')
      .set({ lease_holder: null, lease_expires: null })
      .where('lease_holder', '=', leaseHolder)
      .executeTakeFirst()
    return Number(r.numUpdatedRows)
  }

  // ---------------------------------------------------------------------------- runtime policies

  async getAllowlist(name: string): Promise<AllowlistRow | undefined> {
    return this.db.selectFrom('allowlists').selectAll().where('name', '=', name).executeTakeFirst()
  }

  async getAllowlistById(id: number): Promise<AllowlistRow | undefined> {
    return this.db.selectFrom('allowlists').selectAll().where('id', '=', id).executeTakeFirst()
  }

  async listAllowlistNames(): Promise<string[]> {
    return (await this.db.selectFrom('allowlists').select('name').orderBy('name').execute()).map(
      (r) => r.name,
    )
  }

  async insertAllowlist(row: Insertable<AllowlistsTable>): Promise<number> {
    if (await this.getAllowlist(row.name)) throw new DuplicateError(`runtime policy ${row.name}`)
    await this.db.insertInto('allowlists').values(row).execute()
    return (await this.getAllowlist(row.name))?.id as number
  }

  async updateAllowlist(name: string, patch: Updateable<AllowlistsTable>): Promise<boolean> {
    const r = await this.db.updateTable('allowlists').set(patch).where('name', '=', name).executeTakeFirst()
    return r.numUpdatedRows > 0n
  }

  async deleteAllowlist(name: string): Promise<boolean> {
    const r = await this.db.deleteFrom('allowlists').where('name', '=', name).executeTakeFirst()
    return r.numDeletedRows > 0n
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

  async getMbPolicy(name: string): Promise<MbPolicyRow | undefined> {
    return this.db.selectFrom('mbpolicies').selectAll().where('name', '=', name).executeTakeFirst()
  }

  async getMbPolicyById(id: number): Promise<MbPolicyRow | undefined> {
    return this.db.selectFrom('mbpolicies').selectAll().where('id', '=', id).executeTakeFirst()
  }

  async listMbPolicyNames(): Promise<string[]> {
    return (await this.db.selectFrom('mbpolicies').select('name').orderBy('name').execute()).map(
      (r) => r.name,
    )
  }

  async insertMbPolicy(name: string, mbPolicy: string | null): Promise<number> {
    if (await this.getMbPolicy(name)) throw new DuplicateError(`measured boot policy ${name}`)
    await this.db.insertInto('mbpolicies').values({ name, mb_policy: mbPolicy }).execute()
    return (await this.getMbPolicy(name))?.id as number
  }

  async updateMbPolicy(name: string, mbPolicy: string | null): Promise<boolean> {
    const r = await this.db
      .updateTable('mbpolicies')
      .set({ mb_policy: mbPolicy })
      .where('name', '=', name)
      .executeTakeFirst()
    return r.numUpdatedRows > 0n
  }

  async deleteMbPolicy(name: string): Promise<boolean> {
    const r = await this.db.deleteFrom('mbpolicies').where('name', '=', name).executeTakeFirst()
    return r.numDeletedRows > 0n
  }
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

async function updateGuardedIn(
  db: Kysely<VerifierDatabase> | Transaction<VerifierDatabase>,
  agentId: string,
  lease: { holder: string; epoch: number },
  patch: VerifierAgentPatch,
): Promise<boolean> {
  const r = await db
    .updateTable('verifiermain')
    .set(withImaOffset(patch))
    .where('agent_id', '=', agentId)
    .where('lease_holder', '=', lease.holder)
    .where('lease_epoch', '=', lease.epoch)
    .where((eb) =>
      eb.or([eb('operational_state', 'is', null), eb('operational_state', 'not in', WRITE_GUARD_EXCLUDED)]),
    )
    .executeTakeFirst()
  return r.numUpdatedRows > 0n
}

/** A unique or primary-key violation (SQLite SQLITE_CONSTRAINT_*, PostgreSQL 23505). */
function isUniqueViolation(err: unknown): boolean {
  const code = (err as { code?: unknown })?.code
  return code === '23505' || code === 'SQLITE_CONSTRAINT_UNIQUE' || code === 'SQLITE_CONSTRAINT_PRIMARYKEY'
}
