/**
 * No deadlocks by construction on PostgreSQL and MariaDB: two verifiers sharing agents under write load
 * (heartbeats, claims, batched results, state changes, leases lost and taken over while the loser keeps writing)
 * leave the server's own deadlock counter (PostgreSQL `pg_stat_database.deadlocks`, InnoDB `Innodb_deadlocks`)
 * where it was. Each file runs in a database of its own; a deliberate deadlock shows the counter does see one.
 */
import { randomBytes } from 'node:crypto'
import mysql from 'mysql2/promise'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { type SimFleet, startSimFleet } from '../../bench/fleet-agents.ts'
import { AgentState } from '../../src/api/verifier/states.ts'
import { mysqlPoolOptions, openDatabase, parseDatabaseUrl } from '../../src/db/database.ts'
import {
  type AttestationSuccess,
  type VerifierDatabase,
  VerifierRepository,
} from '../../src/db/verifier-repository.ts'
import { MYSQL_URL, mysqlAdmin } from '../helpers/mysql.ts'
import { ADMIN, enrollBody, makeVerifier, waitFor } from '../unit/verifier/harness.ts'

const PG_URL = process.env.KEYLIME_TEST_PG_URL ?? 'postgresql://postgres@127.0.0.1:5432/test'

async function pgAdmin<T>(f: (c: pg.Client) => Promise<T>, url = PG_URL): Promise<T> {
  const c = new pg.Client({ connectionString: url })
  await c.connect()
  try {
    return await f(c)
  } finally {
    await c.end()
  }
}

async function mysqlAdminQuery<T>(f: (c: mysql.Connection) => Promise<T>): Promise<T> {
  const c = await mysqlAdmin()
  try {
    return await f(c)
  } finally {
    await c.end()
  }
}

/** A server, a database of this file's own on it, and how the server counts deadlocks. */
interface Backend {
  name: string
  url: string
  create(): Promise<void>
  drop(): Promise<void>
  /** The deadlock counter (read once the sessions that could have counted one are gone). */
  deadlocks(): Promise<number>
  /** What the server said about its latest deadlock, for the failure message. */
  latestDeadlock(): Promise<string>
  /** Runs a statement in a session of its own that stays open until `end`. */
  session(): Promise<{ query(text: string): Promise<unknown>; end(): Promise<void> }>
  /** The error code of a deadlock victim. */
  deadlockCode: string
}

const pgName = `keylime_deadlocks_${randomBytes(5).toString('hex')}`
const mysqlDb = `kl_deadlocks_${randomBytes(5).toString('hex')}`
const backends: Backend[] = [
  {
    name: 'PostgreSQL',
    url: (() => {
      const u = new URL(PG_URL)
      u.pathname = `/${pgName}`
      return u.toString()
    })(),
    create: () => pgAdmin((c) => c.query(`CREATE DATABASE ${pgName}`)).then(() => {}),
    drop: () => pgAdmin((c) => c.query(`DROP DATABASE IF EXISTS ${pgName} WITH (FORCE)`)).then(() => {}),
    // counted per database: other suites cannot move it
    deadlocks: async () => {
      const r = await pgAdmin((c) =>
        c.query<{ deadlocks: string }>('SELECT deadlocks FROM pg_stat_database WHERE datname = $1', [pgName]),
      )
      return Number(r.rows[0]?.deadlocks ?? 0)
    },
    latestDeadlock: async () => '(see the PostgreSQL server log)',
    async session() {
      const c = new pg.Client({ connectionString: this.url })
      await c.connect()
      return { query: (text) => c.query(text), end: () => c.end() }
    },
    deadlockCode: '40P01',
  },
  {
    name: 'MariaDB',
    url: (() => {
      const u = new URL(MYSQL_URL)
      u.pathname = `/${mysqlDb}`
      return u.toString()
    })(),
    create: () =>
      mysqlAdminQuery((c) => c.query(`CREATE DATABASE ${mysqlDb} CHARACTER SET utf8mb4`)).then(() => {}),
    drop: () => mysqlAdminQuery((c) => c.query(`DROP DATABASE IF EXISTS ${mysqlDb}`)).then(() => {}),
    // InnoDB counts for the whole server: a deadlock anywhere on it meanwhile fails the test (only these suites
    // use the test server, and a deadlock of theirs is as much a bug)
    deadlocks: async () => {
      const [rows] = await mysqlAdminQuery((c) => c.query("SHOW GLOBAL STATUS LIKE 'Innodb_deadlocks'"))
      return Number((rows as { Value: string }[])[0]?.Value ?? 0)
    },
    latestDeadlock: async () => {
      const [rows] = await mysqlAdminQuery((c) => c.query('SHOW ENGINE INNODB STATUS'))
      const status = (rows as { Status: string }[])[0]?.Status ?? ''
      const at = status.indexOf('LATEST DETECTED DEADLOCK')
      return at < 0 ? '(none reported)' : status.slice(at, status.indexOf('\nTRANSACTIONS\n', at))
    },
    async session() {
      const c = await mysql.createConnection(mysqlPoolOptions(parseDatabaseUrl(this.url).target))
      return { query: (text) => c.query(text), end: () => c.end() }
    },
    deadlockCode: 'ER_LOCK_DEADLOCK',
  },
]

for (const backend of backends)
  describe(`verifiers sharing ${backend.name} never deadlock`, () => {
    const open = () => openDatabase<VerifierDatabase>(backend.url, { migrations: 'verifier', poolSize: 6 })
    const deadlocks = () => backend.deadlocks()
    /** No deadlock since `before`; the server's account of one otherwise. */
    const expectNoDeadlockSince = async (before: number) => {
      const now = await deadlocks()
      if (now !== before) expect.fail(`${now - before} deadlock(s): ${await backend.latestDeadlock()}`)
    }
    beforeAll(() => backend.create())
    afterAll(() => backend.drop())

    it('the counter sees a deliberate deadlock (two transactions locking two rows in opposite orders)', async () => {
      const before = await deadlocks()
      const db = await open()
      const repo = new VerifierRepository(db)
      await repo.insertAgent({ agent_id: 'x1' })
      await repo.insertAgent({ agent_id: 'x2' })
      await db.destroy()
      const [a, b] = [await backend.session(), await backend.session()]
      await a.query('BEGIN')
      await b.query('BEGIN')
      await a.query("UPDATE verifiermain SET port = 1 WHERE agent_id = 'x1'")
      await b.query("UPDATE verifiermain SET port = 2 WHERE agent_id = 'x2'")
      const results = await Promise.allSettled([
        a.query("UPDATE verifiermain SET port = 1 WHERE agent_id = 'x2'"),
        b.query("UPDATE verifiermain SET port = 2 WHERE agent_id = 'x1'"),
      ])
      await Promise.all([a.query('ROLLBACK'), b.query('ROLLBACK')])
      await Promise.all([a.end(), b.end()])
      expect(
        results.filter((r) => r.status === 'rejected').map((r) => (r.reason as { code?: string }).code),
      ).toEqual([backend.deadlockCode])
      await waitFor(async () => (await deadlocks()) === before + 1, 5000, 'deadlock counted')
    })

    it('heartbeats, claims, batched results and state changes of two verifiers under load: zero deadlocks, fences hold', async () => {
      const AGENTS = 200
      const setup = await open()
      const setupRepo = new VerifierRepository(setup)
      const ids = Array.from({ length: AGENTS }, (_, i) => `load-${String(i).padStart(4, '0')}`)
      await setup
        .insertInto('verifiermain')
        .values(
          ids.map((agent_id) => ({
            agent_id,
            verifier_id: 'v',
            ip: '127.0.0.1',
            port: 9002,
            operational_state: AgentState.START,
          })),
        )
        .execute()
      await setup
        .insertInto('verifier_attestation_state')
        .values(ids.map((agent_id) => ({ agent_id })))
        .execute()
      const before = await deadlocks()
      const errors: unknown[] = []
      let refusedStale = 0
      let written = 0

      /** One verifier's database traffic: what the loop and the heartbeat of a real one send, much faster. */
      const verifier = async (name: string, stopAt: number) => {
        const db = await open()
        const repo = new VerifierRepository(db)
        const holder = `${name}@host/127.0.0.1:1#${randomBytes(3).toString('hex')}`
        const held = new Map<string, number>()
        /** Its heartbeat is stalled until then (its writers go on, as those of a paused heartbeat would). */
        const stall = { until: 0 }
        let count = 0
        const leaseMs = 400
        const claim = async () => {
          for (const row of await repo.claimAgents('v', holder, Date.now(), 1000))
            held.set(row.agent_id, row.lease_epoch)
        }
        const success = (id: string, epoch: number): AttestationSuccess => ({
          agentId: id,
          leaseEpoch: epoch,
          attestationCount: ++count,
          lastReceivedQuote: Date.now(),
          lastSuccessfulAttestation: Date.now(),
          tpmClockinfo: JSON.stringify({ by: name, epoch }),
          operationalState: count % 7 === 0 ? AgentState.GET_QUOTE : AgentState.PROVIDE_V,
          publicKey: null,
          imaState: JSON.stringify({ version: 1, nextEntry: count }),
          hashAlg: 'sha256',
          encAlg: 'rsa',
          signAlg: 'rsassa',
        })
        const guard = async (f: () => Promise<void>) => {
          try {
            await f()
          } catch (err) {
            errors.push(err)
          }
        }
        const heartbeats = (async () => {
          while (Date.now() < stopAt) {
            if (Date.now() >= stall.until)
              await guard(async () => {
                await repo.heartbeat(holder, Date.now(), Date.now() + leaseMs)
                await claim()
              })
            await new Promise((r) => setTimeout(r, leaseMs / 4))
          }
        })()
        const batches = (async () => {
          while (Date.now() < stopAt) {
            await guard(async () => {
              // every agent it believes it holds, stale ones included, in a shuffled order
              const batch = [...held].sort(() => Math.random() - 0.5).map(([id, epoch]) => success(id, epoch))
              const refused = await repo.recordSuccesses(holder, batch)
              written += batch.length - refused.length
              refusedStale += refused.length
              for (const id of refused) held.delete(id)
            })
            await new Promise((r) => setTimeout(r, 5))
          }
        })()
        const stateChanges = (async () => {
          while (Date.now() < stopAt) {
            const ids = [...held]
            const pick = ids[Math.floor(Math.random() * ids.length)]
            if (pick)
              await guard(async () => {
                const [id, epoch] = pick
                const ok = await repo.updateGuarded(
                  id,
                  { holder, epoch },
                  {
                    operational_state: AgentState.GET_QUOTE,
                    last_received_quote: Date.now(),
                    ima_state: JSON.stringify({ version: 1, nextEntry: ++count }),
                  },
                )
                if (!ok) held.delete(id)
              })
            await new Promise((r) => setTimeout(r, 2))
          }
        })()
        return {
          name,
          holder,
          held,
          repo,
          db,
          done: Promise.all([heartbeats, batches, stateChanges]),
          success,
          stall,
        }
      }

      const stopAt = Date.now() + 4000
      const [a, b] = await Promise.all([verifier('A', stopAt), verifier('B', stopAt)])
      // stalls: each side's heartbeat row lapses in turn while it keeps writing, so the other claims its agents
      const stalls = (async () => {
        for (let i = 0; Date.now() < stopAt - 600; i++) {
          await new Promise((r) => setTimeout(r, 350))
          const victim = i % 2 === 0 ? a : b
          victim.stall.until = Date.now() + 250
          await setup
            .updateTable('verifier_holders')
            .set({ expires: 0 })
            .where('holder', '=', victim.holder)
            .execute()
        }
      })()
      await Promise.all([a.done, b.done, stalls])
      expect(errors).toEqual([])
      expect(refusedStale).toBeGreaterThan(0)
      expect(written).toBeGreaterThan(AGENTS * 2)

      // settle: both alive, every agent claimed, each holder writes once more for what it holds
      for (const v of [a, b]) await v.repo.heartbeat(v.holder, Date.now(), Date.now() + 60_000)
      for (const v of [a, b])
        for (const row of await v.repo.claimAgents('v', v.holder, Date.now(), 1000))
          v.held.set(row.agent_id, row.lease_epoch)
      for (const v of [a, b]) {
        const refused = await v.repo.recordSuccesses(
          v.holder,
          [...v.held].map(([id, epoch]) => v.success(id, epoch)),
        )
        for (const id of refused) v.held.delete(id)
      }
      // the last write of every agent came from its holder under its current epoch: no stale write landed after a claim
      const rows = await setupRepo.listAgents('v')
      expect(rows).toHaveLength(AGENTS)
      for (const r of rows) {
        const by = JSON.parse(r.tpm_clockinfo ?? '{}') as { by?: string; epoch?: number }
        const holderName = r.lease_holder === a.holder ? 'A' : r.lease_holder === b.holder ? 'B' : null
        expect({ id: r.agent_id, by: by.by, epoch: by.epoch }).toEqual({
          id: r.agent_id,
          by: holderName,
          epoch: r.lease_epoch,
        })
      }
      await Promise.all([a.db.destroy(), b.db.destroy(), setup.destroy()])
      await expectNoDeadlockSince(before)
    }, 90_000)

    it('two verifier services attesting one fleet, one dying and the other taking over: zero deadlocks', async () => {
      const fleet: SimFleet = await startSimFleet({ count: 24, shareKeys: true, akType: 'ecc' })
      const dbA = await open()
      const dbB = await open()
      const before = await deadlocks()
      const options = { leaseMs: 900, quoteIntervalMs: 30 }
      const va = await makeVerifier(options, dbA, 'A@127.0.0.1:1')
      const vb = await makeVerifier(options, dbB, 'B@127.0.0.1:2')
      const failedA = vi.spyOn(va.service.outage, 'failed')
      const failedB = vi.spyOn(vb.service.outage, 'failed')
      try {
        await va.service.start()
        await vb.service.start()
        for (const [i, a] of fleet.agents.entries()) {
          const v = i % 2 === 0 ? va : vb
          const res = await v.app.inject({
            method: 'POST',
            url: `/v2.6/agents/${a.id}`,
            headers: ADMIN,
            payload: enrollBody(a, fleet.port),
          })
          expect(res.statusCode, res.body).toBe(200)
        }
        await waitFor(() => fleet.agents.every((a) => a.quotes >= 5), 15_000, 'both verifiers attesting')
        await va.service.abandon()
        await waitFor(() => fleet.agents.every((a) => vb.service.loop.has(a.id)), 15_000, 'takeover')
        const counts = fleet.agents.map((a) => a.quotes)
        await waitFor(
          () => fleet.agents.every((a, i) => a.quotes >= (counts[i] as number) + 5),
          15_000,
          'after',
        )
        // no write of either failed (a deadlock victim would have been one)
        expect([...failedA.mock.calls, ...failedB.mock.calls]).toEqual([])
      } finally {
        await vb.service.stop()
        await fleet.close()
        await Promise.all([dbA.destroy(), dbB.destroy()])
      }
      await expectNoDeadlockSince(before)
    }, 90_000)
  })
