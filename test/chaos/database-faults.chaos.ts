/**
 * The verifier under database faults while an agent goes down: PostgreSQL stopped and started (a private cluster),
 * and SQLite write-locked by another process. The process stays up and keeps answering, the agent that really went
 * down ends FAILED once the database is back, and no healthy agent is failed or revoked.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { AgentState } from '../../src/api/verifier/states.ts'
import { privatePgCluster, sleep, startVerifierCluster, type VerifierCluster, waitFor } from './harness.ts'

const cleanups: (() => Promise<void> | void)[] = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

/** Largest /version answer time over `ms`, polling every 100 ms; throws if the process exits meanwhile. */
async function worstVersionLatency(c: VerifierCluster, ms: number): Promise<number> {
  let worst = 0
  const until = Date.now() + ms
  while (Date.now() < until) {
    const t0 = Date.now()
    const r = await c.call('GET', '/version').catch((err: Error) => {
      throw new Error(`${err.message}; verifier exited: ${c.current.exited}\n${c.current.stderr}`)
    })
    worst = Math.max(worst, Date.now() - t0)
    expect(r.status).toBe(200)
    expect(c.current.exited, `verifier exited:\n${c.current.stderr}`).toBe(false)
    await sleep(100)
  }
  return worst
}

async function convergesAfterFault(c: VerifierCluster, victimId: string): Promise<void> {
  await waitFor(
    async () => (await c.states()).get(victimId)?.state === AgentState.FAILED,
    60_000,
    'the downed agent written FAILED',
  )
  const quotes = c.fleet.agents.map((a) => a.quotes)
  await waitFor(
    () => c.fleet.agents.every((a, i) => a.id === victimId || a.quotes >= (quotes[i] as number) + 3),
    30_000,
    'healthy agents attested after the fault',
  )
  for (const [id, s] of await c.states()) {
    if (id === victimId) continue
    expect([AgentState.GET_QUOTE, AgentState.PROVIDE_V] as number[], id).toContain(s.state)
    expect(s.status, id).toBe('PASS')
  }
  const revoked = c.webhook.received.filter((m) => m.type === 'revocation' || m.agent_id !== victimId)
  expect(revoked, 'no revocation and nothing about healthy agents').toEqual([])
  expect(c.current.exited, `verifier exited:\n${c.current.stderr}`).toBe(false)
  expect(c.current.unhandledRejections, c.current.stderr).toBe(0)
}

describe('database faults', () => {
  it('PostgreSQL stopped for 8 s while an agent goes down: the verifier stays up and converges', async () => {
    const pg = await privatePgCluster()
    cleanups.push(() => pg.destroy())
    const c = await startVerifierCluster({ agents: 10, dbUrl: pg.url, leaseSeconds: 30 })
    cleanups.push(() => c.close())
    await c.enrollAll()
    await waitFor(() => c.fleet.agents.every((a) => a.quotes >= 3), 60_000, 'first attestations')
    const victim = c.fleet.agents[0] as (typeof c.fleet.agents)[number]
    pg.stop()
    victim.down = true
    await worstVersionLatency(c, 8000)
    pg.start()
    await convergesAfterFault(c, victim.id)
  })

  it('SQLite write-locked by another process for 6 s while an agent goes down: no stall, converges', async () => {
    const c = await startVerifierCluster({ agents: 10, dbUrl: 'sqlite', leaseSeconds: 30 })
    cleanups.push(() => c.close())
    await c.enrollAll()
    await waitFor(() => c.fleet.agents.every((a) => a.quotes >= 3), 60_000, 'first attestations')
    const holder = await holdSqliteWriteLock(join(c.work, 'cv_data.sqlite'), 6000)
    cleanups.push(() => void holder.kill('SIGKILL'))
    const victim = c.fleet.agents[0] as (typeof c.fleet.agents)[number]
    victim.down = true
    const quotes = c.fleet.agents.map((a) => a.quotes)
    const worst = await worstVersionLatency(c, 5000)
    expect(worst, 'API answer time while the database is locked').toBeLessThan(1000)
    // attestations go on while their results wait for the lock
    expect(c.fleet.agents.every((a, i) => a === victim || a.quotes >= (quotes[i] as number) + 3)).toBe(true)
    await convergesAfterFault(c, victim.id)
  })
})

async function holdSqliteWriteLock(file: string, holdMs: number): Promise<ChildProcess> {
  const script = `
    import Database from 'better-sqlite3'
    const db = new Database(${JSON.stringify(file)})
    db.pragma('busy_timeout = 10000')
    db.exec('BEGIN IMMEDIATE')
    process.stdout.write('locked\\n')
    setTimeout(() => { db.exec('COMMIT'); db.close(); process.exit(0) }, ${holdMs})
  `
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
    cwd: process.cwd(),
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  await new Promise<void>((resolve, reject) => {
    child.stdout?.on('data', (d: Buffer) => d.toString().includes('locked') && resolve())
    child.once('exit', (code) => reject(new Error(`lock holder exited early (${code})`)))
  })
  return child
}
