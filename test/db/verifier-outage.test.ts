/**
 * A database that refuses writes (SQLite switched to query_only: every write fails with SQLITE_READONLY) while one
 * agent becomes unreachable and another keeps passing: the verifier process stays up, the real cause is logged once
 * for the outage, and once writes work again the state changes and results are written.
 */
import Database from 'better-sqlite3'
import { Kysely, SqliteDialect } from 'kysely'
import { afterAll, describe, expect, it } from 'vitest'
import { type SimFleet, startSimFleet } from '../../bench/fleet-agents.ts'
import { AgentState } from '../../src/api/verifier/states.ts'
import type { VerifierDatabase } from '../../src/db/verifier-repository.ts'
import { ADMIN, capturingLog, enrollBody, makeVerifier, nextStep, waitFor } from '../unit/verifier/harness.ts'

const cleanups: (() => Promise<void>)[] = []
afterAll(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

describe('verifier during a database outage', () => {
  it('survives failing writes, logs the cause once, and writes every state change after recovery', async () => {
    const unhandled: unknown[] = []
    const onUnhandled = (err: unknown) => unhandled.push(err)
    process.on('unhandledRejection', onUnhandled)
    cleanups.push(async () => void process.off('unhandledRejection', onUnhandled))
    const fleet: SimFleet = await startSimFleet({ count: 2 })
    cleanups.push(() => fleet.close())
    const handle = new Database(':memory:')
    const db = new Kysely<VerifierDatabase>({ dialect: new SqliteDialect({ database: handle }) })
    const { log, lines } = capturingLog()
    const v = await makeVerifier(
      { maxRetries: 2, quoteIntervalMs: 50, retryInterval: 0.05 },
      db,
      undefined,
      log,
    )
    await v.service.start()
    cleanups.push(async () => {
      await v.service.stop()
      await v.app.close()
    })
    const [healthy, failing] = fleet.agents as [SimFleet['agents'][number], SimFleet['agents'][number]]
    for (const a of fleet.agents) {
      const passed = nextStep(v.service, a.id, (e) => e.outcome === 'quote_passed')
      const res = await v.app.inject({
        method: 'POST',
        url: `/v2.6/agents/${a.id}`,
        headers: ADMIN,
        payload: enrollBody(a, fleet.port),
      })
      expect(res.statusCode, res.body).toBe(200)
      await passed
    }
    await v.service.loop.flush()
    const countBefore = (await v.service.repo.getAgent(healthy.id))?.attestation_count ?? 0

    handle.pragma('query_only = 1')
    failing.down = true
    // the failing agent's state change and the healthy agent's batched results fail, and are retried
    await waitFor(() => v.service.outage.failedOperations >= 10, 10_000, 'writes failing')
    const quotesDuringOutage = healthy.quotes
    await waitFor(() => healthy.quotes >= quotesDuringOutage + 5, 5000, 'the healthy agent still attested')

    const failedWritten = nextStep(v.service, failing.id, (e) => e.state === AgentState.FAILED, 15_000)
    handle.pragma('query_only = 0')
    expect(await failedWritten).toMatchObject({ attested: false })
    expect((await v.service.repo.getAgent(failing.id))?.operational_state).toBe(AgentState.FAILED)
    await v.service.loop.flush()
    const healthyRow = await v.service.repo.getAgent(healthy.id)
    expect(healthyRow?.operational_state).toBe(AgentState.GET_QUOTE)
    expect(healthyRow?.attestation_count).toBeGreaterThan(countBefore + 5)

    const down = lines.filter((l) => String(l.msg).startsWith('database unavailable'))
    expect(down).toHaveLength(1)
    expect(down[0]).toMatchObject({ err: { code: 'SQLITE_READONLY' } })
    expect(lines.filter((l) => l.msg === 'database reachable again')).toHaveLength(1)
    expect(unhandled).toEqual([])
  }, 40_000)
})
