/**
 * Stateless push verifiers: two verifier services (each its own connection pool, as two processes) on one PostgreSQL
 * schema, then on one MariaDB database, take alternating requests of the same agent, as behind a round-robin load
 * balancer: the session opened on one is answered on the other, capabilities go to one and evidence to the other, and every attestation is
 * verified and counted exactly once.
 */
import type { Kysely } from 'kysely'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { openDatabase } from '../../../src/db/database.ts'
import {
  type CompletedEvaluation,
  type PushDatabase,
  PushRepository,
} from '../../../src/db/push-repository.ts'
import type { VerifierDatabase } from '../../../src/db/verifier-repository.ts'
import { imaNgEntryFor } from '../../../src/devtools/ima-writer.ts'
import { DEFAULT_PUSH_OPTIONS } from '../../../src/verifier/options.ts'
import { SHARED_SERVERS } from '../../helpers/db-servers.ts'
import { PushDriver } from '../../helpers/push-driver.ts'
import { passingVerdict } from '../../helpers/push-verdicts.ts'
import { makeVerifier } from '../../unit/verifier/harness.ts'

const entries = Array.from({ length: 12 }, (_, i) => imaNgEntryFor(`/usr/sbin/daemon-${i}`, `daemon ${i}`))

for (const server of SHARED_SERVERS)
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
      // retention kept the first attestation of the boot and the latest
      const repo = new PushRepository(a.db as unknown as Kysely<PushDatabase>)
      expect((await repo.listAttestations('shared')).map((r) => r.index)).toEqual([0, 3])
    })

    it('the batched conditional writes decide races as one statement would', async () => {
      agent.app = a.app
      await agent.enrol('racer', entries)
      const repo = new PushRepository(a.db as unknown as Kysely<PushDatabase>)
      const key = PushRepository.key
      const attestation = (index: number, requested: string) => ({
        agent_id: 'racer',
        index,
        system_info__boot_time: '2026-12-01T00:00:00Z',
        capabilities_received_at: '2026-12-06T00:00:00Z',
        challenges_expire_at: '2099-01-01T00:00:00Z',
        evidence_requested: requested,
        ima_starting_offset: 0,
      })
      // another create of the same index lost: not inserted, the first request's row stays
      expect(await repo.insertAttestations([attestation(0, '["first"]')])).toEqual(new Set([key('racer', 0)]))
      expect(await repo.insertAttestations([attestation(0, '["second"]')])).toEqual(new Set())
      expect((await repo.getAttestation('racer', 0))?.evidence_requested).toBe('["first"]')
      await expect(
        repo.insertAttestations([{ ...attestation(0, '[]'), agent_id: 'nobody' }]),
      ).rejects.toThrow()
      expect(await repo.insertAttestations([attestation(1, '["third"]')])).toEqual(new Set([key('racer', 1)]))

      const evidence = (index: number, holder: string) => ({
        agentId: 'racer',
        index,
        evidenceCollected: '[]',
        receivedAt: '2026-12-06T00:00:01Z',
        holder,
        expires: Date.now() + 60_000,
      })
      // no longer the latest, then accepted once, then a replay refused
      expect(await repo.submitEvidenceMany([evidence(0, 'H')])).toEqual(new Set())
      expect(await repo.submitEvidenceMany([evidence(1, 'H')])).toEqual(new Set([key('racer', 1)]))
      expect(await repo.submitEvidenceMany([evidence(1, 'H2')])).toEqual(new Set())
      expect((await repo.getAttestation('racer', 1))?.evaluation_holder).toBe('H')

      await repo.insertSession({
        session_id: 'racer-session',
        agent_id: 'racer',
        active: 1,
        token_expires_at: '2000-01-01T00:00:00Z',
      })
      const verdict = (holder: string): CompletedEvaluation => {
        const v = passingVerdict('racer', 1, holder)
        return {
          ...v,
          agent: { ...v.agent, hash_alg: 'sha256', failures: 'increment' },
          state: { ...v.state, last_received_quote: 1234, last_successful_attestation: 1234 },
        }
      }
      const until = '2099-01-01T00:00:00Z'
      // held by another verifier: nothing written
      expect((await repo.completeMany([verdict('H2')], until)).written).toEqual(new Set())
      const done = await repo.completeMany([verdict('H')], until)
      expect(done.written).toEqual(new Set(['racer']))
      expect(done.enrolled).toEqual(new Set(['racer']))
      expect(done.extended).toEqual([
        { session_id: 'racer-session', agent_id: 'racer', token_expires_at: until },
      ])
      expect((await repo.getSession('racer-session'))?.token_expires_at).toBe(until)
      // written once: a second verdict of the same holder finds the attestation complete
      expect((await repo.completeMany([verdict('H')], until)).written).toEqual(new Set())
      const racer = await repo.agentForAttestation('racer')
      expect(racer?.attestation_count).toBe(1)
      expect(racer?.consecutive_attestation_failures).toBe(1)
      expect(racer?.last_received_quote).toBe(1234)
      expect(racer?.latest).toMatchObject({ index: 1, stage: 'verification_complete', evaluation: 'pass' })

      // a create reads the same agent, and of the latest attestation only what it checks
      expect(await repo.insertAttestations([attestation(2, '["fourth"]')])).toEqual(
        new Set([key('racer', 2)]),
      )
      const held = { ...evidence(2, 'H'), expires: Date.now() + 60_000 }
      expect(await repo.submitEvidenceMany([held])).toEqual(new Set([key('racer', 2)]))
      const { latest: full, ...agentColumns } = (await repo.agentForAttestation('racer')) ?? {}
      const { latest: summary, ...createColumns } = (await repo.agentForCreate('racer')) ?? {}
      expect(createColumns).toEqual(agentColumns)
      expect(summary).toEqual({
        index: 2,
        stage: 'evaluating_evidence',
        evidence_received_at: held.receivedAt,
      })
      expect(full).toMatchObject(summary ?? {})
      expect(await repo.agentForCreate('nobody')).toBeUndefined()
      // an evaluation is taken over only once its hold expired, by one verifier
      expect(await repo.takeAbandonedEvaluations(held.expires - 1, 'T', held.expires + 60_000, 10)).toEqual(
        [],
      )
      const taken = await repo.takeAbandonedEvaluations(held.expires + 1, 'T', held.expires + 60_000, 10)
      expect(taken.map((t) => [t.agent_id, t.index, t.evaluation_holder])).toEqual([['racer', 2, 'T']])
      expect(await repo.takeAbandonedEvaluations(held.expires + 1, 'T2', held.expires + 60_000, 10)).toEqual(
        [],
      )
    })

    it('two verifiers writing the same batches in different orders neither deadlock nor both win a row', async () => {
      agent.app = a.app
      const ids = Array.from({ length: 24 }, (_, i) => `crowd-${String(i).padStart(2, '0')}`)
      for (const id of ids) await agent.enrol(id, entries)
      const repos = [a, b].map((v) => new PushRepository(v.db as unknown as Kysely<PushDatabase>))
      const [repoA, repoB] = repos as [PushRepository, PushRepository]
      /** The ids in a different order per verifier and round (as requests arrive). */
      const shuffled = (seed: number) =>
        [...ids].sort(
          (x, y) =>
            ((x.charCodeAt(6) * 7 + x.charCodeAt(7) * seed) % 11) -
            ((y.charCodeAt(6) * 7 + y.charCodeAt(7) * seed) % 11),
        )
      for (let index = 0; index < 3; index++) {
        const inserted = await Promise.all(
          repos.map((repo, r) =>
            repo.insertAttestations(
              shuffled(index * 2 + r + 1).map((id) => ({
                agent_id: id,
                index,
                system_info__boot_time: '2026-12-01T00:00:00Z',
                capabilities_received_at: '2026-12-06T00:00:00Z',
                challenges_expire_at: '2099-01-01T00:00:00Z',
                evidence_requested: JSON.stringify([id, index, r]),
                ima_starting_offset: 0,
              })),
            ),
          ),
        )
        expectSplit(inserted, ids.length)
        const submitted = await Promise.all(
          repos.map((repo, r) =>
            repo.submitEvidenceMany(
              shuffled(index * 3 + r + 2).map((id) => ({
                agentId: id,
                index,
                evidenceCollected: '[]',
                receivedAt: '2026-12-06T00:00:01Z',
                holder: `crowd-${r}`,
                expires: Date.now() + 60_000,
              })),
            ),
          ),
        )
        expectSplit(submitted, ids.length)
        // each verifier completes every row, but only those it holds are written (each exactly once)
        const completed = await Promise.all(
          repos.map((repo, r) =>
            repo.completeMany(
              shuffled(index * 5 + r + 3).map((id) => passingVerdict(id, index, `crowd-${r}`)),
              null,
            ),
          ),
        )
        for (const [r, c] of completed.entries())
          expect([...c.written].sort()).toEqual(
            [...(submitted[r] as Set<string>)].map((k) => k.split('\u0000')[0]).sort(),
          )
      }
      for (const id of ids) {
        const row = await repoB.agentForAttestation(id)
        expect(row?.attestation_count).toBe(3)
        // retention: the first of the boot and the latest
        expect((await repoA.listAttestations(id)).map((r) => r.index)).toEqual([0, 2])
      }
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

/** Each row went to exactly one of the two racing writers. */
function expectSplit(sets: readonly Set<string>[], total: number): void {
  const [x, y] = sets as [Set<string>, Set<string>]
  expect([...x].filter((k) => y.has(k))).toEqual([])
  expect(x.size + y.size).toBe(total)
}
