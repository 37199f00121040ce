/**
 * Stateless push verifiers: two verifier services (each its own connection pool, as two processes) on one PostgreSQL
 * schema (or MariaDB database) take alternating requests of the same agent, as behind a round-robin load balancer: the session opened on
 * one is answered on the other, capabilities go to one and evidence to the other, and every attestation is
 * verified and counted exactly once.
 */
import type { Kysely } from 'kysely'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { openDatabase } from '../../../src/db/database.ts'
import type { VerifierDatabase } from '../../../src/db/verifier-repository.ts'
import { imaNgEntryFor } from '../../../src/devtools/ima-writer.ts'
import { DEFAULT_PUSH_OPTIONS } from '../../../src/verifier/options.ts'
import { SHARED_SERVERS } from '../../helpers/db-servers.ts'
import { createMysqlDatabase } from '../../helpers/mysql.ts'
import { PushDriver } from '../../helpers/push-driver.ts'
import { makeVerifier } from '../../unit/verifier/harness.ts'

const entries = Array.from({ length: 12 }, (_, i) => imaNgEntryFor(`/usr/sbin/daemon-${i}`, `daemon ${i}`))

// push mode's batched statements need UPDATE … RETURNING, which MySQL lacks: PostgreSQL only (see below)
for (const server of SHARED_SERVERS.filter((x) => x.name === 'PostgreSQL'))
  describe(`two push verifiers sharing ${server.name}`, () => {
    let open: () => Promise<Kysely<VerifierDatabase>>
    let agent: PushDriver
    let a: Awaited<ReturnType<typeof makeVerifier>>
    let b: Awaited<ReturnType<typeof makeVerifier>>
    const cleanups: (() => Promise<void>)[] = []

    beforeAll(async () => {
      const target = await server.open('push')
      cleanups.push(() => target.drop())
      open = () =>
        openDatabase<VerifierDatabase>(target.url, {
          pgSchema: target.pgSchema,
          migrations: 'verifier',
          poolSize: 4,
        })
      agent = await PushDriver.start()
      cleanups.push(() => agent.close())
      const push = { mode: 'push' as const, quoteIntervalMs: 0, push: { ...DEFAULT_PUSH_OPTIONS } }
      const dbA = await open()
      const dbB = await open()
      a = await makeVerifier(push, dbA, 'A@127.0.0.1:1')
      b = await makeVerifier(push, dbB, 'B@127.0.0.1:2')
      cleanups.push(async () => {
        for (const v of [a, b]) {
          await v.app.close()
          await v.service.stop()
          await v.db.destroy()
        }
      })
    }, 120_000)

    afterAll(async () => {
      for (const c of cleanups.splice(0).reverse()) await c()
    })

    it('take alternating requests of one agent; each attestation is verified and counted once', async () => {
      const verifiers = [a, b]
      let turn = 0
      /** The next request goes to the other verifier. */
      const next = () => {
        const v = verifiers[turn++ % 2] as typeof a
        agent.app = v.app
        return v
      }
      next()
      await agent.extend(entries.slice(0, 4))
      await agent.enrol('shared', entries)
      for (let round = 0; round < 4; round++) {
        next()
        const s = await agent.openSession('shared')
        next()
        const answered = await agent.answerSession('shared', s.id, await agent.certify(s.challenge))
        expect(answered.statusCode, answered.body).toBe(200)
        const token = answered.json().data.attributes.token as string
        next()
        const created = await agent.startAttestation('shared', token)
        expect(created.statusCode, created.body).toBe(201)
        const requested = created.json().data.attributes.evidence_requested
        expect(requested[1].chosen_parameters.starting_offset).toBe(round === 0 ? 0 : agent.log.length - 2)
        const evaluating = next()
        const res = await agent.submit('shared', token, await agent.evidence(requested))
        expect(res.statusCode, res.body).toBe(202)
        await evaluating.service.push?.attestations.idle()
        next()
        const done = await agent.get('shared')
        expect(done.attributes.evaluation, JSON.stringify(done.attributes.failure)).toBe('pass')
        expect((await agent.status('shared')).attestation_count).toBe(round + 1)
        await agent.extend(entries.slice(4 + 2 * round, 6 + 2 * round))
      }
      // neither verifier holds an evaluation, and a round of both monitors finds nothing to take over
      expect(await a.service.push?.attestations.resumeAbandoned()).toBe(0)
      expect(await b.service.push?.attestations.resumeAbandoned()).toBe(0)
      const status = await agent.status('shared')
      expect(status.attestation_count).toBe(4)
      expect(status.attestation_status).toBe('PASS')
    })

    it('a pull verifier on the same database never claims the push agent', async () => {
      const pull = await makeVerifier({ leaseMs: 1000 }, await open(), 'P@127.0.0.1:3')
      try {
        await pull.service.start()
        await pull.service.beat()
        expect(pull.service.loop.has('shared')).toBe(false)
        expect((await agent.status('shared')).operational_state).toBe(3)
      } finally {
        await pull.app.close()
        await pull.service.stop()
        await pull.db.destroy()
      }
    })
  })

describe('a push verifier on MariaDB', () => {
  it("is refused by name at start, not run with another dialect's statements", async () => {
    const target = await createMysqlDatabase('push')
    const db = await openDatabase<VerifierDatabase>(target.url, { migrations: 'verifier', poolSize: 2 })
    try {
      const push = { mode: 'push' as const, quoteIntervalMs: 0, push: { ...DEFAULT_PUSH_OPTIONS } }
      await expect(makeVerifier(push, db, 'A@127.0.0.1:1')).rejects.toThrow(
        /push mode is not available on MySQL\/MariaDB databases yet/,
      )
    } finally {
      await db.destroy()
      await target.drop()
    }
  })
})
