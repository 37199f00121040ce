/**
 * One push-mode verifier process for bench/push-fleet.ts: the real VerifierService and REST app on plain HTTP (admin
 * by a header, as the API tests), on the database URL it is given. Prints `{"port": …}` once listening; exits on
 * SIGTERM after a graceful stop.
 *
 *   node --import tsx bench/push-fleet-verifier.ts <database-url> <quote-interval-s> <holder> [pg-schema]
 */
import pino from 'pino'
import { openDatabase } from '../src/db/database.ts'
import type { VerifierDatabase } from '../src/db/verifier-repository.ts'
import { buildVerifierApp, type Identity } from '../src/verifier/app.ts'
import { DEFAULT_PUSH_OPTIONS, DEFAULT_VERIFIER_OPTIONS } from '../src/verifier/options.ts'
import { VerifierService } from '../src/verifier/verifier-service.ts'

const [url = 'sqlite', intervalText = '4', holder = 'bench', pgSchema] = process.argv.slice(2)
const interval = Number(intervalText)

async function main(): Promise<void> {
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
