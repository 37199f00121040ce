/**
 * The loop's fenced writes on every dialect (PostgreSQL runs each as one statement): a batch writes the attestation
 * state of the agents still held under the same epoch, writes the enrolment row only when its state, key or
 * algorithms changed, keeps a stored key when the success carries none, and names every agent it refused (another
 * holder, a newer epoch, TERMINATED, deleted); a guarded state change writes both tables or nothing.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { AgentState } from '../../src/api/verifier/states.ts'
import { type AttestationSuccess, VerifierRepository } from '../../src/db/verifier-repository.ts'
import { verifierDialects } from '../helpers/verifier-dialects.ts'

const HOLDER = 'verifier-a'

const success = (agentId: string, over: Partial<AttestationSuccess> = {}): AttestationSuccess => ({
  agentId,
  leaseEpoch: 0,
  attestationCount: 5,
  lastReceivedQuote: 1_700_000_100,
  lastSuccessfulAttestation: 1_700_000_100,
  tpmClockinfo: '{"clock":7}',
  operationalState: AgentState.GET_QUOTE,
  publicKey: null,
  imaState: JSON.stringify({ version: 1, nextEntry: 12 }),
  hashAlg: 'sha256',
  encAlg: 'rsa',
  signAlg: 'rsassa',
  ...over,
})

const dialects = verifierDialects('vfw')

for (const dialect of dialects) {
  describe(`fenced writes on ${dialect.name}`, () => {
    let repo: VerifierRepository
    let cleanup: () => Promise<void>

    beforeAll(async () => {
      const opened = await dialect.open()
      cleanup = opened.cleanup
      repo = new VerifierRepository(opened.db)
    })
    afterAll(async () => cleanup?.())

    /** The row with its BIGINT columns as numbers (PostgreSQL's driver returns them as strings). */
    const row = async (agentId: string) => {
      const r = await repo.getAgent(agentId)
      if (!r) return undefined
      for (const c of ['last_received_quote', 'last_successful_attestation'] as const)
        if (r[c] !== null) r[c] = Number(r[c])
      return r
    }

    const enrol = (agentId: string, over: Record<string, unknown> = {}) =>
      repo.insertAgent({
        agent_id: agentId,
        operational_state: AgentState.GET_QUOTE,
        lease_holder: HOLDER,
        public_key: 'stored-key',
        hash_alg: 'sha256',
        enc_alg: 'rsa',
        sign_alg: 'rsassa',
        ...over,
      })

    it('writes what is held, refuses the rest by name and leaves refused rows untouched', async () => {
      await enrol('b-same')
      await enrol('b-retry', { operational_state: AgentState.GET_QUOTE_RETRY })
      await enrol('b-newkey')
      await enrol('b-other', { lease_holder: 'verifier-b' })
      await enrol('b-epoch', { lease_epoch: 3 })
      await enrol('b-terminated', { operational_state: AgentState.TERMINATED })
      const refused = await repo.recordSuccesses(HOLDER, [
        success('b-terminated'),
        success('b-same'),
        success('b-other'),
        success('b-retry'),
        success('b-gone'),
        success('b-newkey', { publicKey: 'new-key', hashAlg: 'sha384' }),
        success('b-epoch', { leaseEpoch: 2 }),
      ])
      expect(refused.sort()).toEqual(['b-epoch', 'b-gone', 'b-other', 'b-terminated'])

      const same = await row('b-same')
      expect(same).toMatchObject({
        attestation_count: 5,
        last_successful_attestation: 1_700_000_100,
        tpm_clockinfo: '{"clock":7}',
        next_ima_ml_entry: 12,
        public_key: 'stored-key',
        operational_state: AgentState.GET_QUOTE,
      })
      expect(await row('b-retry')).toMatchObject({
        operational_state: AgentState.GET_QUOTE,
        attestation_count: 5,
      })
      expect(await row('b-newkey')).toMatchObject({ public_key: 'new-key', hash_alg: 'sha384' })
      for (const id of ['b-other', 'b-epoch', 'b-terminated']) {
        const r = await row(id)
        expect(r?.attestation_count).toBe(0)
        expect(r?.tpm_clockinfo ?? null).toBeNull()
      }
      expect(await row('b-terminated')).toMatchObject({ operational_state: AgentState.TERMINATED })
    })

    it('a guarded state change writes both tables when held and nothing when the fence refuses', async () => {
      await enrol('g-held')
      await enrol('g-lost', { lease_holder: 'verifier-b' })
      await enrol('g-stopped', { operational_state: AgentState.TENANT_FAILED })
      const patch = {
        operational_state: AgentState.INVALID_QUOTE,
        severity_level: 4,
        last_received_quote: 1_700_000_200,
        attestation_count: 8,
      }
      expect(await repo.updateGuarded('g-held', { holder: HOLDER, epoch: 0 }, patch)).toBe(true)
      expect(await row('g-held')).toMatchObject(patch)
      expect(await repo.updateGuarded('g-held', { holder: HOLDER, epoch: 1 }, patch)).toBe(false)
      expect(await repo.updateGuarded('g-lost', { holder: HOLDER, epoch: 0 }, patch)).toBe(false)
      expect(await repo.updateGuarded('g-stopped', { holder: HOLDER, epoch: 0 }, patch)).toBe(false)
      expect(await repo.updateGuarded('g-nobody', { holder: HOLDER, epoch: 0 }, patch)).toBe(false)
      for (const id of ['g-lost', 'g-stopped'])
        expect(await row(id)).toMatchObject({ attestation_count: 0, severity_level: null })
      // only attestation state columns: the enrolment row is locked, not written, and the fence still applies
      expect(await repo.updateGuarded('g-held', { holder: HOLDER, epoch: 0 }, { attestation_count: 9 })).toBe(
        true,
      )
      expect(await repo.updateGuarded('g-lost', { holder: HOLDER, epoch: 0 }, { attestation_count: 9 })).toBe(
        false,
      )
      expect((await row('g-held'))?.attestation_count).toBe(9)
      expect((await row('g-lost'))?.attestation_count).toBe(0)
    })
  })
}
