/**
 * A graceful stop keeps to `shutdown_drain_timeout` even when the database does not answer: with the attestation
 * state table locked by another session, the pending results write hangs, and the verifier still stops in time
 * (the write's transaction is left to roll back), then writes normally again once the lock is gone.
 */
import mysql from 'mysql2/promise'
import pg from 'pg'
import { afterAll, describe, expect, it } from 'vitest'
import { type SimFleet, startSimFleet } from '../../bench/fleet-agents.ts'
import { mysqlPoolOptions, openDatabase, parseDatabaseUrl } from '../../src/db/database.ts'
import type { VerifierDatabase } from '../../src/db/verifier-repository.ts'
import { type ServerTarget, SHARED_SERVERS, type SharedServer } from '../helpers/db-servers.ts'
import { ADMIN, enrollBody, makeVerifier, waitFor } from '../unit/verifier/harness.ts'

const cleanups: (() => Promise<void>)[] = []
afterAll(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

/** Another session takes the attestation state table for itself; the returned function lets it go. */
async function lockStateTable(server: SharedServer, target: ServerTarget): Promise<() => Promise<void>> {
  if (server.name === 'MariaDB') {
    const locker = await mysql.createConnection(mysqlPoolOptions(parseDatabaseUrl(target.url).target))
    await locker.query('LOCK TABLES verifier_attestation_state WRITE')
    return async () => {
      await locker.query('UNLOCK TABLES')
      await locker.end()
    }
  }
  const locker = new pg.Client({ connectionString: target.url })
  await locker.connect()
  await locker.query(`SET search_path = ${target.pgSchema}`)
  await locker.query('BEGIN')
  await locker.query('LOCK TABLE verifier_attestation_state IN ACCESS EXCLUSIVE MODE')
  return async () => {
    await locker.query('ROLLBACK')
    await locker.end()
  }
}

for (const server of SHARED_SERVERS)
  describe(`graceful stop under a database that does not answer (${server.name})`, () => {
    it('returns within the drain time while the results write is blocked', async () => {
      const fleet: SimFleet = await startSimFleet({ count: 4, shareKeys: true, akType: 'ecc' })
      cleanups.push(() => fleet.close())
      const target = await server.open('vstop')
      cleanups.push(() => target.drop())
      const db = await openDatabase<VerifierDatabase>(target.url, {
        pgSchema: target.pgSchema,
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
      const unlock = await lockStateTable(server, target)
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
        await unlock()
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
