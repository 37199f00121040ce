/** Builds a verifier (service + app) on an in-memory SQLite database, for the loop and API tests. */
import Database from 'better-sqlite3'
import { Kysely, SqliteDialect } from 'kysely'
import pino, { type Logger } from 'pino'
import { expect } from 'vitest'
import type { SimAgent, SimFleet } from '../../../bench/fleet-agents.ts'
import { migrateVerifierDatabase, type VerifierDatabase } from '../../../src/db/verifier-repository.ts'
import { buildVerifierApp, type Identity } from '../../../src/verifier/app.ts'
import type { StepEvent } from '../../../src/verifier/attestation-loop.ts'
import { DEFAULT_VERIFIER_OPTIONS, type VerifierOptions } from '../../../src/verifier/options.ts'
import { VerifierService } from '../../../src/verifier/verifier-service.ts'

export const silentLog = pino({ level: 'silent' })

export function memoryDb(): Kysely<VerifierDatabase> {
  return new Kysely<VerifierDatabase>({ dialect: new SqliteDialect({ database: new Database(':memory:') }) })
}

export async function makeVerifier(
  opts: Partial<VerifierOptions> = {},
  db: Kysely<VerifierDatabase> = memoryDb(),
  /** Stable part of the lease holder id (two services with the same one act as one restarted process). */
  leaseAddress?: string,
  log: Logger = silentLog,
) {
  await migrateVerifierDatabase(db)
  const options: VerifierOptions = {
    ...DEFAULT_VERIFIER_OPTIONS,
    enableAgentMtls: false,
    quoteIntervalMs: 50,
    retryInterval: 0.05,
    exponentialBackoff: false,
    requestTimeoutMs: 2000,
    // the loop's logic on the event loop; tests that want the worker pool ask for it
    evidenceWorkers: 0,
    ...opts,
  }
  const service = new VerifierService({
    db,
    options,
    log,
    clientTls: null,
    ...(leaseAddress ? { leaseAddress } : {}),
  })
  // tests mark admin calls with a header; the real server uses the TLS handshake (see tls test)
  const identify = (req: { headers: Record<string, unknown> }): Identity =>
    req.headers['x-test-admin'] === '1' ? 'admin' : 'anonymous'
  const app = await buildVerifierApp({ service, log, identify: identify as never })
  return { db, service, app, options }
}

export type TestVerifier = Awaited<ReturnType<typeof makeVerifier>>

export const ADMIN = { 'x-test-admin': '1' }

/** Enrols agent `i` of the fleet through the API as the admin; the enrolment must succeed. */
export async function enrollFleetAgent(
  v: TestVerifier,
  f: SimFleet,
  i: number,
  extra: Record<string, unknown> = {},
): Promise<SimAgent> {
  const a = f.agents[i]
  if (!a) throw new Error(`no agent ${i} in the fleet`)
  const res = await v.app.inject({
    method: 'POST',
    url: `/v2.6/agents/${a.id}`,
    headers: ADMIN,
    payload: enrollBody(a, f.port, extra),
  })
  expect(res.statusCode, res.body).toBe(200)
  return a
}

/** The tenant's enrollment body for a simulated agent. */
export function enrollBody(agent: SimAgent, port: number, extra: Record<string, unknown> = {}) {
  const pcr15 = (agent.quoter.pcrs.get(15) as Buffer).toString('hex')
  return {
    v: Buffer.alloc(32, 7).toString('base64'),
    cloudagent_ip: agent.ip,
    cloudagent_port: port,
    verifier_ip: '127.0.0.1',
    verifier_port: 8881,
    tpm_policy: JSON.stringify({ '15': [pcr15], mask: '0x8000' }),
    runtime_policy: '',
    runtime_policy_name: null,
    runtime_policy_key: '',
    mb_policy: null,
    mb_policy_name: null,
    ima_sign_verification_keys: '',
    metadata: '{}',
    revocation_key: '',
    accept_tpm_hash_algs: ['sha512', 'sha384', 'sha256'],
    accept_tpm_encryption_algs: ['ecc', 'rsa'],
    accept_tpm_signing_algs: ['ecschnorr', 'rsassa', 'ecdsa'],
    ak_tpm: agent.quoter.akTpm,
    mtls_cert: 'disabled',
    supported_version: '2.6',
    ...extra,
  }
}

/** A logger that keeps every line (as parsed JSON) for assertions. */
export function capturingLog(): { log: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = []
  const log = pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s)) })
  return { log, lines }
}

/** The next step event of an agent that matches (the loop's own event: no sleeping). */
export function nextStep(
  service: VerifierService,
  agentId: string,
  match: (e: StepEvent) => boolean,
  timeoutMs = 5000,
): Promise<StepEvent> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      service.loop.events.off('step', on)
      reject(new Error(`no matching step of ${agentId} within ${timeoutMs} ms`))
    }, timeoutMs)
    const on = (e: StepEvent) => {
      if (e.agentId !== agentId || !match(e)) return
      clearTimeout(timer)
      service.loop.events.off('step', on)
      resolve(e)
    }
    service.loop.events.on('step', on)
  })
}

export async function waitFor(cond: () => boolean | Promise<boolean>, timeoutMs = 5000, what = 'condition') {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (await cond()) return
    await new Promise((r) => setTimeout(r, 20))
  }
  throw new Error(`timed out waiting for ${what}`)
}
