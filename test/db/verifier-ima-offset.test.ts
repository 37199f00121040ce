/**
 * `verifiermain.next_ima_ml_entry` follows the offset kept in `ima_state`, on every path that writes the IMA state
 * (enrollment, batched successes, guarded failure writes), on SQLite and PostgreSQL.
 */
import type { Kysely } from 'kysely'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { AgentState } from '../../src/api/verifier/states.ts'
import {
  type AttestationSuccess,
  type VerifierDatabase,
  VerifierRepository,
} from '../../src/db/verifier-repository.ts'
import { verifierDialects } from '../helpers/verifier-dialects.ts'

const HOLDER = 'verifier-a'
/** Rows inserted without a claim carry lease epoch 0. */
const LEASE = { holder: HOLDER, epoch: 0 }

const imaState = (nextEntry: number) =>
  JSON.stringify({
    version: 1,
    nextEntry,
    pcr10: { sha256: 'ab'.repeat(32) },
    learnedKeyrings: {},
    progress: null,
  })

const success = (agentId: string, state: string | null): AttestationSuccess => ({
  agentId,
  leaseEpoch: 0,
  attestationCount: 1,
  lastReceivedQuote: 1_700_000_000,
  lastSuccessfulAttestation: 1_700_000_000,
  tpmClockinfo: null,
  operationalState: AgentState.GET_QUOTE,
  publicKey: null,
  imaState: state,
  hashAlg: 'sha256',
  encAlg: 'rsa',
  signAlg: 'rsassa',
})

const dialects = verifierDialects('vima')

for (const dialect of dialects) {
  describe(`next_ima_ml_entry on ${dialect.name}`, () => {
    let db: Kysely<VerifierDatabase>
    let cleanup: () => Promise<void>
    let repo: VerifierRepository
    const offset = async (agentId: string) => (await repo.getAgent(agentId))?.next_ima_ml_entry

    beforeAll(async () => {
      ;({ db, cleanup } = await dialect.open())
      repo = new VerifierRepository(db)
    })
    afterAll(async () => cleanup?.())

    it('starts at entry 0 on enrollment', async () => {
      await repo.insertAgent({
        agent_id: 'enrolled',
        operational_state: AgentState.START,
        lease_holder: HOLDER,
      })
      expect(await offset('enrolled')).toBe(0)
    })

    it('follows ima_state through batched successes, and keeps it when ima_state is not written', async () => {
      await repo.insertAgent({ agent_id: 'ok', operational_state: AgentState.START, lease_holder: HOLDER })
      expect(await repo.recordSuccesses(HOLDER, [success('ok', imaState(1234))])).toEqual([])
      expect(await offset('ok')).toBe(1234)
      expect(await repo.recordSuccesses(HOLDER, [success('ok', imaState(5000))])).toEqual([])
      expect(await offset('ok')).toBe(5000)
      expect(await repo.updateGuarded('ok', LEASE, { attestation_count: 9 })).toBe(true)
      expect(await offset('ok')).toBe(5000)
    })

    it('follows ima_state through a guarded failure write; a null state means entry 0 again', async () => {
      await repo.insertAgent({ agent_id: 'bad', operational_state: AgentState.START, lease_holder: HOLDER })
      await repo.updateGuarded('bad', LEASE, {
        operational_state: AgentState.INVALID_QUOTE,
        ima_state: imaState(77),
      })
      expect(await offset('bad')).toBe(77)
      await repo.updateGuarded('bad', LEASE, { ima_state: null })
      expect(await offset('bad')).toBe(0)
    })

    it('is not written when the lease guard refuses the write', async () => {
      await repo.insertAgent({
        agent_id: 'other',
        operational_state: AgentState.START,
        lease_holder: 'verifier-b',
      })
      expect(await repo.recordSuccesses(HOLDER, [success('other', imaState(42))])).toEqual(['other'])
      expect(await offset('other')).toBe(0)
    })
  })
}
