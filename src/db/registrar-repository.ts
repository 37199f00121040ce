/**
 * Every query the registrar runs, over `registrarmain` (keylime-config-and-cli.md §6). Registration and
 * activation run in one transaction each, so a rejected request never leaves a half-written row.
 */
import type { Generated, Kysely, Selectable, Transaction } from 'kysely'
import { KeylimeError } from '../common/errors.ts'

export interface RegistrarMainTable {
  agent_id: string
  /** b64 of the 32-char challenge; the HMAC key of the auth_tag. */
  key: string | null
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
  virtual: Generated<number>
  ip: string | null
  port: number | null
  active: Generated<number>
  provider_keys: string | null
  regcount: Generated<number>
}

export interface RegistrarDatabase {
  registrarmain: RegistrarMainTable
}

export interface RegistrarRecord {
  agent_id: string
  key: string | null
  aik_tpm: string | null
  ek_tpm: string | null
  ekcert: string | null
  ek_ca_chain: string | null
  iak_tpm: string | null
  idevid_tpm: string | null
  iak_cert: string | null
  idevid_cert: string | null
  mtls_cert: string | null
  ip: string | null
  port: number | null
  active: boolean
  provider_keys: Record<string, unknown> | null
  regcount: number
}

/** Fields a registration writes (identity, contact, challenge). */
export type RegistrationWrite = Omit<
  RegistrarRecord,
  'agent_id' | 'active' | 'regcount' | 'provider_keys' | 'ek_ca_chain'
> & { ek_ca_chain?: string | null }

/** A concurrent registration of the same agent won the insert race (upstream answers 403). */
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
    agent_id: row.agent_id,
    key: row.key,
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
    active: Number(row.active) !== 0,
    provider_keys: providerKeys,
    regcount: Number(row.regcount),
  }
}

function isUniqueViolation(err: unknown): boolean {
  const e = err as { code?: string; message?: string }
  return (
    e?.code === '23505' ||
    e?.code === 'SQLITE_CONSTRAINT_PRIMARYKEY' ||
    /UNIQUE constraint/.test(e?.message ?? '')
  )
}

export type ActivationOutcome = 'activated' | 'mismatch_deleted' | 'not_found'

export class RegistrarRepository {
  constructor(readonly db: Kysely<RegistrarDatabase>) {}

  async find(agentId: string): Promise<RegistrarRecord | undefined> {
    const row = await this.db
      .selectFrom('registrarmain')
      .selectAll()
      .where('agent_id', '=', agentId)
      .executeTakeFirst()
    return row ? toRecord(row) : undefined
  }

  async listIds(): Promise<string[]> {
    const rows = await this.db.selectFrom('registrarmain').select('agent_id').orderBy('agent_id').execute()
    return rows.map((r) => r.agent_id)
  }

  async delete(agentId: string): Promise<boolean> {
    const res = await this.db.deleteFrom('registrarmain').where('agent_id', '=', agentId).executeTakeFirst()
    return Number(res.numDeletedRows) > 0
  }

  /**
   * Registers inside one transaction: `check` sees the committed record (or undefined) and throws to refuse;
   * the row is then inserted or updated with `active = false` and `regcount + 1`. Returns the stored record.
   */
  async register(
    agentId: string,
    write: RegistrationWrite,
    check: (existing: RegistrarRecord | undefined) => void,
  ): Promise<RegistrarRecord> {
    try {
      return await this.db.transaction().execute(async (tx) => {
        const existingRow = await tx
          .selectFrom('registrarmain')
          .selectAll()
          .where('agent_id', '=', agentId)
          .executeTakeFirst()
        const existing = existingRow ? toRecord(existingRow) : undefined
        check(existing)
        if (existing) {
          await tx
            .updateTable('registrarmain')
            .set({ ...write, active: 0, regcount: existing.regcount + 1 })
            .where('agent_id', '=', agentId)
            .execute()
        } else {
          await tx
            .insertInto('registrarmain')
            .values({ agent_id: agentId, ...write, active: 0, regcount: 1, virtual: 0, provider_keys: null })
            .execute()
        }
        return this.findIn(tx, agentId)
      })
    } catch (err) {
      if (isUniqueViolation(err)) throw new RegistrationConflictError(agentId, { cause: err })
      throw err
    }
  }

  /**
   * Activation in one transaction: `matches(key)` compares the agent's auth_tag against the stored challenge key;
   * a mismatch deletes the record (upstream behaviour, so a failed proof forces a fresh registration).
   */
  async activate(agentId: string, matches: (key: string | null) => boolean): Promise<ActivationOutcome> {
    return this.db.transaction().execute(async (tx) => {
      const row = await tx
        .selectFrom('registrarmain')
        .select('key')
        .where('agent_id', '=', agentId)
        .executeTakeFirst()
      if (!row) return 'not_found'
      if (!matches(row.key)) {
        await tx.deleteFrom('registrarmain').where('agent_id', '=', agentId).execute()
        return 'mismatch_deleted'
      }
      await tx.updateTable('registrarmain').set({ active: 1 }).where('agent_id', '=', agentId).execute()
      return 'activated'
    })
  }

  private async findIn(tx: Transaction<RegistrarDatabase>, agentId: string): Promise<RegistrarRecord> {
    const row = await tx
      .selectFrom('registrarmain')
      .selectAll()
      .where('agent_id', '=', agentId)
      .executeTakeFirstOrThrow()
    return toRecord(row)
  }
}
