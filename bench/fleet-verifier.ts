/**
 * One verifier process of `bench/fleet.ts --verifiers N`: a real VerifierService on the shared PostgreSQL schema,
 * claiming agents through its leases. The parent sends `stats`, `reset` and `stop` over IPC; each answer is one
 * message.
 */
import { readdirSync, readFileSync } from 'node:fs'
import { openDatabase } from '../src/db/database.ts'
import type { VerifierDatabase } from '../src/db/verifier-repository.ts'
import { DEFAULT_VERIFIER_OPTIONS } from '../src/verifier/options.ts'
import { VerifierService } from '../src/verifier/verifier-service.ts'
import { type LeaseEvents, leaseEventLog } from './lease-events.ts'

export interface FleetVerifierConfig {
  pgUrl: string
  schema: string
  leaseAddress: string
  tls: { cert: string; key: string } | null
  intervalMs: number
  concurrency: number
  workers: number
  agents: number
}

export interface FleetVerifierStats {
  held: number
  attestations: number
  failures: number
  lagP50: number
  lagP99: number
  cpuMicros: number
  runQueueWaitSeconds: number
  rssMB: number
  leaseEvents: LeaseEvents
  noticed: Record<string, number>
}

function runQueueWaitSeconds(): number {
  let total = 0
  for (const tid of readdirSync('/proc/self/task'))
    try {
      total += Number(readFileSync(`/proc/self/task/${tid}/schedstat`, 'utf8').split(' ')[1]) / 1e9
    } catch {
      // the thread ended meanwhile
    }
  return total
}

const config = JSON.parse(process.env.FLEET_VERIFIER as string) as FleetVerifierConfig
const { log, leaseEvents } = leaseEventLog()
const db = await openDatabase<VerifierDatabase>(config.pgUrl, { pgSchema: config.schema })
const service = new VerifierService({
  db,
  log,
  clientTls: config.tls ? { ...config.tls, trustedServerCa: [] } : null,
  leaseAddress: config.leaseAddress,
  options: {
    ...DEFAULT_VERIFIER_OPTIONS,
    enableAgentMtls: config.tls !== null,
    quoteIntervalMs: config.intervalMs,
    requestTimeoutMs: 30_000,
    maxConcurrency: config.concurrency,
    revocationChannels: [],
    evidenceWorkers: config.workers,
    maxOpenAgentConnections: Math.max(DEFAULT_VERIFIER_OPTIONS.maxOpenAgentConnections, config.agents + 100),
  },
})
await service.start()
process.send?.({ kind: 'started', held: service.loop.size })

process.on('message', (m: { kind: string }) => {
  if (m.kind === 'reset') {
    service.loop.resetLagStats()
    process.send?.({ kind: 'reset' })
  } else if (m.kind === 'stats') {
    const s = service.loop.stats()
    const cpu = process.cpuUsage()
    const stats: FleetVerifierStats = {
      held: s.agents,
      attestations: s.attestations,
      failures: s.failures,
      lagP50: s.lagP50,
      lagP99: s.lagP99,
      cpuMicros: cpu.user + cpu.system,
      runQueueWaitSeconds: runQueueWaitSeconds(),
      rssMB: Math.round(process.memoryUsage().rss / 1024 / 1024),
      leaseEvents,
      noticed: { ...service.noticed },
    }
    process.send?.({ kind: 'stats', stats })
  } else if (m.kind === 'stop') {
    void service
      .stop()
      .then(() => db.destroy())
      .then(() => process.exit(0))
  }
})
