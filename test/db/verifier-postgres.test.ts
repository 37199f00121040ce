/** Two verifier processes' worth of services (separate connection pools) on one PostgreSQL schema or MariaDB database. */
import { afterAll, describe, expect, it } from 'vitest'
import { type SimFleet, startSimFleet } from '../../bench/fleet-agents.ts'
import { AgentState } from '../../src/api/verifier/states.ts'
import { openDatabase } from '../../src/db/database.ts'
import type { VerifierDatabase } from '../../src/db/verifier-repository.ts'
import type { StepEvent } from '../../src/verifier/attestation-loop.ts'
import { SHARED_SERVERS } from '../helpers/db-servers.ts'
import { ADMIN, enrollBody, makeVerifier, waitFor } from '../unit/verifier/harness.ts'

const cleanups: (() => Promise<void>)[] = []
afterAll(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

for (const server of SHARED_SERVERS)
  describe(`two verifiers on ${server.name}`, () => {
    it('share agents without double attestation, and a dead verifier’s agents are taken over', async () => {
      const target = await server.open('ver')
      cleanups.push(() => target.drop())
      const open = () =>
        openDatabase<VerifierDatabase>(target.url, {
          pgSchema: target.pgSchema,
          migrations: 'verifier',
          poolSize: 4,
        })
      const fleet: SimFleet = await startSimFleet({ count: 8, shareKeys: true })
      cleanups.push(() => fleet.close())
      const dbA = await open()
      const dbB = await open()
      const va = await makeVerifier({ leaseMs: 2000, quoteIntervalMs: 100 }, dbA, 'A@127.0.0.1:1')
      const vb = await makeVerifier({ leaseMs: 2000, quoteIntervalMs: 100 }, dbB, 'B@127.0.0.1:2')
      cleanups.push(async () => {
        await vb.service.stop()
        await dbA.destroy()
        await dbB.destroy()
      })
      await va.service.start()
      await vb.service.start()
      for (let i = 0; i < 8; i++) {
        const v = i % 2 === 0 ? va : vb
        const a = fleet.agents[i] as SimFleet['agents'][number]
        const res = await v.app.inject({
          method: 'POST',
          url: `/v2.6/agents/${a.id}`,
          headers: ADMIN,
          payload: enrollBody(a, fleet.port),
        })
        expect(res.statusCode, res.body).toBe(200)
      }
      await waitFor(() => fleet.agents.every((a) => a.quotes >= 3), 8000, 'quotes from both verifiers')
      for (const a of fleet.agents) expect(va.service.loop.has(a.id) !== vb.service.loop.has(a.id)).toBe(true)
      // every attestation step over a window, by verifier: each agent is attested by exactly one of them
      const attestedBy = new Map<string, Set<string>>()
      const record = (name: string) => (e: StepEvent) => {
        const set = attestedBy.get(e.agentId) ?? new Set<string>()
        set.add(name)
        attestedBy.set(e.agentId, set)
      }
      const onA = record('A')
      const onB = record('B')
      va.service.loop.events.on('step', onA)
      vb.service.loop.events.on('step', onB)
      const stepsBefore = va.service.loop.steps + vb.service.loop.steps
      await waitFor(() => va.service.loop.steps + vb.service.loop.steps >= stepsBefore + 40, 8000, '40 steps')
      await waitFor(() => attestedBy.size === 8, 8000, 'a step of every agent')
      va.service.loop.events.off('step', onA)
      vb.service.loop.events.off('step', onB)
      for (const [id, by] of attestedBy) expect([id, by.size]).toEqual([id, 1])

      await va.service.abandon()
      await waitFor(() => fleet.agents.every((a) => vb.service.loop.has(a.id)), 15_000, 'takeover by B')
      const mid = fleet.agents.map((a) => a.quotes)
      await waitFor(
        () => fleet.agents.every((a, i) => a.quotes >= (mid[i] as number) + 2),
        8000,
        'B attests all',
      )
      await vb.service.loop.flush()
      const rows = await dbB
        .selectFrom('verifiermain')
        .select(['lease_holder', 'operational_state'])
        .execute()
      expect(rows.every((r) => r.lease_holder === vb.service.leaseHolder)).toBe(true)
      expect(
        rows.every(
          (r) => r.operational_state === AgentState.GET_QUOTE || r.operational_state === AgentState.START,
        ),
      ).toBe(true)
    })
  })
