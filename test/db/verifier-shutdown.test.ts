/**
 * A graceful stop keeps to `shutdown_drain_timeout` even when the database does not answer: with the attestation
 * state table locked by another session, the pending results write hangs, and the verifier still stops in time
 * (the write's transaction is left to roll back), then writes normally again once the lock is gone.
 */
import { randomBytes } from 'node:crypto'
import pg from 'pg'
import { afterAll, describe, expect, it } from 'vitest'
import { type SimFleet, startSimFleet } from '../../bench/fleet-agents.ts'
import { dropPgSchema, openDatabase } from '../../src/db/database.ts'
import type { VerifierDatabase } from '../../src/db/verifier-repository.ts'
import { ADMIN, enrollBody, makeVerifier, waitFor } from '../unit/verifier/harness.ts'

const PG_URL = process.env.KEYLIME_TEST_PG_URL ?? 'postgresql://postgres@127.0.0.1:5432/test'
const schema = `t_vstop_${randomBytes(6).toString('hex')}`
const cleanups: (() => Promise<void>)[] = []
afterAll(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
  await dropPgSchema(PG_URL, schema)
})

describe('graceful stop under a database that does not answer', () => {
  it('returns within the drain time while the results write is blocked', async () => {
    const fleet: SimFleet = await startSimFleet({ count: 4, shareKeys: true, akType: 'ecc' })
    cleanups.push(() => fleet.close())
    const db = await openDatabase<VerifierDatabase>(PG_URL, {
      pgSchema: schema,
      migrations: 'verifier',
      poolSize: 4,
    })
    const drainMs = 1000
    const v = await makeVerifier({ quoteIntervalMs: 50, shutdownDrainTimeoutMs: drainMs }, db)
    await v.service.start()
    for (const a of fleet.agents) {
      const res = await v.app.inject({
        method: 'POST',
        url: `/v2.6/agents/${a.id}`,
        headers: ADMIN,
        payload: enrollBody(a, fleet.port),
      })
      expect(res.statusCode, res.body).toBe(200)
    }
    await waitFor(() => fleet.agents.every((a) => a.quotes >= 3), 10_000, 'attesting')
    const locker = new pg.Client({ connectionString: PG_URL })
    await locker.connect()
    await locker.query(`SET search_path = ${schema}`)
    await locker.query('BEGIN')
    await locker.query('LOCK TABLE verifier_attestation_state IN ACCESS EXCLUSIVE MODE')
    try {
      // a results write is now waiting on the lock
      const quotes = fleet.agents.map((a) => a.quotes)
      await waitFor(
        () => fleet.agents.every((a, i) => a.quotes > (quotes[i] as number)),
        10_000,
        'more quotes',
      )
      await new Promise((r) => setTimeout(r, 400))
      const started = Date.now()
      await v.service.stop()
      const took = Date.now() - started
      expect(took).toBeGreaterThanOrEqual(drainMs - 50)
      expect(took).toBeLessThan(drainMs + 1500)
    } finally {
      await locker.query('ROLLBACK')
      await locker.end()
    }
    // the abandoned write's connection is usable again; nothing is left locked
    await waitFor(
      async () =>
        (await db.selectFrom('verifier_attestation_state').select('agent_id').execute()).length === 4,
      10_000,
      'database usable',
    )
    await db.destroy()
  }, 40_000)
})
