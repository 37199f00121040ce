/**
 * The push write queue on SQLite: the new attestations and accepted evidence of one batch are written in one
 * transaction, each request told its own outcome (inserted, lost a race, took the evidence or not); a batch the
 * database refuses for one bad row falls back to the statements apart, so only that row fails.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Kysely } from 'kysely'
import pino from 'pino'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { AgentState } from '../../../src/api/verifier/states.ts'
import { openDatabase } from '../../../src/db/database.ts'
import {
  type NewAttestationRow,
  type PushDatabase,
  PushRepository,
  type SubmittedEvidence,
} from '../../../src/db/push-repository.ts'
import type { VerifierDatabase } from '../../../src/db/verifier-repository.ts'
import { DbOutage } from '../../../src/verifier/db-outage.ts'
import { PushResultBatcher } from '../../../src/verifier/push/push-results.ts'
import { PushWriteQueue } from '../../../src/verifier/push/push-writes.ts'
import { passingVerdict } from '../../helpers/push-verdicts.ts'

let dir: string
let db: Kysely<VerifierDatabase>
let repo: PushRepository
let together: number

const attestation = (agent_id: string, index: number): NewAttestationRow => ({
  agent_id,
  index,
  system_info__boot_time: null,
  capabilities_received_at: '2026-12-06T00:00:00.000Z',
  challenges_expire_at: '2099-01-01T00:00:00.000Z',
  evidence_requested: `["${agent_id} ${index}"]`,
  ima_starting_offset: null,
})
const evidence = (agentId: string, index: number): SubmittedEvidence => ({
  agentId,
  index,
  evidenceCollected: `["evidence of ${agentId} ${index}"]`,
  receivedAt: '2026-12-06T00:00:01.000Z',
  holder: 'H',
  expires: Date.now() + 60_000,
})

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kl-push-writes-'))
  db = await openDatabase<VerifierDatabase>(`sqlite:///${join(dir, 'cv.sqlite')}`, { migrations: 'verifier' })
  await db
    .insertInto('verifiermain')
    .values(
      ['a', 'b', 'c'].map((agent_id) => ({
        agent_id,
        v: null,
        ip: null,
        port: null,
        verifier_id: 'default',
        operational_state: AgentState.GET_QUOTE,
        tpm_policy: '{}',
        meta_data: '{}',
        ima_sign_verification_keys: '',
        accept_tpm_hash_algs: '["sha256"]',
        accept_tpm_encryption_algs: '["ecc"]',
        accept_tpm_signing_algs: '["ecdsa"]',
        supported_version: '2.6',
        ak_tpm: 'AA==',
        attestation_count: 0,
        push_deadline: Date.now() + 60_000,
      })),
    )
    .execute()
  repo = new PushRepository(db as unknown as Kysely<PushDatabase>)
  together = 0
  const writeRequests = repo.writeRequests.bind(repo)
  repo.writeRequests = (inserts, submits) => {
    together++
    return writeRequests(inserts, submits)
  }
})

afterEach(async () => {
  await db.destroy()
  rmSync(dir, { recursive: true, force: true })
})

const stored = async (agentId: string) =>
  (await repo.listAttestations(agentId)).map((r) => [r.index, r.stage, r.evidence_collected])

describe('push write queue on SQLite', () => {
  it('writes the creates and the evidence of one batch in one transaction, each answered as alone', async () => {
    await repo.insertAttestations([attestation('c', 0), attestation('c', 1)])
    const queue = new PushWriteQueue({ repo })
    const outcomes = await Promise.all([
      queue.insert(attestation('a', 0)),
      // a second create of the same attestation in the batch lost the race
      queue.insert(attestation('a', 0)),
      // one that exists already
      queue.insert(attestation('c', 1)),
      queue.submit(evidence('c', 1)),
      // not the latest any more
      queue.submit(evidence('c', 0)),
      queue.insert(attestation('b', 0)),
    ])
    expect(outcomes).toEqual([true, false, false, true, false, true])
    expect(together).toBe(1)
    expect(await stored('a')).toEqual([[0, 'awaiting_evidence', null]])
    expect(await stored('b')).toEqual([[0, 'awaiting_evidence', null]])
    expect(await stored('c')).toEqual([
      [0, 'awaiting_evidence', null],
      [1, 'evaluating_evidence', '["evidence of c 1"]'],
    ])
    // a replayed submission is refused
    expect(await queue.submit(evidence('c', 1))).toBe(false)
  })

  it('a row the database refuses fails alone; the rest of its batch is written once', async () => {
    await repo.insertAttestations([attestation('c', 0)])
    const queue = new PushWriteQueue({ repo })
    const [bad, a, c] = await Promise.allSettled([
      // no such agent: the foreign key refuses the row, and with it the batch's transaction
      queue.insert(attestation('nobody', 0)),
      queue.insert(attestation('a', 0)),
      queue.submit(evidence('c', 0)),
    ])
    expect(bad.status).toBe('rejected')
    expect(a).toEqual({ status: 'fulfilled', value: true })
    expect(c).toEqual({ status: 'fulfilled', value: true })
    expect(together).toBe(1)
    expect(await stored('nobody')).toEqual([])
    expect(await stored('a')).toEqual([[0, 'awaiting_evidence', null]])
    expect(await stored('c')).toEqual([[0, 'evaluating_evidence', '["evidence of c 0"]']])
  })

  it('verdicts: a batch flushMs after the first verdict; those that come while it is written wait for the next timer', async () => {
    await repo.insertAttestations(['a', 'b', 'c'].map((id) => attestation(id, 0)))
    await repo.submitEvidenceMany(['a', 'b', 'c'].map((id) => evidence(id, 0)))
    const verdict = (agentId: string) => passingVerdict(agentId, 0, 'H')
    const flushMs = 150
    const batches: { agents: string[]; started: number; ended: number }[] = []
    const batcher = new PushResultBatcher({
      repo,
      flushMs,
      extendUntil: () => null,
      onExtended: () => {},
      outage: new DbOutage(pino({ level: 'silent' })),
      log: pino({ level: 'silent' }),
    })
    const completeMany = repo.completeMany.bind(repo)
    repo.completeMany = async (items, extendUntil) => {
      const b = { agents: items.map((i) => i.agentId), started: performance.now(), ended: 0 }
      batches.push(b)
      // a verdict that comes while the first batch is being written
      if (batches.length === 1) batcher.put(verdict('c'), (o) => outcomes.set('c', o.written))
      const done = await completeMany(items, extendUntil)
      b.ended = performance.now()
      return done
    }
    const outcomes = new Map<string, boolean>()
    const t0 = performance.now()
    batcher.put(verdict('a'), (o) => outcomes.set('a', o.written))
    batcher.put(verdict('b'), (o) => outcomes.set('b', o.written))
    await expect.poll(() => outcomes.size, { timeout: 5000 }).toBe(3)
    expect(batches.map((b) => b.agents)).toEqual([['a', 'b'], ['c']])
    expect(batches[0]?.started).toBeGreaterThanOrEqual(t0 + flushMs - 5)
    // the second waited for its own timer, not straight after the first
    expect(batches[1]?.started).toBeGreaterThanOrEqual((batches[0]?.ended ?? 0) + flushMs / 2)
    expect([...outcomes.values()]).toEqual([true, true, true])
    expect((await stored('c'))[0]?.[1]).toBe('verification_complete')
    // stop() writes what is pending at once
    await repo.insertAttestations([attestation('a', 1)])
    await repo.submitEvidenceMany([evidence('a', 1)])
    batcher.put({ ...verdict('a'), index: 1 }, (o) => outcomes.set('a1', o.written))
    await batcher.stop()
    expect(outcomes.get('a1')).toBe(true)
  })
})
