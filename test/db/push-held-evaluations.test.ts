/**
 * The monitor's search for abandoned push evaluations reads the index of held evaluations instead of scanning the
 * attestations (SQLite; the shared servers are covered by test/api/verifier/push-postgres.test.ts), and finds every
 * evaluation whose hold expired, whatever the number of other attestations.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { CompiledQuery, type Kysely } from 'kysely'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { openDatabase } from '../../src/db/database.ts'
import { type PushDatabase, PushRepository } from '../../src/db/push-repository.ts'

describe('held push evaluations (SQLite)', () => {
  let dir: string
  let db: Kysely<PushDatabase>
  let repo: PushRepository

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'kl-push-held-'))
    db = await openDatabase<PushDatabase>(`sqlite:///${join(dir, 'cv_data.sqlite')}`, {
      migrations: 'verifier',
    })
    repo = new PushRepository(db)
    const agents = Array.from({ length: 50 }, (_, i) => ({
      agent_id: `a${i}`,
      verifier_id: 'default',
      operational_state: 3,
      attestation_count: 0,
    }))
    await db.insertInto('verifiermain').values(agents).execute()
    for (let index = 0; index < 4; index++) {
      const rows = agents.map((a) => ({
        agent_id: a.agent_id,
        index,
        system_info__boot_time: null,
        capabilities_received_at: '2026-12-07T00:00:00Z',
        challenges_expire_at: '2099-01-01T00:00:00Z',
        evidence_requested: '[]',
        ima_starting_offset: null,
      }))
      expect((await repo.insertAttestations(rows)).size).toBe(agents.length)
    }
    // the latest attestation of three agents held until 1000, 2000 and 3000
    const held = [1000, 2000, 3000].map((expires, i) => ({
      agentId: `a${i}`,
      index: 3,
      evidenceCollected: '[]',
      receivedAt: '2026-12-07T00:00:01Z',
      holder: 'dead',
      expires,
    }))
    expect((await repo.submitEvidenceMany(held)).size).toBe(3)
  })

  afterAll(async () => {
    await db.destroy()
    rmSync(dir, { recursive: true, force: true })
  })

  it('reads the index of held evaluations, not every attestation', async () => {
    const query = db
      .selectFrom('attestations')
      .select(['agent_id', 'index', 'evaluation_holder'])
      .where('stage', '=', 'evaluating_evidence')
      .where('evaluation_expires', '<', 2500)
      .limit(100)
      .compile()
    const plan = await db.executeQuery<{ detail: string }>(
      CompiledQuery.raw(`EXPLAIN QUERY PLAN ${query.sql}`, [...query.parameters]),
    )
    expect(plan.rows.map((r) => r.detail).join('; ')).toMatch(
      /USING INDEX ix_attestations_evaluation_expires/,
    )
  })

  it('takes over exactly the evaluations whose hold expired', async () => {
    const taken = await repo.takeAbandonedEvaluations(2500, 'alive', 9000, 100)
    expect(taken.map((t) => t.agent_id).sort()).toEqual(['a0', 'a1'])
    expect(taken.every((t) => t.evaluation_holder === 'alive' && t.evaluation_expires === 9000)).toBe(true)
    // now held by 'alive' until 9000: the third one only
    expect((await repo.takeAbandonedEvaluations(3500, 'other', 9500, 100)).map((t) => t.agent_id)).toEqual([
      'a2',
    ])
  })
})
