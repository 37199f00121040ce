/**
 * SIGKILL of a verifier under load, three times, on SQLite and on PostgreSQL: every agent is resumed, none is
 * failed or revoked, and no stored attestation count goes backwards.
 */
import { afterEach, describe, expect, it } from 'vitest'
import { AgentState } from '../../src/api/verifier/states.ts'
import { freshPgDatabase, sleep, startVerifierCluster, type VerifierCluster, waitFor } from './harness.ts'

/** Attested: polling normally or delivering V. */
const GOOD_STATES: number[] = [AgentState.GET_QUOTE, AgentState.PROVIDE_V]
const cleanups: (() => Promise<void>)[] = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

async function killRounds(c: VerifierCluster, rounds: number): Promise<void> {
  await c.enrollAll()
  await waitFor(() => c.fleet.agents.every((a) => a.quotes >= 3), 60_000, 'first attestations')
  for (let round = 0; round < rounds; round++) {
    await sleep(300 + Math.floor(Math.random() * 900))
    const stored = await c.states()
    await c.current.kill('SIGKILL')
    const quotesAtKill = c.fleet.agents.map((a) => a.quotes)
    await c.restart()
    await waitFor(
      () => c.fleet.agents.every((a, i) => a.quotes >= (quotesAtKill[i] as number) + 3),
      60_000,
      `round ${round}: every agent attested again`,
    )
    const after = await c.states()
    for (const [id, s] of after) {
      expect(GOOD_STATES, `${id} state after round ${round}`).toContain(s.state)
      expect(s.status, id).toBe('PASS')
      expect(s.count, `${id} attestation count went backwards`).toBeGreaterThanOrEqual(
        stored.get(id)?.count ?? 0,
      )
    }
  }
  expect(c.webhook.received, 'no notification for healthy agents').toEqual([])
}

describe('verifier SIGKILL under load', () => {
  it('SQLite: resumes 40 agents after each of 3 kills, none failed or revoked', async () => {
    const c = await startVerifierCluster({ agents: 40, dbUrl: 'sqlite' })
    cleanups.push(() => c.close())
    await killRounds(c, 3)
  })

  it('PostgreSQL: resumes 40 agents after each of 3 kills, none failed or revoked', async () => {
    const db = await freshPgDatabase()
    cleanups.push(() => db.drop())
    const c = await startVerifierCluster({ agents: 40, dbUrl: db.url })
    cleanups.push(() => c.close())
    await killRounds(c, 3)
  })
})
