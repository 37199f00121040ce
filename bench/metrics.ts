/**
 * Cost of the metrics on the hot path: CPU per recording call the verifier loop makes per attestation (counter with
 * result and event id, latency histogram, batched-write histograms), the agent's timing wrapper per quote, and one
 * full scrape of a verifier registry (process metrics plus the loop and database gauges, a SQLite file, 1,000
 * leased agents). Compare with the fleet benchmark's CPU per attestation (about 300 us).
 *
 *   node --import tsx bench/metrics.ts [calls]
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { AgentMetrics } from '../src/agent/metrics.ts'
import { createMetricsRegistry } from '../src/api/metrics.ts'
import { AgentState } from '../src/api/verifier/states.ts'
import { openDatabase } from '../src/db/database.ts'
import type { VerifierDatabase } from '../src/db/verifier-repository.ts'
import { PrometheusVerifierMetrics } from '../src/verifier/metrics.ts'

const CALLS = Number(process.argv[2] ?? 1_000_000)

function cpuMicros(): number {
  const u = process.cpuUsage()
  return u.user + u.system
}

async function measure(
  name: string,
  n: number,
  fn: (i: number) => unknown | Promise<unknown>,
): Promise<void> {
  for (let i = 0; i < Math.min(n, 10_000); i++) await fn(i)
  const t0 = cpuMicros()
  for (let i = 0; i < n; i++) await fn(i)
  const us = (cpuMicros() - t0) / n
  process.stdout.write(
    `${name.padEnd(58)} ${us < 1 ? `${(us * 1000).toFixed(0)} ns` : `${us.toFixed(1)} us`}\n`,
  )
}

const dir = mkdtempSync(join(tmpdir(), 'bench-metrics-'))
const db = await openDatabase<VerifierDatabase>('sqlite', {
  dataDir: dir,
  name: 'cv_data',
  migrations: 'verifier',
})
const holder = 'bench@127.0.0.1:8881'
const now = Date.now()
for (let i = 0; i < 1000; i++)
  await db
    .insertInto('verifiermain')
    .values({
      agent_id: `agent-${i}`,
      operational_state: i % 50 === 0 ? AgentState.FAILED : AgentState.GET_QUOTE,
      lease_holder: holder,
    } as never)
    .execute()
await db
  .insertInto('verifier_holders')
  .values({ holder, expires: now + 60_000 })
  .execute()
const registry = createMetricsRegistry()
const stats = { agents: 1000, inFlight: 12, attestations: 0, failures: 0, steps: 0, lagP50: 2, lagP99: 60 }
const verifier = new PrometheusVerifierMetrics(registry, { stats: () => stats, db, leaseHolder: holder })
const events = ['pcr_validation.invalid_pcr_15', 'ima.validation.ima-ng.not_in_allowlist']

await measure('verifier attestation(pass, latency)', CALLS, (i) => {
  verifier.attestation('pass', null, (i % 100) / 1000)
})
await measure('verifier attestation(fail, event id, latency)', CALLS, (i) => {
  verifier.attestation('fail', events[i & 1] as string, 0.02)
})
await measure('verifier databaseWrite(rows, latency)', CALLS, (i) => {
  verifier.databaseWrite(i % 300, 0.004)
})
const agent = new AgentMetrics()
const answer = Promise.resolve('quote')
await measure('agent timeQuote wrapper (around a resolved promise)', CALLS / 10, () =>
  agent.timeQuote('integrity', () => answer),
)
await measure('/metrics scrape, verifier registry (1,000 agents, SQLite)', 200, () => registry.metrics())
const text = await registry.metrics()
process.stdout.write(`scrape size ${text.length} bytes, ${text.split('\n').length} lines\n`)
await db.destroy()
rmSync(dir, { recursive: true, force: true })
