/**
 * Every query the registrar runs. `registrarmain` (keylime-config-and-cli.md §6) holds activated records only;
 * registrations wait in `registrarpending` until their credential activation, which swaps the pending registration
 * into `registrarmain` in one transaction. A registration or a failed activation therefore never changes an
 * activated record, and a rejected request never leaves a half-written row.
 */
import type { ColumnType, Generated, Kysely, Selectable, Transaction } from 'kysely'
import { KeylimeError } from '../common/errors.ts'

/** What one registration carries: the TPM identity and how to reach the agent (registrarmain and registrarpending). */
export interface RegistrationColumns {
  aik_tpm: string | null
  ek_tpm: string | null
  /** b64 DER */
  ekcert: string | null
  /** PEM bundle of the EK CA chain from the agent's TPM NV */
  ek_ca_chain: string | null
  iak_tpm: string | null
  idevid_tpm: string | null
  iak_cert: string | null
  idevid_cert: string | null
  /** PEM, or the literal `disabled` */
  mtls_cert: string | null
  ip: string | null
  port: number | null
}

export interface RegistrarMainTable extends RegistrationColumns {
  agent_id: string
  /** b64 of the 32-char challenge; the HMAC key of the auth_tag. */
  key: string | null
  virtual: Generated<number>
  active: Generated<number>
  provider_keys: string | null
  regcount: Generated<number>
}

/** A registration awaiting activation (one row per challenge). */
export interface RegistrarPendingTable extends RegistrationColumns {
  agent_id: string
  /** b64 of the 32-char challenge, as `registrarmain.key` */
  key: string
  /** ms since epoch (PostgreSQL hands bigint back as a string) */
  registered_at: ColumnType<number | string, number, number>
}

export interface RegistrarDatabase {
  registrarmain: RegistrarMainTable
  registrarpending: RegistrarPendingTable
}

export interface RegistrarRecord extends RegistrationColumns {
  agent_id: string
  key: string | null
  active: boolean
  provider_keys: Record<string, unknown> | null
  regcount: number
}

/** Fields a registration writes (identity, contact, challenge). */
export type RegistrationWrite = Omit<
  RegistrarRecord,
  'agent_id' | 'active' | 'regcount' | 'provider_keys' | 'ek_ca_chain'
> & { ek_ca_chain?: string | null }

/** A registration awaiting activation. */
export type PendingRegistration = RegistrationWrite & { agent_id: string; key: string; registered_at: number }

/** A concurrent activation of the same agent (another registrar process) changed the record first (403). */
export class RegistrationConflictError extends KeylimeError {
  constructor(agentId: string, options?: { cause?: unknown }) {
    super('ERR_REGISTRATION_CONFLICT', `concurrent registration of agent '${agentId}'`, {
      statusCode: 403,
      ...options,
    })
  }
}

function toRecord(row: Selectable<RegistrarMainTable>): RegistrarRecord {
  let providerKeys: Record<string, unknown> | null = null
  if (row.provider_keys) {
    try {
      providerKeys = JSON.parse(row.provider_keys) as Record<string, unknown>
    } catch {
      providerKeys = null
    }
  }
  return {
    ...registrationColumns(row),
    agent_id: row.agent_id,
    key: row.key,
    active: Number(row.active) !== 0,
    provider_keys: providerKeys,
    regcount: Number(row.regcount),
  }
}

function toPending(row: Selectable<RegistrarPendingTable>): PendingRegistration {
  return {
    ...registrationColumns(row),
    agent_id: row.agent_id,
    key: row.key,
    registered_at: Number(row.registered_at),
  }
}

/** The registration columns of a row (PostgreSQL may hand the port back as a string). */
function registrationColumns(row: Selectable<RegistrationColumns>): RegistrationColumns {
  return {
    aik_tpm: row.aik_tpm,
    ek_tpm: row.ek_tpm,
    ekcert: row.ekcert,
    ek_ca_chain: row.ek_ca_chain,
    iak_tpm: row.iak_tpm,
    idevid_tpm: row.idevid_tpm,
    iak_cert: row.iak_cert,
    idevid_cert: row.idevid_cert,
    mtls_cert: row.mtls_cert,
    ip: row.ip,
    port: row.port === null ? null : Number(row.port),
  }
}

function isUniqueViolation(err: unknown): boolean {
  const e = err as { code?: string; message?: string }
  return (
    e?.code === '23505' ||
    e?.code === 'ER_DUP_ENTRY' ||
    e?.code === 'SQLITE_CONSTRAINT_PRIMARYKEY' ||
    /UNIQUE constraint/.test(e?.message ?? '')
  )
}

/**
 * `activated`: a pending registration's challenge matched and replaced the record; `already_active`: the tag
 * answers the challenge of the current record (an agent repeating its activation); `mismatch`: nothing matched and
 * nothing changed; `not_found`: no record and no live pending registration.
 */
export type ActivationOutcome = 'activated' | 'already_active' | 'mismatch' | 'not_found'

export interface RegisterOptions {
  /** ms since epoch */
  now: number
  /** Pending registrations older than this (ms) are dead: ignored and deleted. */
  lifetimeMs: number
  /** At most this many pending registrations per agent; the oldest beyond it are dropped. */
  maxPendingPerAgent: number
}

export interface ActivateOptions {
  now: number
  lifetimeMs: number
  /** Whether an agent's auth_tag answers the challenge stored as `key`. */
  matches: (key: string) => boolean
  /** Sees the activated record (if any) and the matching registration; throws to refuse the swap. */
  check: (active: RegistrarRecord | undefined, pending: PendingRegistration) => void
}

export class RegistrarRepository {
  constructor(readonly db: Kysely<RegistrarDatabase>) {}

  /** The activated record. */
  find(agentId: string): Promise<RegistrarRecord | undefined> {
    return this.findActiveIn(this.db, agentId)
  }

  /** Registrations of the agent still waiting for activation, newest first. */
  async findPending(
    agentId: string,
    opts: { now: number; lifetimeMs: number },
  ): Promise<PendingRegistration[]> {
    const rows = await this.db
      .selectFrom('registrarpending')
      .selectAll()
      .where('agent_id', '=', agentId)
      .where('registered_at', '>=', opts.now - opts.lifetimeMs)
      .orderBy('registered_at', 'desc')
      .execute()
    return rows.map(toPending)
  }

  /** Ids of activated agents. */
  async listIds(): Promise<string[]> {
    const rows = await this.db
      .selectFrom('registrarmain')
      .select('agent_id')
      .where('active', '=', 1)
      .orderBy('agent_id')
      .execute()
    return rows.map((r) => r.agent_id)
  }

  /** Deletes the record and every pending registration of the agent; false when there was neither. */
  async delete(agentId: string): Promise<boolean> {
    return this.db.transaction().execute(async (tx) => {
      const main = await tx.deleteFrom('registrarmain').where('agent_id', '=', agentId).executeTakeFirst()
      const pending = await tx
        .deleteFrom('registrarpending')
        .where('agent_id', '=', agentId)
        .executeTakeFirst()
      return Number(main.numDeletedRows) + Number(pending.numDeletedRows) > 0
    })
  }

  /** Deletes pending registrations older than the lifetime; returns how many. */
  async deleteExpired(opts: { now: number; lifetimeMs: number }): Promise<number> {
    const res = await this.db
      .deleteFrom('registrarpending')
      .where('registered_at', '<', opts.now - opts.lifetimeMs)
      .executeTakeFirst()
    return Number(res.numDeletedRows)
  }

  /**
   * Records a registration awaiting activation, in one transaction: `check` sees the activated record (or
   * undefined) and throws to refuse; the activated record itself is never written here.
   */
  async register(
    agentId: string,
    write: RegistrationWrite,
    check: (active: RegistrarRecord | undefined) => void,
    opts: RegisterOptions,
  ): Promise<PendingRegistration> {
    const key = write.key
    if (key === null) throw new TypeError('a registration needs its challenge key')
    return this.db.transaction().execute(async (tx) => {
      check(await this.findActiveIn(tx, agentId))
      await tx
        .deleteFrom('registrarpending')
        .where('agent_id', '=', agentId)
        .where('registered_at', '<', opts.now - opts.lifetimeMs)
        .execute()
      const pending: PendingRegistration = { ...write, key, agent_id: agentId, registered_at: opts.now }
      await tx.insertInto('registrarpending').values(pending).execute()
      const surplus = await tx
        .selectFrom('registrarpending')
        .select('key')
        .where('agent_id', '=', agentId)
        .orderBy('registered_at', 'desc')
        .orderBy('key')
        .offset(opts.maxPendingPerAgent)
        .limit(1000)
        .execute()
      if (surplus.length > 0) {
        await tx
          .deleteFrom('registrarpending')
          .where('agent_id', '=', agentId)
          .where(
            'key',
            'in',
            surplus.map((r) => r.key),
          )
          .execute()
      }
      return pending
    })
  }

  /**
   * Activation in one transaction. The live pending registration whose challenge the tag answers replaces the
   * activated record (ip, port, mTLS certificate, AK, ... all at once) and every pending registration of the agent
   * is dropped. Nothing is deleted on a mismatch: a wrong tag changes nothing. A record changed meanwhile by
   * another registrar process (same database) is a conflict, never a silent overwrite.
   */
  async activate(agentId: string, opts: ActivateOptions): Promise<ActivationOutcome> {
    try {
      return await this.db.transaction().execute(async (tx) => {
        const active = await this.findActiveIn(tx, agentId)
        const pending = await tx
          .selectFrom('registrarpending')
          .selectAll()
          .where('agent_id', '=', agentId)
          .where('registered_at', '>=', opts.now - opts.lifetimeMs)
          .execute()
        const match = pending.map(toPending).find((p) => opts.matches(p.key))
        if (!match) {
          if (active?.key && opts.matches(active.key)) return 'already_active'
          return active || pending.length > 0 ? 'mismatch' : 'not_found'
        }
        opts.check(active, match)
        const { agent_id: _id, registered_at: _at, ...fields } = match
        if (active) {
          const res = await tx
            .updateTable('registrarmain')
            .set({ ...fields, active: 1, regcount: active.regcount + 1 })
            .where('agent_id', '=', agentId)
            .where('regcount', '=', active.regcount)
            .executeTakeFirst()
          if (Number(res.numUpdatedRows) !== 1) throw new RegistrationConflictError(agentId)
        } else {
          await tx
            .insertInto('registrarmain')
            .values({ agent_id: agentId, ...fields, active: 1, regcount: 1, virtual: 0, provider_keys: null })
            .execute()
        }
        await tx.deleteFrom('registrarpending').where('agent_id', '=', agentId).execute()
        return 'activated'
      })
    } catch (err) {
      if (isUniqueViolation(err)) throw new RegistrationConflictError(agentId, { cause: err })
      throw err
    }
  }

  private async findActiveIn(
    tx: Kysely<RegistrarDatabase> | Transaction<RegistrarDatabase>,
    agentId: string,
  ): Promise<RegistrarRecord | undefined> {
    const row = await tx
      .selectFrom('registrarmain')
      .selectAll()
      .where('agent_id', '=', agentId)
      .where('active', '=', 1)
      .executeTakeFirst()
    return row ? toRecord(row) : undefined
  }
}
