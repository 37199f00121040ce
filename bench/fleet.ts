/**
 * Fleet benchmark: the real verifier (VerifierService with its evidence worker pool, SQLite file or PostgreSQL)
 * attesting N simulated agents served by a child process (bench/fleet-server.ts: own P-256 AK per agent, wire-exact
 * quotes, PCR 16 binding), over real mTLS connections as a real fleet: each agent its own connection, its own pinned
 * server certificate (`--tls K` distinct ones, default 256; `--tls 0` is plain HTTP), the verifier's client
 * certificate checked by the agent, keep-alive or close-and-resume by the verifier's connection policy.
 *
 * Reports attestations/s against the target, verifier CPU per attestation (user+system of the whole process: the
 * event loop and every worker thread), verifier RSS (end and peak), lag behind schedule p50/p99, open connections,
 * and the simulated agents' own CPU (they share the machine), with the load average.
 *
 *   node --expose-gc --import tsx bench/fleet.ts --agents 10000 --interval 4 --seconds 30
 *   ... --db postgres [--pg-url postgresql://postgres@127.0.0.1:5432/test]   (default: SQLite file)
 *   ... --workers 0   (evidence on the event loop)   --metrics 1 (Prometheus registry live, scraped every second)
 *   ... --cpu-prof FILE   (CPU profile of the event loop over the measured seconds, for Chrome DevTools)
 *   ... --no-keepalive-hint   (agents send no `keep-alive: timeout` hint: the verifier's own idle timeout applies)
 *
 * Figures: docs/performance.md.
 */
import { type ChildProcess, fork, spawn } from 'node:child_process'
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { Session } from 'node:inspector/promises'
import { loadavg, tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { createInterface } from 'node:readline'
import { writeHeapSnapshot } from 'node:v8'
import { sql } from 'kysely'
import { createMetricsRegistry } from '../src/api/metrics.ts'
import { AgentState } from '../src/api/verifier/states.ts'
import { openDatabase } from '../src/db/database.ts'
import type { NewVerifierAgent, VerifierDatabase } from '../src/db/verifier-repository.ts'
import { PrometheusVerifierMetrics } from '../src/verifier/metrics.ts'
import { autoEvidenceWorkers, DEFAULT_VERIFIER_OPTIONS } from '../src/verifier/options.ts'
import { VerifierService } from '../src/verifier/verifier-service.ts'
import type { FleetVerifierConfig, FleetVerifierStats } from './fleet-verifier.ts'
import { leaseEventLog } from './lease-events.ts'
import { installSqlProfile, sqlProfileReport, startSqlProfile } from './sql-profile.ts'

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 ? Number(process.argv[i + 1]) : dflt
}
function textArg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 ? String(process.argv[i + 1]) : dflt
}

const AGENTS = arg('agents', 1000)
const INTERVAL_S = arg('interval', AGENTS / 3000)
const SECONDS = arg('seconds', 20)
const CONCURRENCY = arg('concurrency', 128)
const WARMUP_S = arg('warmup', Math.max(10, INTERVAL_S * 3))
/** `--metrics 1`: the verifier's Prometheus registry (process metrics, event-loop monitor, loop and database gauges)
 * scraped every `--scrape` seconds (default 1, fifteen times Prometheus' usual rate). */
const METRICS = arg('metrics', 0) === 1
const SCRAPE_S = arg('scrape', 1)
const TLS_CERTS = arg('tls', 256)
/** Default: what `evidence_workers = auto` starts on this machine (none on one or two cores). */
const WORKERS = arg('workers', autoEvidenceWorkers())
const DB = textArg('db', 'sqlite')
/** `--verifiers N` (PostgreSQL): N verifier processes sharing the schema, each claiming its share through leases. */
const VERIFIERS = arg('verifiers', 1)
/** `--sql-profile 1` (PostgreSQL): count and latency of each statement class during the measurement. */
const SQL_PROFILE = arg('sql-profile', 0) === 1
const PG_URL = textArg(
  'pg-url',
  process.env.KEYLIME_TEST_PG_URL ?? 'postgresql://postgres@127.0.0.1:5432/test',
)

interface FleetInfo {
  port: number
  agents: { id: string; ip: string; akTpm: string; pcr15: string; cert: number | null }[]
  certs: string[]
  verifierTls: { cert: string; key: string } | null
}

/** CPU seconds (user+system) used so far by a process, from /proc (Linux). */
function procCpuSeconds(pid: number | undefined): number {
  if (pid === undefined) return 0
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return (Number(fields[11]) + Number(fields[12])) / 100
  } catch {
    return 0
  }
}

/** CPU seconds of each process named postgres (the server's backends and background processes), by pid. */
function postgresCpuSeconds(): Map<number, number> {
  const byPid = new Map<number, number>()
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue
    try {
      if (readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'postgres')
        byPid.set(Number(pid), procCpuSeconds(Number(pid)))
    } catch {
      // the process ended meanwhile
    }
  }
  return byPid
}

/** CPU the postgres processes used between two samples (processes started meanwhile count from zero). */
function postgresCpuDelta(before: Map<number, number>, after: Map<number, number>): number {
  let total = 0
  for (const [pid, seconds] of after) total += seconds - (before.get(pid) ?? 0)
  return total
}

/**
 * Seconds the threads of a process spent runnable but waiting for a CPU (`/proc/PID/task/TID/schedstat`, second
 * field, ns): time lost to other processes on a shared machine, not to the verifier's own I/O.
 */
function runQueueWaitSeconds(pid: number): number {
  let total = 0
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`))
      try {
        total += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[1]) / 1e9
      } catch {
        // the thread ended meanwhile
      }
  } catch {
    return 0
  }
  return total
}

async function startFleet(): Promise<{ info: FleetInfo; kill: () => void; pid: number | undefined }> {
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      resolve(import.meta.dirname, 'fleet-server.ts'),
      String(AGENTS),
      ...(TLS_CERTS > 0 ? ['--tls', String(TLS_CERTS)] : []),
      ...(process.argv.includes('--no-keepalive-hint') ? ['--no-keepalive-hint'] : []),
    ],
    { stdio: ['ignore', 'pipe', 'ignore'] },
  )
  const rl = createInterface({ input: child.stdout })
  const line = await new Promise<string>((res, rej) => {
    rl.once('line', res)
    child.once('exit', (c) => rej(new Error(`fleet server exited ${c}`)))
  })
  return { info: JSON.parse(line) as FleetInfo, kill: () => child.kill('SIGKILL'), pid: child.pid }
}

/** The agents' rows as enrolment writes them, unclaimed (a verifier's start claims them). */
function agentRows(info: FleetInfo): NewVerifierAgent[] {
  return info.agents.map((a) => ({
    agent_id: a.id,
    v: Buffer.alloc(32, 1).toString('base64'),
    ip: a.ip,
    port: info.port,
    verifier_id: 'default',
    verifier_ip: null,
    verifier_port: null,
    operational_state: AgentState.START,
    public_key: null,
    tpm_policy: JSON.stringify({ '15': [a.pcr15], mask: '0x8000' }),
    meta_data: '{}',
    ima_policy_id: null,
    mb_policy_id: null,
    ima_sign_verification_keys: '',
    revocation_key: null,
    accept_tpm_hash_algs: '["sha256"]',
    accept_tpm_encryption_algs: '["rsa"]',
    accept_tpm_signing_algs: '["ecdsa","rsassa"]',
    hash_alg: null,
    enc_alg: null,
    sign_alg: null,
    supported_version: '2.6',
    ak_tpm: a.akTpm,
    mtls_cert: a.cert === null ? 'disabled' : (info.certs[a.cert] as string),
    attestation_count: 0,
    lease_holder: null,
    lease_expires: null,
  }))
}

const mb = (n: number) => (n / 1024 / 1024).toFixed(1)

async function main(): Promise<void> {
  if (SQL_PROFILE) installSqlProfile()
  const fleet = await startFleet()
  const dir = mkdtempSync(join(tmpdir(), 'kl-fleet-'))
  const db =
    DB === 'postgres'
      ? await openDatabase<VerifierDatabase>(PG_URL, {
          migrations: 'verifier',
          pgSchema: `bench_fleet_${process.pid}`,
        })
      : await openDatabase<VerifierDatabase>('sqlite', {
          dataDir: dir,
          name: 'cv_data',
          migrations: 'verifier',
        })
  const { log, leaseEvents } = leaseEventLog()
  const tls = fleet.info.verifierTls
  const service = new VerifierService({
    db,
    log,
    clientTls: tls ? { cert: tls.cert, key: tls.key, trustedServerCa: [] } : null,
    leaseAddress: 'bench',
    options: {
      ...DEFAULT_VERIFIER_OPTIONS,
      enableAgentMtls: tls !== null,
      quoteIntervalMs: INTERVAL_S * 1000,
      requestTimeoutMs: 30_000,
      maxConcurrency: CONCURRENCY,
      revocationChannels: [],
      evidenceWorkers: WORKERS,
      maxOpenAgentConnections: Math.max(DEFAULT_VERIFIER_OPTIONS.maxOpenAgentConnections, AGENTS + 100),
    },
  })
  // enroll straight into the table (the API path is covered by tests); unclaimed, so start() claims them
  const rows = agentRows(fleet.info)
  for (let i = 0; i < rows.length; i += 500)
    await db
      .insertInto('verifiermain')
      .values(rows.slice(i, i + 500))
      .execute()
  fleet.info.agents.length = 0
  rows.length = 0
  global.gc?.()
  const memBefore = process.memoryUsage()
  const rssBefore = memBefore.rss
  await service.start()
  let scrapes = 0
  let scraper: NodeJS.Timeout | null = null
  if (METRICS) {
    const registry = createMetricsRegistry()
    // recorded by the loop on every attestation, as the verifier's server wires it
    service.loop.metrics = new PrometheusVerifierMetrics(registry, {
      stats: () => service.loop.stats(),
      db,
      leaseHolder: 'bench',
    })
    scraper = setInterval(() => {
      void registry.metrics().then(() => scrapes++)
    }, SCRAPE_S * 1000)
  }
  console.log(
    `db=${DB} tls=${TLS_CERTS > 0 ? `mTLS, ${TLS_CERTS} distinct agent certificates` : 'off'} workers=${WORKERS} metrics=${METRICS ? `on, scraped every ${SCRAPE_S}s` : 'off'} agents=${AGENTS} interval=${INTERVAL_S.toFixed(2)}s target=${(AGENTS / INTERVAL_S).toFixed(0)}/s concurrency=${CONCURRENCY}`,
  )
  // first contact (a full mTLS handshake per agent, V delivery) is not the steady state: wait until every agent
  // has been attested once, then the warm-up
  const firstContact = performance.now()
  while (service.loop.attestations < AGENTS) await new Promise((r) => setTimeout(r, 250))
  console.log(`every agent attested once after ${((performance.now() - firstContact) / 1000).toFixed(1)} s`)
  await new Promise((r) => setTimeout(r, WARMUP_S * 1000))
  service.loop.resetLagStats()
  const loopDelay = monitorEventLoopDelay({ resolution: 10 })
  loopDelay.enable()
  // connections opened and closed during the measurement (each open is a TLS handshake, full or resumed)
  const churn = { connects: 0, disconnects: 0, connectionErrors: 0 }
  service.connections.dispatcherEvents.on('connect', () => churn.connects++)
  service.connections.dispatcherEvents.on('disconnect', () => churn.disconnects++)
  service.connections.dispatcherEvents.on('connectionError', () => churn.connectionErrors++)
  const batches = { count: 0, rows: 0, seconds: 0, maxSeconds: 0 }
  if (!METRICS)
    service.loop.metrics = {
      ...service.loop.metrics,
      databaseWrite: (rows, seconds) => {
        batches.count++
        batches.rows += rows
        batches.seconds += seconds
        batches.maxSeconds = Math.max(batches.maxSeconds, seconds)
      },
    }
  const deadlocks = async () =>
    DB === 'postgres'
      ? Number(
          (
            await sql<{
              d: string
            }>`SELECT deadlocks AS d FROM pg_stat_database WHERE datname = current_database()`.execute(db)
          ).rows[0]?.d ?? 0,
        )
      : 0
  const deadlocks0 = await deadlocks()
  // outcomes other than a pass (unreachable, refused…) during the measurement, by kind
  const outcomes: Record<string, number> = {}
  service.loop.events.on('step', (e) => {
    if (e.outcome !== 'quote_passed') outcomes[e.outcome] = (outcomes[e.outcome] ?? 0) + 1
  })
  // PostgreSQL server CPU (every postgres process on the machine: other users' work included)
  const pgCpu0 = postgresCpuSeconds()
  const wait0 = runQueueWaitSeconds(process.pid)
  if (SQL_PROFILE) startSqlProfile()
  // `--cpu-prof FILE`: a CPU profile of the verifier's event loop over the measured seconds only
  const profileFile = textArg('cpu-prof', '')
  const profiler = profileFile === '' ? null : new Session()
  if (profiler) {
    profiler.connect()
    await profiler.post('Profiler.enable')
    await profiler.post('Profiler.start')
  }
  const a0 = service.loop.attestations
  const cpu0 = process.cpuUsage()
  const fleetCpu0 = procCpuSeconds(fleet.pid)
  const t0 = performance.now()
  let peakRss = 0
  const sampler = setInterval(() => {
    peakRss = Math.max(peakRss, process.memoryUsage.rss())
  }, 500)
  await new Promise((r) => setTimeout(r, SECONDS * 1000))
  if (profiler) {
    const { profile } = await profiler.post('Profiler.stop')
    writeFileSync(profileFile, JSON.stringify(profile))
    profiler.disconnect()
  }
  clearInterval(sampler)
  if (scraper) clearInterval(scraper)
  loopDelay.disable()
  const elapsed = (performance.now() - t0) / 1000
  const cpu = process.cpuUsage(cpu0)
  const fleetCpu = procCpuSeconds(fleet.pid) - fleetCpu0
  const done = service.loop.attestations - a0
  const sqlProfile = SQL_PROFILE ? sqlProfileReport(elapsed) : null
  const deadlockDelta = (await deadlocks()) - deadlocks0
  // dead tuples and HOT updates of the verifier's tables at the end of the run (statistics lag up to a second)
  const tables =
    DB === 'postgres'
      ? (
          await sql<Record<string, unknown>>`SELECT relname, n_live_tup, n_dead_tup, n_tup_upd, n_tup_hot_upd,
              pg_total_relation_size(relid) AS bytes, autovacuum_count
            FROM pg_stat_user_tables WHERE schemaname = current_schema()
              AND relname IN ('verifiermain', 'verifier_attestation_state', 'verifier_holders')`.execute(db)
        ).rows.map((r) =>
          Object.fromEntries(Object.entries(r).map(([k, v]) => [k, k === 'relname' ? v : Number(v)])),
        )
      : null
  const pgCpu = DB === 'postgres' ? postgresCpuDelta(pgCpu0, postgresCpuSeconds()) : 0
  const runQueueWait = runQueueWaitSeconds(process.pid) - wait0
  const stats = service.loop.stats()
  global.gc?.()
  const mem = process.memoryUsage()
  // `--heap-snapshot FILE`: the verifier's heap at the end of the run (what each agent costs, by constructor)
  const snapshotFile = textArg('heap-snapshot', '')
  if (snapshotFile !== '') writeHeapSnapshot(snapshotFile)
  const rss = mem.rss
  const result = {
    agents: AGENTS,
    heldAgents: stats.agents,
    failures: stats.failures,
    attestationsPerSecond: Math.round(done / elapsed),
    targetPerSecond: Math.round(AGENTS / INTERVAL_S),
    lagP50ms: Math.round(stats.lagP50),
    lagP99ms: Math.round(stats.lagP99),
    // how long ready callbacks waited for the verifier's event loop (GC, synchronous SQLite, crypto)
    eventLoopDelayP50ms: Number((loopDelay.percentile(50) / 1e6).toFixed(1)),
    eventLoopDelayP99ms: Number((loopDelay.percentile(99) / 1e6).toFixed(1)),
    eventLoopDelayMaxMs: Number((loopDelay.max / 1e6).toFixed(1)),
    rssMB: Number(mb(rss)),
    rssPerAgentKB: Math.round((rss - rssBefore) / AGENTS / 1024),
    peakRssPerAgentKB: Math.round((Math.max(rss, peakRss) - rssBefore) / AGENTS / 1024),
    heapPerAgentKB: Math.round((mem.heapUsed - memBefore.heapUsed) / AGENTS / 1024),
    externalPerAgentKB: Math.round((mem.external - memBefore.external) / AGENTS / 1024),
    gcBeforeMeasuring: global.gc !== undefined,
    // process.cpuUsage() counts every thread: the event loop and the evidence workers
    cpuPerAttestationUs: Math.round((cpu.user + cpu.system) / Math.max(1, done)),
    peakRssMB: Number(mb(Math.max(rss, peakRss))),
    openConnections: service.connections.openConnections,
    connectionChurn: churn,
    evidencePool: service.evidence.pool?.stats() ?? null,
    verifierCpuCores: Number(((cpu.user + cpu.system) / 1e6 / elapsed).toFixed(2)),
    simulatedAgentsCpuCores: Number((fleetCpu / elapsed).toFixed(2)),
    loadAverage1m: Number(loadavg()[0]?.toFixed(2)),
    scrapes,
    writeBatches: {
      perSecond: Number((batches.count / elapsed).toFixed(1)),
      meanRows: Math.round(batches.rows / Math.max(1, batches.count)),
      meanMs: Math.round((batches.seconds * 1000) / Math.max(1, batches.count)),
      maxMs: Math.round(batches.maxSeconds * 1000),
    },
    deadlocks: deadlockDelta,
    otherOutcomes: outcomes,
    // threads runnable but not running (the machine's other work): > 0.2 means CPU starvation, not I/O, sets the pace
    verifierRunQueueWaitCores: Number((runQueueWait / elapsed).toFixed(2)),
    verifierTables: tables,
    postgresCpuCores: Number((pgCpu / elapsed).toFixed(2)),
    leaseEvents,
  }
  console.log(JSON.stringify(result))
  if (sqlProfile) for (const row of sqlProfile) console.log(JSON.stringify(row))
  await service.stop()
  if (DB === 'postgres') await sql`DROP SCHEMA ${sql.id(`bench_fleet_${process.pid}`)} CASCADE`.execute(db)
  await db.destroy()
  fleet.kill()
  rmSync(dir, { recursive: true, force: true })
}

/** Sends `kind` to a verifier process and resolves with its answer. */
function ask<T>(child: ChildProcess, kind: string): Promise<T> {
  return new Promise((res, rej) => {
    const onMessage = (m: { kind: string } & T) => {
      if (m.kind !== kind) return
      child.off('message', onMessage)
      child.off('exit', onExit)
      res(m)
    }
    const onExit = (code: number | null) => rej(new Error(`verifier process exited ${code}`))
    child.on('message', onMessage)
    child.once('exit', onExit)
    if (kind !== 'started') child.send({ kind })
  })
}

/**
 * `--verifiers N`: N verifier processes on one PostgreSQL schema. The agents are enrolled in N parts, each inserted
 * just before its verifier starts, so that verifier's first heartbeat claims it (the others already hold theirs and
 * keep their leases alive): the split is the lease mechanism's, as when verifiers of a group start one by one.
 */
async function mainMulti(): Promise<void> {
  if (DB !== 'postgres') throw new Error('--verifiers needs --db postgres')
  const fleet = await startFleet()
  const schema = `bench_fleet_${process.pid}`
  const db = await openDatabase<VerifierDatabase>(PG_URL, { migrations: 'verifier', pgSchema: schema })
  const rows = agentRows(fleet.info)
  const tls = fleet.info.verifierTls
  fleet.info.agents.length = 0
  const children: ChildProcess[] = []
  for (let k = 0; k < VERIFIERS; k++) {
    const part = rows.filter((_, i) => i % VERIFIERS === k)
    for (let i = 0; i < part.length; i += 500)
      await db
        .insertInto('verifiermain')
        .values(part.slice(i, i + 500))
        .execute()
    const config: FleetVerifierConfig = {
      pgUrl: PG_URL,
      schema,
      leaseAddress: `bench-v${k}`,
      tls,
      intervalMs: INTERVAL_S * 1000,
      concurrency: CONCURRENCY,
      workers: WORKERS,
      agents: AGENTS,
    }
    const child = fork(resolve(import.meta.dirname, 'fleet-verifier.ts'), {
      execArgv: ['--import', 'tsx'],
      env: { ...process.env, FLEET_VERIFIER: JSON.stringify(config) },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    })
    children.push(child)
    await ask(child, 'started')
  }
  console.log(
    `db=postgres verifiers=${VERIFIERS} (separate processes) tls=${tls ? 'mTLS' : 'off'} workers=${WORKERS} agents=${AGENTS} interval=${INTERVAL_S.toFixed(2)}s target=${(AGENTS / INTERVAL_S).toFixed(0)}/s concurrency=${CONCURRENCY} each`,
  )
  const statsAll = async () =>
    Promise.all(children.map((c) => ask<{ stats: FleetVerifierStats }>(c, 'stats').then((m) => m.stats)))
  const firstContact = performance.now()
  while ((await statsAll()).reduce((n, s) => n + s.attestations, 0) < AGENTS)
    await new Promise((r) => setTimeout(r, 1000))
  console.log(`every agent attested once after ${((performance.now() - firstContact) / 1000).toFixed(1)} s`)
  await new Promise((r) => setTimeout(r, WARMUP_S * 1000))
  await Promise.all(children.map((c) => ask(c, 'reset')))
  const deadlocks = async () =>
    Number(
      (
        await sql<{
          d: string
        }>`SELECT deadlocks AS d FROM pg_stat_database WHERE datname = current_database()`.execute(db)
      ).rows[0]?.d ?? 0,
    )
  const deadlocks0 = await deadlocks()
  const pgCpu0 = postgresCpuSeconds()
  const fleetCpu0 = procCpuSeconds(fleet.pid)
  const before = await statsAll()
  const t0 = performance.now()
  await new Promise((r) => setTimeout(r, SECONDS * 1000))
  const after = await statsAll()
  const elapsed = (performance.now() - t0) / 1000
  const pgCpu = postgresCpuDelta(pgCpu0, postgresCpuSeconds())
  const fleetCpu = procCpuSeconds(fleet.pid) - fleetCpu0
  const deadlockDelta = (await deadlocks()) - deadlocks0
  const total = after.reduce(
    (n, s, k) => n + s.attestations - (before[k] as FleetVerifierStats).attestations,
    0,
  )
  const perVerifier = after.map((s, k) => {
    const b = before[k] as FleetVerifierStats
    const done = s.attestations - b.attestations
    return {
      verifier: k,
      heldAgents: s.held,
      attestationsPerSecond: Math.round(done / elapsed),
      share: Number((done / Math.max(1, total)).toFixed(3)),
      failures: s.failures - b.failures,
      cpuPerAttestationUs: Math.round((s.cpuMicros - b.cpuMicros) / Math.max(1, done)),
      cpuCores: Number(((s.cpuMicros - b.cpuMicros) / 1e6 / elapsed).toFixed(2)),
      runQueueWaitCores: Number(((s.runQueueWaitSeconds - b.runQueueWaitSeconds) / elapsed).toFixed(2)),
      lagP50ms: Math.round(s.lagP50),
      lagP99ms: Math.round(s.lagP99),
      rssMB: s.rssMB,
      leaseEvents: s.leaseEvents,
      noticed: s.noticed,
    }
  })
  console.log(
    JSON.stringify({
      agents: AGENTS,
      verifiers: VERIFIERS,
      attestationsPerSecond: Math.round(total / elapsed),
      targetPerSecond: Math.round(AGENTS / INTERVAL_S),
      deadlocks: deadlockDelta,
      postgresCpuCores: Number((pgCpu / elapsed).toFixed(2)),
      simulatedAgentsCpuCores: Number((fleetCpu / elapsed).toFixed(2)),
      loadAverage1m: Number(loadavg()[0]?.toFixed(2)),
    }),
  )
  for (const v of perVerifier) console.log(JSON.stringify(v))
  await Promise.all(children.map((c) => ask(c, 'stop').catch(() => undefined)))
  await sql`DROP SCHEMA ${sql.id(schema)} CASCADE`.execute(db)
  await db.destroy()
  fleet.kill()
}

await (VERIFIERS > 1 ? mainMulti() : main())
process.exit(0)
