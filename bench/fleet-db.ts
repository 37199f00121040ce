/**
 * Database benchmark of the verifier's fleet paths, without agents: enrolment of N agents through the REST route
 * (each with the same runtime policy sent inline, as a tenant does), then attestation results written at a fixed
 * rate through the loop's own WriteBatcher while each verifier runs its real heartbeat (`beat`: lease renewal,
 * reconcile, claims), for one verifier on SQLite and one and two verifiers sharing PostgreSQL (or MariaDB). Reports
 * enrolment time, statements per second, batch write latency p50/p99, lease lapses, deadlocks (PostgreSQL's counter,
 * in a database of its own; InnoDB's, server-wide), dead tuples and table sizes after the run, and how long a graceful stop (final flush and
 * lease release) took under the load.
 *
 *   node --import tsx bench/fleet-db.ts --agents 10000 --rate 2500 --seconds 60 [--db sqlite,postgres,mariadb]
 *     [--verifiers 1,2] [--policy-entries 1000] [--concurrency 16]     (npm run bench -- fleet-db)
 *     [--policy inline|named|none] [--enrol-only]
 *   --seconds 900 is the issue's 15-minute run.
 */
import { mkdtempSync, rmSync, statSync } from 'node:fs'
import { loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import type { Kysely } from 'kysely'
import mysql from 'mysql2'
import mysqlPromise from 'mysql2/promise'
import pg from 'pg'
import pino from 'pino'
import { AgentState } from '../src/api/verifier/states.ts'
import { mysqlPoolOptions, openDatabase, parseDatabaseUrl } from '../src/db/database.ts'
import type { AttestationSuccess, VerifierDatabase } from '../src/db/verifier-repository.ts'
import { buildVerifierApp, type Identity } from '../src/verifier/app.ts'
import { DbOutage } from '../src/verifier/db-outage.ts'
import { DEFAULT_VERIFIER_OPTIONS } from '../src/verifier/options.ts'
import { VerifierService } from '../src/verifier/verifier-service.ts'
import { WriteBatcher } from '../src/verifier/write-batcher.ts'
import { SoftQuoter } from './fleet-quoter.ts'

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 ? (process.argv[i + 1] as string) : dflt
}
const AGENTS = Number(arg('agents', '10000'))
const RATE = Number(arg('rate', '2500'))
const SECONDS = Number(arg('seconds', '60'))
const DBS = arg('db', 'sqlite,postgres').split(',')
const VERIFIERS = arg('verifiers', '1,2').split(',').map(Number)
const POLICY_ENTRIES = Number(arg('policy-entries', '1000'))
const CONCURRENCY = Number(arg('concurrency', '16'))
/** How each enrolment brings its runtime policy: the same text inline (stored once, referenced after), by the name
 * of one stored before enrolment (`runtime_policy_name`), or none. */
const POLICY = arg('policy', 'inline') as 'inline' | 'named' | 'none'
/** Measure enrolment only (no result writes afterwards). */
const ENROL_ONLY = process.argv.includes('--enrol-only')
const LEASE_MS = 6000
const PG_URL = process.env.KEYLIME_TEST_PG_URL ?? 'postgresql://postgres@127.0.0.1:5432/test'
const MYSQL_URL = process.env.KEYLIME_TEST_MYSQL_URL ?? 'mysql://root@127.0.0.1:3306/test'
const log = pino({ level: 'warn' })

// ------------------------------------------------------------------ statements sent, counted at the drivers
let statements = 0
const pgQuery = pg.Client.prototype.query
pg.Client.prototype.query = function (this: pg.Client, ...args: unknown[]) {
  statements++
  // biome-ignore lint/suspicious/noExplicitAny: counting wrapper around every overload
  return (pgQuery as any).apply(this, args)
} as typeof pg.Client.prototype.query
{
  const proto = Object.getPrototypeOf(new Database(':memory:').prepare('select 1'))
  for (const m of ['run', 'all', 'get', 'iterate'] as const) {
    const original = proto[m]
    proto[m] = function (this: unknown, ...args: unknown[]) {
      statements++
      return original.apply(this, args)
    }
  }
}

{
  // mysql2: every statement of a pooled connection goes through Connection.prototype.query
  const original = mysql.Connection.prototype.query
  mysql.Connection.prototype.query = function (this: mysql.Connection, ...args: unknown[]) {
    statements++
    // biome-ignore lint/suspicious/noExplicitAny: counting wrapper around every overload
    return (original as any).apply(this, args)
  } as typeof mysql.Connection.prototype.query
}

// ------------------------------------------------------------------ what every agent is enrolled with
const quoter = new SoftQuoter()
const policyText = JSON.stringify({
  meta: { version: 1, generator: 3 },
  release: 0,
  digests: Object.fromEntries(
    Array.from({ length: POLICY_ENTRIES }, (_, i) => [
      `/usr/bin/tool-${i}`,
      [(i % 256).toString(16).padStart(2, '0').repeat(32)],
    ]),
  ),
  excludes: [],
  keyrings: {},
  ima: { ignored_keyrings: [], log_hash_alg: 'sha1', dm_policy: null },
  'ima-buf': {},
  'verification-keys': '',
})
const policyTextB64 = Buffer.from(policyText).toString('base64')
/** A PEM-sized stand-in for the agent's mTLS certificate (never parsed here): rows as wide as real ones. */
const mtlsCert = `-----BEGIN CERTIFICATE-----\n${Buffer.alloc(900, 0x5a).toString('base64')}\n-----END CERTIFICATE-----\n`
const enrolBody = (i: number) => ({
  v: Buffer.alloc(32, 7).toString('base64'),
  cloudagent_ip: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`,
  cloudagent_port: 9002,
  tpm_policy: JSON.stringify({ '15': ['00'.repeat(32)], mask: '0x8000' }),
  runtime_policy: POLICY === 'inline' ? policyTextB64 : '',
  runtime_policy_name: POLICY === 'named' ? 'fleet-policy' : null,
  mb_policy: null,
  mb_policy_name: null,
  ima_sign_verification_keys: '',
  metadata: '{}',
  revocation_key: '',
  accept_tpm_hash_algs: ['sha512', 'sha384', 'sha256'],
  accept_tpm_encryption_algs: ['ecc', 'rsa'],
  accept_tpm_signing_algs: ['ecschnorr', 'rsassa', 'ecdsa'],
  ak_tpm: quoter.akTpm,
  mtls_cert: mtlsCert,
  supported_version: '2.6',
})

/** `enrolBody(i)` as JSON text, built by splicing the address into one serialised body. */
const [enrolHead, enrolTail] = JSON.stringify(enrolBody(0)).split('"10.0.0.0"') as [string, string]
const enrolText = (i: number) => `${enrolHead}"${enrolBody(i).cloudagent_ip}"${enrolTail}`

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length === 0 ? 0 : (s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] as number)
}

interface Target {
  name: string
  open: () => Promise<Kysely<VerifierDatabase>>
  /** Dead tuples, sizes and deadlocks, read after the writers closed their connections. */
  report: () => Promise<string[]>
  cleanup: () => Promise<void>
}

async function sqliteTarget(): Promise<Target> {
  const dir = mkdtempSync(join(tmpdir(), 'bench-fleet-db-'))
  const file = join(dir, 'cv_data.sqlite')
  return {
    name: 'SQLite',
    open: () => openDatabase<VerifierDatabase>(`sqlite:///${file}`, { migrations: 'verifier' }),
    report: async () => {
      const size = (f: string) => {
        try {
          return statSync(f).size
        } catch {
          return 0
        }
      }
      const h = new Database(file, { readonly: true })
      const free = h.pragma('freelist_count', { simple: true }) as number
      const pageSize = h.pragma('page_size', { simple: true }) as number
      h.close()
      return [
        `file ${(size(file) / 1e6).toFixed(1)} MB + WAL ${(size(`${file}-wal`) / 1e6).toFixed(1)} MB, free pages ${((free * pageSize) / 1e6).toFixed(1)} MB`,
      ]
    },
    cleanup: async () => rmSync(dir, { recursive: true, force: true }),
  }
}

async function postgresTarget(): Promise<Target> {
  const name = `keylime_bench_${process.pid}_${Date.now().toString(36)}`
  const admin = async <T>(f: (c: pg.Client) => Promise<T>) => {
    const c = new pg.Client({ connectionString: PG_URL })
    await c.connect()
    try {
      return await f(c)
    } finally {
      await c.end()
    }
  }
  await admin((c) => c.query(`CREATE DATABASE ${name}`))
  const url = new URL(PG_URL)
  url.pathname = `/${name}`
  const deadlocks = async () =>
    Number(
      (await admin((c) => c.query('SELECT deadlocks FROM pg_stat_database WHERE datname = $1', [name])))
        .rows[0]?.deadlocks ?? 0,
    )
  const before = await deadlocks()
  return {
    name: 'PostgreSQL',
    open: () => openDatabase<VerifierDatabase>(url.toString(), { migrations: 'verifier', poolSize: 8 }),
    report: async () => {
      await new Promise((r) => setTimeout(r, 1500))
      const c = new pg.Client({ connectionString: url.toString() })
      await c.connect()
      const rows = (
        await c.query(`SELECT relname, n_live_tup, n_dead_tup, n_tup_upd, n_tup_hot_upd,
            pg_total_relation_size(relid) AS size FROM pg_stat_user_tables
            WHERE relname IN ('verifiermain', 'verifier_attestation_state', 'verifier_holders', 'verifier_policy_bodies', 'allowlists')
            ORDER BY relname`)
      ).rows
      await c.end()
      return [
        `deadlocks: ${(await deadlocks()) - before}`,
        ...rows.map(
          (r) =>
            `${String(r.relname).padEnd(27)} live ${String(r.n_live_tup).padStart(6)}  dead ${String(r.n_dead_tup).padStart(7)}  ` +
            `updates ${String(r.n_tup_upd).padStart(8)} (HOT ${r.n_tup_upd > 0 ? Math.round((100 * r.n_tup_hot_upd) / r.n_tup_upd) : 0}%)  ` +
            `size ${(Number(r.size) / 1e6).toFixed(1)} MB`,
        ),
      ]
    },
    cleanup: () =>
      admin((c) => c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)).then(() => undefined),
  }
}

async function mariadbTarget(): Promise<Target> {
  const name = `kl_bench_${process.pid}_${Date.now().toString(36)}`
  const admin = async <T>(f: (c: mysqlPromise.Connection) => Promise<T>) => {
    const c = await mysqlPromise.createConnection(mysqlPoolOptions(parseDatabaseUrl(MYSQL_URL).target))
    try {
      return await f(c)
    } finally {
      await c.end()
    }
  }
  await admin((c) => c.query(`CREATE DATABASE ${name} CHARACTER SET utf8mb4`))
  const url = new URL(MYSQL_URL)
  url.pathname = `/${name}`
  // InnoDB counts for the whole server: run the benchmark alone on it
  const deadlocks = async () =>
    Number(
      (
        (await admin((c) => c.query("SHOW GLOBAL STATUS LIKE 'Innodb_deadlocks'")))[0] as { Value: string }[]
      )[0]?.Value ?? 0,
    )
  const before = await deadlocks()
  return {
    name: 'MariaDB',
    open: () => openDatabase<VerifierDatabase>(url.toString(), { migrations: 'verifier', poolSize: 8 }),
    report: async () => {
      const [rows] = await admin((c) =>
        c.query(
          `SELECT table_name AS t, table_rows AS n, data_length + index_length AS size, data_free AS free
           FROM information_schema.tables WHERE table_schema = ? ORDER BY table_name`,
          [name],
        ),
      )
      return [
        `deadlocks: ${(await deadlocks()) - before}`,
        ...(rows as { t: string; n: number; size: number; free: number }[])
          .filter((r) => !r.t.startsWith('kysely_'))
          .map(
            (r) =>
              `${String(r.t).padEnd(27)} rows ~${String(r.n).padStart(6)}  size ${(Number(r.size) / 1e6).toFixed(1)} MB  free ${(Number(r.free) / 1e6).toFixed(1)} MB`,
          ),
      ]
    },
    cleanup: () => admin((c) => c.query(`DROP DATABASE IF EXISTS ${name}`)).then(() => undefined),
  }
}

async function run(target: Target, verifierCount: number): Promise<void> {
  const label = `${target.name}, ${verifierCount} verifier${verifierCount > 1 ? 's' : ''}`
  process.stdout.write(`\n--- ${label}: ${AGENTS} agents, ${RATE} results/s for ${SECONDS} s\n`)
  const verifiers: {
    db: Kysely<VerifierDatabase>
    service: VerifierService
    app: Awaited<ReturnType<typeof buildVerifierApp>>
  }[] = []
  let lapses = 0
  for (let v = 0; v < verifierCount; v++) {
    const db = await target.open()
    const options = { ...DEFAULT_VERIFIER_OPTIONS, enableAgentMtls: false, leaseMs: LEASE_MS }
    const service = new VerifierService({
      db,
      options,
      log,
      clientTls: null,
      leaseAddress: `bench-${v}@host/127.0.0.1:${8881 + v}`,
    })
    const identify = (): Identity => 'admin'
    const app = await buildVerifierApp({ service, log, identify: identify as never })
    // lease lapses: a heartbeat that found this verifier's row expired (the first one registers it)
    const heartbeat = service.repo.heartbeat.bind(service.repo)
    let first = true
    service.repo.heartbeat = async (...args) => {
      const kept = await heartbeat(...args)
      if (!kept && !first) lapses++
      first = false
      return kept
    }
    verifiers.push({ db, service, app })
  }
  // heartbeats from the start (enrolment included), as a running verifier's
  for (const v of verifiers) await v.service.beat()
  const heartbeats = verifiers.map((v) => setInterval(() => void v.service.beat(), LEASE_MS / 3))

  if (POLICY === 'named') {
    const res = await (verifiers[0] as (typeof verifiers)[number]).app.inject({
      method: 'POST',
      url: '/v2.6/allowlists/fleet-policy',
      payload: { runtime_policy: policyTextB64 },
    })
    if (res.statusCode !== 201) throw new Error(`storing the runtime policy: ${res.statusCode} ${res.body}`)
  }
  // enrolment through the REST route, spread over the verifiers
  statements = 0
  const t0 = performance.now()
  const cpu0 = process.cpuUsage()
  let next = 0
  const enrolOne = async () => {
    for (;;) {
      const i = next++
      if (i >= AGENTS) return
      const v = verifiers[i % verifierCount] as (typeof verifiers)[number]
      const res = await v.app.inject({
        method: 'POST',
        url: `/v2.6/agents/agent-${String(i).padStart(6, '0')}`,
        // the bytes a tenant sends: serialised by the client, not by the verifier whose CPU is measured
        headers: { 'content-type': 'application/json' },
        payload: enrolText(i),
      })
      if (res.statusCode !== 200) throw new Error(`enrolment ${i}: ${res.statusCode} ${res.body}`)
    }
  }
  await Promise.all(Array.from({ length: CONCURRENCY }, enrolOne))
  const enrolS = (performance.now() - t0) / 1000
  const cpu = process.cpuUsage(cpu0)
  const enrolCpuMs = (cpu.user + cpu.system) / 1000 / AGENTS
  process.stdout.write(
    `enrolment (runtime policy ${POLICY}): ${AGENTS} agents in ${enrolS.toFixed(1)} s (${(AGENTS / enrolS).toFixed(0)}/s, ${(statements / AGENTS).toFixed(1)} statements and ${enrolCpuMs.toFixed(2)} ms verifier CPU each, concurrency ${CONCURRENCY})\n`,
  )
  if (ENROL_ONLY) {
    for (const h of heartbeats) clearInterval(h)
    for (const v of verifiers) {
      await v.service.repo.releaseLeases(v.service.leaseHolder)
      await v.app.close()
      await v.db.destroy()
    }
    for (const line of await target.report()) process.stdout.write(`${line}\n`)
    return
  }

  // results at RATE/s through each verifier's WriteBatcher, heartbeats running
  const latencies: number[] = []
  const batchRows: number[] = []
  const writers = verifiers.map((v) => {
    const agents = [...v.service.loop.agentIds()].map((id) => ({ id, count: 0 }))
    const batcher = new WriteBatcher({
      repo: v.service.repo,
      leaseHolder: v.service.leaseHolder,
      outage: new DbOutage(log),
      log,
      flushMs: 200,
      isHeld: () => true,
      onRefused: async () => {},
      onWritten: (rows, seconds) => {
        latencies.push(seconds * 1000)
        batchRows.push(rows)
      },
    })
    return { v, agents, batcher, cursor: 0 }
  })
  const imaState = (n: number) =>
    JSON.stringify({
      version: 1,
      nextEntry: n,
      pcr10: { sha256: 'ab'.repeat(32) },
      learnedKeyrings: {},
      progress: null,
    })
  const success = (id: string, count: number): AttestationSuccess => ({
    agentId: id,
    leaseEpoch: 0,
    attestationCount: count,
    lastReceivedQuote: Date.now(),
    lastSuccessfulAttestation: Date.now(),
    tpmClockinfo: JSON.stringify({ clock: Date.now(), resetCount: 0, restartCount: 0, safe: 1 }),
    operationalState: AgentState.GET_QUOTE,
    publicKey: null,
    imaState: imaState(count * 10),
    hashAlg: 'sha256',
    encAlg: 'ecc',
    signAlg: 'ecdsa',
  })
  for (const w of writers) w.batcher.start()
  statements = 0
  const started = performance.now()
  let produced = 0
  const tickMs = 10
  await new Promise<void>((resolve) => {
    const tick = setInterval(() => {
      const elapsed = (performance.now() - started) / 1000
      const due = Math.floor(elapsed * RATE) - produced
      for (let k = 0; k < due; k++) {
        const w = writers[produced % writers.length] as (typeof writers)[number]
        const a = w.agents[w.cursor++ % w.agents.length] as { id: string; count: number }
        w.batcher.put(success(a.id, ++a.count))
        produced++
      }
      if (elapsed >= SECONDS) {
        clearInterval(tick)
        resolve()
      }
    }, tickMs)
  })
  const writeS = (performance.now() - started) / 1000
  const sent = statements
  for (const h of heartbeats) clearInterval(h)
  const stopStarted = performance.now()
  await Promise.all(
    writers.map(async (w) => {
      await w.batcher.stop(true)
      await w.v.service.repo.releaseLeases(w.v.service.leaseHolder)
    }),
  )
  const stopMs = performance.now() - stopStarted
  process.stdout.write(
    `writes: ${produced} results in ${writeS.toFixed(1)} s (${(produced / writeS).toFixed(0)}/s), ` +
      `${(sent / writeS).toFixed(0)} statements/s, batch of ${pct(batchRows, 50)} rows: p50 ${pct(latencies, 50).toFixed(1)} ms / p99 ${pct(latencies, 99).toFixed(1)} ms, ` +
      `lease lapses ${lapses}, graceful stop (flush + release) ${stopMs.toFixed(0)} ms\n`,
  )
  for (const v of verifiers) {
    await v.app.close()
    await v.db.destroy()
  }
  for (const line of await target.report()) process.stdout.write(`${line}\n`)
}

process.stdout.write(
  `load average before: ${loadavg()
    .map((l) => l.toFixed(2))
    .join(' ')}\n`,
)
for (const kind of DBS) {
  for (const n of kind === 'sqlite' ? [1] : VERIFIERS) {
    const target =
      kind === 'sqlite'
        ? await sqliteTarget()
        : kind === 'mariadb'
          ? await mariadbTarget()
          : await postgresTarget()
    try {
      await run(target, n)
    } finally {
      await target.cleanup()
    }
  }
}
process.stdout.write(
  `load average after: ${loadavg()
    .map((l) => l.toFixed(2))
    .join(' ')}\n`,
)
