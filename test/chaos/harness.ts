/**
 * Chaos-test harness: a real verifier process (spawned from source, mTLS API, `tls_dir = generate`) attesting an
 * in-process fleet of simulated agents, a webhook that records revocations, and PostgreSQL databases: a fresh
 * database on the shared server, or a private cluster the test may stop and start without disturbing anyone.
 */
import { type ChildProcess, execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'
import { Agent, request } from 'undici'
import { type SimAgent, type SimFleet, startSimFleet } from '../../bench/fleet-agents.ts'
import { freeLocalPort } from '../helpers/free-port.ts'
import { spawnVerifierFromSource } from '../helpers/verifier-process.ts'
import {
  notificationMessage,
  startWebhookReceiver,
  type WebhookReceiver,
} from '../helpers/webhook-receiver.ts'
import { enrollBody, waitFor } from '../unit/verifier/harness.ts'

export type { SimAgent, SimFleet }
export { waitFor }

export const SHARED_PG_URL = process.env.KEYLIME_TEST_PG_URL ?? 'postgresql://postgres@127.0.0.1:5432/test'

export interface Revocation {
  type: string
  agent_id: string
  event_id?: string
}

/** Records every notification the verifier posts (the message is JSON inside `msg`). */
export const startWebhook = () => startWebhookReceiver(notificationMessage<Revocation>)

export interface ApiReply {
  status: number
  json: { code?: number; status?: string; results?: Record<string, unknown> } | undefined
}

export interface VerifierProcess {
  readonly proc: ChildProcess
  /** True once the process has exited, for whatever reason. */
  readonly exited: boolean
  readonly stderr: string
  /** Rejections the process logged as unhandled (it keeps running; each is a bug). */
  readonly unhandledRejections: number
  kill(signal: NodeJS.Signals): Promise<void>
}

export interface VerifierCluster {
  port: number
  work: string
  current: VerifierProcess
  fleet: SimFleet
  webhook: WebhookReceiver<Revocation>
  /** Starts the verifier process anew (after a kill) and waits until it answers. */
  restart(): Promise<void>
  call(method: 'GET' | 'POST' | 'DELETE' | 'PUT', path: string, body?: unknown): Promise<ApiReply>
  enrollAll(): Promise<void>
  /** Operational state (number) and attestation status of each agent, from the API. */
  states(): Promise<Map<string, { state: number; status: string; count: number }>>
  close(): Promise<void>
}

function spawnVerifier(
  work: string,
  port: number,
  dbUrl: string,
  webhookUrl: string,
  leaseSeconds: number,
  extraEnv: Record<string, string>,
): VerifierProcess {
  const proc = spawnVerifierFromSource(
    [
      '--port',
      String(port),
      '--quote-interval',
      '0.2',
      '--retry-interval',
      '0.2',
      '--max-retries',
      '3',
      '--request-timeout',
      '2',
      '--lease-seconds',
      String(leaseSeconds),
      '--enable-agent-mtls',
      'false',
      '--enabled-revocation-notifications',
      "['webhook']",
      '--webhook-url',
      webhookUrl,
      '--database-url',
      dbUrl,
    ],
    {
      KEYLIME_DIR: work,
      KEYLIME_VERIFIER_CONFIG: join(work, 'none.conf'),
      KEYLIME_LOG_LEVEL: 'warn',
      ...extraEnv,
    },
    ['ignore', 'pipe', 'pipe'],
  )
  const state = { exited: false, stderr: '', unhandled: 0 }
  proc.stderr?.on('data', (d: Buffer) => {
    state.stderr += d.toString()
    if (state.stderr.length > 200_000) state.stderr = state.stderr.slice(-100_000)
  })
  // the log (stdout, warn and above): a rejection nobody handled is a bug even though the process survives it
  proc.stdout?.on('data', (d: Buffer) => {
    const text = d.toString()
    if (text.includes('unhandled promise rejection')) {
      state.unhandled++
      state.stderr += text
    }
  })
  proc.once('exit', () => {
    state.exited = true
  })
  return {
    proc,
    get exited() {
      return state.exited
    },
    get stderr() {
      return state.stderr
    },
    get unhandledRejections() {
      return state.unhandled
    },
    async kill(signal) {
      if (state.exited) return
      const gone = new Promise((r) => proc.once('exit', r))
      proc.kill(signal)
      await gone
    },
  }
}

export async function startVerifierCluster(opts: {
  agents: number
  dbUrl: string
  leaseSeconds?: number
  /** More `KEYLIME_VERIFIER_*` settings for the verifier process. */
  env?: Record<string, string>
}): Promise<VerifierCluster> {
  const leaseSeconds = opts.leaseSeconds ?? 10
  const extraEnv = opts.env ?? {}
  const work = mkdtempSync(join(tmpdir(), 'keylime-chaos-'))
  const port = await freeLocalPort()
  const webhook = await startWebhook()
  const fleet = await startSimFleet({ count: opts.agents, shareKeys: true })
  let current = spawnVerifier(work, port, opts.dbUrl, webhook.url, leaseSeconds, extraEnv)
  let admin: Agent | null = null
  let anonymous: Agent | null = null

  async function call(method: 'GET' | 'POST' | 'DELETE' | 'PUT', path: string, body?: unknown) {
    const dispatcher = path === '/version' ? anonymous : admin
    if (!dispatcher) throw new Error('verifier TLS material not ready')
    const res = await request(`https://127.0.0.1:${port}${path}`, {
      method,
      dispatcher,
      headersTimeout: 5000,
      bodyTimeout: 5000,
      ...(body === undefined
        ? {}
        : { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } }),
    })
    const text = await res.body.text()
    let json: unknown
    try {
      json = text ? JSON.parse(text) : undefined
    } catch {
      json = text
    }
    return { status: res.statusCode, json: json as ApiReply['json'] }
  }

  async function waitUp(): Promise<void> {
    // the verifier writes its CA and certificates one file at a time on first start
    await waitFor(
      () =>
        ['cacert.crt', 'client-cert.crt', 'client-private.pem'].every((f) =>
          existsSync(join(work, 'cv_ca', f)),
        ),
      60_000,
      'cv_ca generated',
    )
    if (!admin) {
      const ca = readFileSync(join(work, 'cv_ca/cacert.crt'), 'utf8')
      admin = new Agent({
        connect: {
          ca,
          cert: readFileSync(join(work, 'cv_ca/client-cert.crt'), 'utf8'),
          key: readFileSync(join(work, 'cv_ca/client-private.pem'), 'utf8'),
          checkServerIdentity: () => undefined,
        },
      })
      anonymous = new Agent({ connect: { ca, checkServerIdentity: () => undefined } })
    }
    await waitFor(
      async () => {
        if (current.exited) throw new Error(`verifier exited during start-up:\n${current.stderr}`)
        try {
          return (await call('GET', '/version')).status === 200
        } catch {
          return false
        }
      },
      60_000,
      'verifier answering',
    )
  }
  await waitUp()

  const cluster: VerifierCluster = {
    port,
    work,
    get current() {
      return current
    },
    fleet,
    webhook,
    async restart() {
      current = spawnVerifier(work, port, opts.dbUrl, webhook.url, leaseSeconds, extraEnv)
      await waitUp()
    },
    call,
    async enrollAll() {
      for (const a of fleet.agents) {
        const res = await call('POST', `/v2.6/agents/${a.id}`, enrollBody(a, fleet.port))
        if (res.status !== 200) throw new Error(`enrol ${a.id}: ${res.status} ${JSON.stringify(res.json)}`)
      }
    },
    async states() {
      const out = new Map<string, { state: number; status: string; count: number }>()
      for (const a of fleet.agents) {
        const r = await call('GET', `/v2.6/agents/${a.id}`)
        if (r.status !== 200) throw new Error(`GET ${a.id}: ${r.status} ${JSON.stringify(r.json)}`)
        const results = r.json?.results ?? {}
        out.set(a.id, {
          state: Number(results.operational_state),
          status: String(results.attestation_status),
          count: Number(results.attestation_count),
        })
      }
      return out
    },
    async close() {
      await current.kill('SIGKILL')
      await fleet.close()
      await webhook.close()
      await admin?.close()
      await anonymous?.close()
      rmSync(work, { recursive: true, force: true })
    },
  }
  return cluster
}

/** A fresh database on the shared PostgreSQL server, dropped by `drop()`. */
export async function freshPgDatabase(): Promise<{ url: string; drop(): Promise<void> }> {
  const name = `keylime_chaos_${randomBytes(4).toString('hex')}`
  const admin = new pg.Client({ connectionString: SHARED_PG_URL })
  await admin.connect()
  await admin.query(`CREATE DATABASE ${name}`)
  await admin.end()
  const url = new URL(SHARED_PG_URL)
  url.pathname = `/${name}`
  return {
    url: url.toString(),
    async drop() {
      const c = new pg.Client({ connectionString: SHARED_PG_URL })
      await c.connect()
      await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
      await c.end()
    },
  }
}

function pgBin(tool: string): string {
  const base = '/usr/lib/postgresql'
  const versions = existsSync(base) ? readdirSync(base).sort() : []
  const v = versions[versions.length - 1]
  if (!v) throw new Error('PostgreSQL server binaries not found under /usr/lib/postgresql')
  return join(base, v, 'bin', tool)
}

/**
 * A private PostgreSQL cluster in a temporary folder on its own port, which a test may stop and start. initdb
 * refuses to run as root, so as root the cluster belongs to the `postgres` system user.
 */
export async function privatePgCluster(): Promise<{
  url: string
  stop(): void
  start(): void
  destroy(): void
}> {
  const dir = mkdtempSync(join(tmpdir(), 'keylime-chaos-pg-'))
  const data = join(dir, 'data')
  const port = await freeLocalPort()
  const asRoot = process.getuid?.() === 0
  if (asRoot) {
    const uid = Number(execFileSync('id', ['-u', 'postgres'], { timeout: 30_000 }).toString().trim())
    const gid = Number(execFileSync('id', ['-g', 'postgres'], { timeout: 30_000 }).toString().trim())
    chownSync(dir, uid, gid)
  }
  const run = (tool: string, args: string[]) =>
    asRoot
      ? execFileSync('runuser', ['-u', 'postgres', '--', pgBin(tool), ...args], {
          stdio: 'pipe',
          timeout: 120_000,
        })
      : execFileSync(pgBin(tool), args, { stdio: 'pipe', timeout: 120_000 })
  run('initdb', ['-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync'])
  mkdirSync(join(dir, 'run'), { recursive: true })
  if (asRoot) execFileSync('chown', ['postgres:postgres', join(dir, 'run')], { timeout: 30_000 })
  const start = () =>
    run('pg_ctl', [
      '-D',
      data,
      '-w',
      '-l',
      join(dir, 'server.log'),
      '-o',
      `-p ${port} -k ${join(dir, 'run')} -c listen_addresses=127.0.0.1 -c fsync=off`,
      'start',
    ])
  start()
  return {
    url: `postgresql://postgres@127.0.0.1:${port}/postgres`,
    stop: () => run('pg_ctl', ['-D', data, '-m', 'immediate', '-w', 'stop']),
    start,
    destroy() {
      try {
        run('pg_ctl', ['-D', data, '-m', 'immediate', '-w', 'stop'])
      } catch {
        // already stopped
      }
      rmSync(dir, { recursive: true, force: true })
    },
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
