/**
 * One push-mode verifier process for bench/push-fleet.ts: the real VerifierService and REST app on plain HTTP (admin
 * by a header, as the API tests), on the database URL it is given. Prints `{"port": …}` once listening; exits on
 * SIGTERM after a graceful stop.
 *
 *   node --import tsx bench/push-fleet-verifier.ts <database-url> <quote-interval-s> <holder> [pg-schema]
 *
 * With PUSH_FLEET_CPU_PROF=<dir>, SIGUSR2 starts a CPU profile and the next SIGUSR2 writes it to <dir> together with
 * the time spent in each SQLite statement meanwhile (the bench brackets its measured window with them, so the
 * profile holds the steady state, not enrolment and logins).
 */
import { mkdirSync, writeFileSync } from 'node:fs'
import { Session } from 'node:inspector/promises'
import { join } from 'node:path'
import SqliteDatabase from 'better-sqlite3'
import pino from 'pino'
import { openDatabase } from '../src/db/database.ts'
import type { VerifierDatabase } from '../src/db/verifier-repository.ts'
import { buildVerifierApp, type Identity } from '../src/verifier/app.ts'
import { DEFAULT_PUSH_OPTIONS, DEFAULT_VERIFIER_OPTIONS } from '../src/verifier/options.ts'
import { VerifierService } from '../src/verifier/verifier-service.ts'

const [url = 'sqlite', intervalText = '4', holder = 'bench', pgSchema] = process.argv.slice(2)
const interval = Number(intervalText)

/**
 * Wall and CPU time and calls per SQLite statement text while profiling (better-sqlite3 runs statements
 * synchronously; the CPU time is the process's, the wall time also holds waits for the disk and for the cores).
 */
const sqlTimes = new Map<string, { calls: number; ms: number; cpuMs: number }>()
let profiling = false

function timeSqliteStatements(): void {
  const proto = SqliteDatabase.prototype as unknown as { prepare: (text: string) => Record<string, unknown> }
  const prepare = proto.prepare
  proto.prepare = function (this: unknown, text: string) {
    const stmt = prepare.call(this, text)
    for (const m of ['all', 'run', 'get', 'iterate']) {
      const f = stmt[m] as (...a: unknown[]) => unknown
      stmt[m] = (...a: unknown[]) => {
        if (!profiling) return f.apply(stmt, a)
        const t = performance.now()
        const c = process.cpuUsage()
        try {
          return f.apply(stmt, a)
        } finally {
          const used = process.cpuUsage(c)
          const e = sqlTimes.get(text) ?? { calls: 0, ms: 0, cpuMs: 0 }
          e.calls++
          e.ms += performance.now() - t
          e.cpuMs += (used.user + used.system) / 1000
          sqlTimes.set(text, e)
        }
      }
    }
    return stmt
  }
}

function profileOnSignal(dir: string): void {
  // a missing directory would throw in the signal handler and end the verifier mid-run
  mkdirSync(dir, { recursive: true })
  const session = new Session()
  session.connect()
  let cpuAtStart = process.cpuUsage()
  process.on('SIGUSR2', async () => {
    if (!profiling) {
      await session.post('Profiler.enable')
      await session.post('Profiler.start')
      profiling = true
      cpuAtStart = process.cpuUsage()
      return
    }
    profiling = false
    const used = process.cpuUsage(cpuAtStart)
    const { profile } = await session.post('Profiler.stop')
    writeFileSync(join(dir, `${holder}.cpuprofile`), JSON.stringify(profile))
    const rows = [...sqlTimes].sort((a, b) => b[1].cpuMs - a[1].cpuMs)
    writeFileSync(
      join(dir, `${holder}.sql.txt`),
      `${((used.user + used.system) / 1000).toFixed(0)} ms CPU in all\n` +
        rows
          .map(
            ([t, e]) =>
              `${e.cpuMs.toFixed(0)} ms CPU ${e.ms.toFixed(0)} ms ${e.calls} calls ${t.replace(/\s+/g, ' ').slice(0, 160)}`,
          )
          .join('\n'),
    )
  })
}

async function main(): Promise<void> {
  const profDir = process.env.PUSH_FLEET_CPU_PROF
  if (profDir) {
    timeSqliteStatements()
    profileOnSignal(profDir)
  }
  const db = await openDatabase<VerifierDatabase>(url, {
    migrations: 'verifier',
    poolSize: 8,
    ...(pgSchema ? { pgSchema } : {}),
  })
  const log = pino({ level: 'warn' })
  const service = new VerifierService({
    db,
    log,
    clientTls: null,
    leaseAddress: holder,
    options: {
      ...DEFAULT_VERIFIER_OPTIONS,
      mode: 'push',
      enableAgentMtls: false,
      quoteIntervalMs: interval * 1000,
      revocationChannels: [],
      push: {
        ...DEFAULT_PUSH_OPTIONS,
        // the simulated fleet comes from one address and opens every session at once
        sessionRateLimit: { perIp: 0, windowIpMs: 60_000, perAgent: 0, windowAgentMs: 60_000 },
        evidenceTimeoutMs: interval * 5000,
      },
    },
  })
  const identify = (req: { headers: Record<string, unknown> }): Identity =>
    req.headers['x-test-admin'] === '1' ? 'admin' : 'anonymous'
  const app = await buildVerifierApp({ service, log, identify: identify as never })
  await service.start()
  await app.listen({ host: '127.0.0.1', port: 0 })
  const address = app.server.address()
  process.stdout.write(
    `${JSON.stringify({ port: typeof address === 'object' && address ? address.port : 0 })}\n`,
  )
  process.once('SIGTERM', async () => {
    await app.close()
    await service.stop()
    await db.destroy()
    process.exit(0)
  })
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? err}\n`)
  process.exit(1)
})
