/**
 * Push fleet benchmark: N simulated push agents (software P-256 AKs, wire-exact TPM2_Certify proofs of possession and
 * quotes over the verifier's challenges) attest against one push verifier process (SQLite file) or against two
 * sharing PostgreSQL, each request of an attestation going to the next verifier (round robin, as behind a load
 * balancer). Reports attestations/s, the verifiers' CPU per attestation, p50/p99 time to 202 (capabilities sent to
 * 202 received), verifier RSS per agent, and checks that every 202 was verified and counted exactly once.
 *
 *   node --import tsx bench/push-fleet.ts --agents 10000 --interval 4 --seconds 20
 *   node --import tsx bench/push-fleet.ts --agents 10000 --interval 4 --verifiers 2      (PostgreSQL, KEYLIME_TEST_PG_URL)
 *   node --import tsx bench/push-fleet.ts --agents 1000 --verifiers 2 --mariadb          (MariaDB, KEYLIME_TEST_MYSQL_URL)
 *   PUSH_FLEET_CPU_PROF=/tmp/prof node --import tsx bench/push-fleet.ts …   (CPU profiles and SQLite statement times
 *                                                                           of the verifiers over the measured window)
 *
 * Each agent logs in once, then attests `--interval` s after its previous 202 (a whole number: push mode's
 * quote_interval; agents sleep seconds_to_next_attestation from the 202), so N agents offer a little less than
 * N / interval per second. `slotWaitMs` tells whether the verifier kept up: how long agents that fell due waited for one
 * of the `--concurrency` requests in flight (0 while it keeps up). A shorter interval than N / 2,500 s (10,000 at 3 s)
 * measures the capacity. Each agent's policy is a static PCR 15 value (no IMA or boot log, as the pull fleet
 * benchmark), so this measures the push protocol, the database and the quote check, not IMA replay.
 *
 * The simulated agents share the machine's two cores with the verifier, so their own CPU comes off its capacity
 * (100 us more of it per attestation cut the rate by a fifth). They use a lean HTTP/1.1 client
 * (`keepalive-client.ts`: ~160 us of their CPU per attestation, ~205 us with undici) and are best run niced,
 * with the verifier at normal priority, as agents on other machines would be:
 *   nice -n 10 node --import tsx bench/push-fleet.ts … & renice -n 0 -p $(pgrep -f push-fleet-verifier.ts)
 *
 * Measured 2026-12-07 (2 cores, SQLite in /tmp, load average 1.7-2.7, every 202 verified and counted exactly once):
 *   10,000 agents @ 3 s, 1 verifier, niced agents:   2,728 / 2,751 / 2,763 att/s, 419-423 us CPU/attestation (326-329
 *                                                    us on the event loop, 0.90 cores), p50/p99 to 202 86-88/179-188 ms
 *   10,000 agents @ 3 s, 1 verifier, agents not niced: 2,537 att/s, 449 us
 *   10,000 agents @ 4 s, 1 verifier, niced agents:   2,450 att/s (all the fleet offers), slot wait p50 0 ms, 427 us
 *   10,000 agents @ 4 s, 2 verifiers, PostgreSQL:    1,133 att/s, 871 us CPU/attestation (both verifiers; PostgreSQL
 *                                                    took the rest of the machine), 46,743 202s = 46,743 counted
 * With undici as the agents' client the same verifier did 2,343-2,650 att/s at 3 s.
 */
import { spawn } from 'node:child_process'
import { randomBytes, sign } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { loadavg, tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { createInterface } from 'node:readline'
import { sql } from 'kysely'
import { AgentState } from '../src/api/verifier/states.ts'
import { objectName } from '../src/crypto/tpm-public.ts'
import { dropPgSchema, openDatabase } from '../src/db/database.ts'
import type { NewVerifierAgent, VerifierDatabase } from '../src/db/verifier-repository.ts'
import { createMysqlDatabase } from '../test/helpers/mysql.ts'
import { SoftQuoter } from './fleet-quoter.ts'
import { LeanPool } from './keepalive-client.ts'

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 ? Number(process.argv[i + 1]) : dflt
}

const AGENTS = arg('agents', 1000)
const INTERVAL_S = Math.max(1, Math.round(arg('interval', Math.ceil(AGENTS / 2500))))
const SECONDS = arg('seconds', 20)
const WARMUP_S = arg('warmup', INTERVAL_S * 2)
const VERIFIERS = arg('verifiers', 1)
const CONCURRENCY = arg('concurrency', 256)
/** HTTP connections to each verifier: by default one per attestation in flight, as agents each open their own. */
const CONNECTIONS = arg('connections', CONCURRENCY)
const PG_URL = process.env.KEYLIME_TEST_PG_URL ?? 'postgresql://postgres@127.0.0.1:5432/test'
/** Two or more verifiers share PostgreSQL, or MariaDB with `--mariadb`; one runs on a SQLite file. */
const MARIADB = process.argv.includes('--mariadb')
const JSON_API = { 'content-type': 'application/vnd.api+json' }

function u16(v: number): Buffer {
  const b = Buffer.alloc(2)
  b.writeUInt16BE(v)
  return b
}
const tpm2b = (b: Uint8Array) => Buffer.concat([u16(b.length), b])

interface Agent {
  id: string
  quoter: SoftQuoter
  token: string
}

/** TPM2_Certify of the AK by itself over `challenge`, as a TPM produces it (ECDSA P-256, SHA-256). */
function certify(q: SoftQuoter, challenge: Buffer): { message: string; signature: string } {
  q.clock += 5
  const clock = Buffer.alloc(17)
  clock.writeBigUInt64BE(BigInt(q.clock), 0)
  clock.writeUInt32BE(q.resetCount, 8)
  clock.writeUInt32BE(q.restartCount, 12)
  clock[16] = 1
  const attest = Buffer.concat([
    Buffer.from('ff544347', 'hex'),
    u16(0x8017),
    tpm2b(Buffer.alloc(34, 1)),
    tpm2b(challenge),
    clock,
    Buffer.alloc(8),
    tpm2b(objectName(new Uint8Array(Buffer.from(q.akTpm, 'base64')))),
    tpm2b(Buffer.alloc(34, 2)),
  ])
  const p1363 = sign('sha256', attest, { key: q.privateKey, dsaEncoding: 'ieee-p1363' })
  const sig = Buffer.concat([
    u16(0x0018),
    u16(0x000b),
    tpm2b(p1363.subarray(0, 32)),
    tpm2b(p1363.subarray(32)),
  ])
  return { message: attest.toString('base64'), signature: sig.toString('base64') }
}

const CAPABILITIES = {
  data: {
    type: 'attestation',
    attributes: {
      evidence_supported: [
        {
          evidence_class: 'certification',
          evidence_type: 'tpm_quote',
          capabilities: {
            component_version: '2.0',
            signature_schemes: ['ecdsa'],
            hash_algorithms: ['sha256'],
            available_subjects: { sha256: [...Array(24).keys()] },
            certification_keys: [
              { key_class: 'asymmetric', key_algorithm: 'ecc', key_size: 256, server_identifier: 'ak' },
            ],
          },
        },
      ],
      system_info: { boot_time: '2026-12-01T10:00:00Z' },
    },
  },
}

/** CPU seconds and RSS bytes of a process, from /proc (Linux). */
function procStats(pid: number | undefined): { cpu: number; rss: number } {
  if (pid === undefined) return { cpu: 0, rss: 0 }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    const status = readFileSync(`/proc/${pid}/status`, 'utf8')
    const rssKb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0)
    return { cpu: (Number(f[11]) + Number(f[12])) / 100, rss: rssKb * 1024 }
  } catch {
    return { cpu: 0, rss: 0 }
  }
}

/** Read and write system calls of a process so far (reads include socket reads, writes the socket writes). */
function syscalls(pid: number | undefined): { reads: number; writes: number } {
  try {
    const io = readFileSync(`/proc/${pid}/io`, 'utf8')
    return {
      reads: Number(/syscr: (\d+)/.exec(io)?.[1] ?? 0),
      writes: Number(/syscw: (\d+)/.exec(io)?.[1] ?? 0),
    }
  } catch {
    return { reads: 0, writes: 0 }
  }
}

/** CPU seconds of a process's main thread (its event loop), apart from its worker and helper threads. */
function mainThreadCpu(pid: number | undefined): number {
  if (pid === undefined) return 0
  try {
    const stat = readFileSync(`/proc/${pid}/task/${pid}/stat`, 'utf8')
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return (Number(f[11]) + Number(f[12])) / 100
  } catch {
    return 0
  }
}

const percentile = (sorted: number[], p: number) =>
  sorted.length === 0 ? 0 : (sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] as number)

async function main(): Promise<void> {
  const pg = VERIFIERS > 1 && !MARIADB
  const dir = mkdtempSync(join(tmpdir(), 'kl-push-fleet-'))
  const schema = `b_push_${randomBytes(5).toString('hex')}`
  const mariadb = MARIADB ? await createMysqlDatabase('bench_push') : undefined
  const url = mariadb?.url ?? (pg ? PG_URL : `sqlite:///${join(dir, 'cv_data.sqlite')}`)
  const db = await openDatabase<VerifierDatabase>(url, {
    migrations: 'verifier',
    ...(pg ? { pgSchema: schema } : {}),
  })
  const agents: Agent[] = []
  const rows: NewVerifierAgent[] = []
  for (let i = 0; i < AGENTS; i++) {
    const quoter = new SoftQuoter({ keyType: 'ecc' })
    const id = `push-${i}`
    agents.push({ id, quoter, token: '' })
    rows.push({
      agent_id: id,
      v: null,
      ip: null,
      port: null,
      verifier_id: 'default',
      operational_state: AgentState.GET_QUOTE,
      tpm_policy: JSON.stringify({ '15': [(quoter.pcrs.get(15) as Buffer).toString('hex')], mask: '0x8000' }),
      meta_data: '{}',
      ima_sign_verification_keys: '',
      accept_tpm_hash_algs: '["sha256"]',
      accept_tpm_encryption_algs: '["ecc"]',
      accept_tpm_signing_algs: '["ecdsa"]',
      supported_version: '2.6',
      ak_tpm: quoter.akTpm,
      attestation_count: 0,
      push_deadline: Date.now() + 3_600_000,
    })
  }
  // enrolled straight into the table (the API path is covered by tests)
  for (let i = 0; i < rows.length; i += 500)
    await db
      .insertInto('verifiermain')
      .values(rows.slice(i, i + 500))
      .execute()

  const progress = (what: string) => process.stderr.write(`${new Date().toISOString()} ${what}\n`)
  progress(`${AGENTS} agents enrolled`)
  const children = await Promise.all(
    Array.from({ length: VERIFIERS }, async (_, n) => {
      const child = spawn(
        process.execPath,
        [
          '--import',
          'tsx',
          resolve(import.meta.dirname, 'push-fleet-verifier.ts'),
          url,
          String(INTERVAL_S),
          `bench-${n}`,
          ...(pg ? [schema] : []),
        ],
        { stdio: ['ignore', 'pipe', 'inherit'] },
      )
      const line = await new Promise<string>((ok, fail) => {
        createInterface({ input: child.stdout }).once('line', ok)
        child.once('exit', (code) => fail(new Error(`verifier exited with ${code}`)))
      })
      const port = (JSON.parse(line) as { port: number }).port
      return {
        child,
        pool: new LeanPool(port, '127.0.0.1', CONNECTIONS),
      }
    }),
  )
  progress(`${VERIFIERS} verifier(s) listening`)
  const rssBefore = children.map((c) => procStats(c.child.pid).rss)
  let rr = 0
  const call = async (method: 'POST' | 'PATCH', path: string, body: unknown, token?: string) => {
    const v = children[rr++ % children.length] as (typeof children)[number]
    const res = await v.pool.request(
      method,
      path,
      token ? { ...JSON_API, authorization: `Bearer ${token}` } : JSON_API,
      JSON.stringify(body),
    )
    return { status: res.status, headers: res.headers, json: () => JSON.parse(res.body) }
  }

  const login = async (a: Agent) => {
    const s = await call('POST', '/v3.0/sessions', {
      data: {
        type: 'session',
        attributes: {
          agent_id: a.id,
          authentication_supported: [{ authentication_class: 'pop', authentication_type: 'tpm_pop' }],
        },
      },
    })
    const d = s.json().data
    const challenge = Buffer.from(
      d.attributes.authentication_requested[0].chosen_parameters.challenge,
      'base64',
    )
    const r = await call('PATCH', `/v3.0/sessions/${d.id}`, {
      data: {
        type: 'session',
        attributes: {
          agent_id: a.id,
          authentication_provided: [
            {
              authentication_class: 'pop',
              authentication_type: 'tpm_pop',
              data: certify(a.quoter, challenge),
            },
          ],
        },
      },
    })
    if (r.status !== 200) throw new Error(`login of ${a.id}: ${r.status}`)
    a.token = r.json().data.attributes.token
  }

  const t0 = Date.now()
  let next = 0
  await Promise.all(
    Array.from({ length: Math.min(CONCURRENCY, AGENTS) }, async () => {
      while (next < agents.length) await login(agents[next++] as Agent)
    }),
  )
  const loginS = (Date.now() - t0) / 1000
  progress(`every agent logged in (${loginS.toFixed(1)} s)`)

  // attestations: each agent every INTERVAL_S, spread evenly, at most CONCURRENCY in flight
  let measuring = false
  let stopping = false
  let accepted = 0
  let acceptedTotal = 0
  const errors: Record<string, number> = {}
  const latencies: number[] = []
  /** How long due agents waited for one of the --concurrency slots: ~0 while the verifier keeps up with the fleet. */
  const slotWaits: number[] = []
  let inFlight = 0
  const waiting: (() => void)[] = []
  const slot = async () => {
    if (inFlight < CONCURRENCY) {
      inFlight++
      return
    }
    await new Promise<void>((r) => waiting.push(r))
  }
  const release = () => {
    const w = waiting.shift()
    if (w) w()
    else inFlight--
  }
  const attest = async (a: Agent): Promise<number> => {
    const start = performance.now()
    const c = await call('POST', `/v3.0/agents/${a.id}/attestations`, CAPABILITIES, a.token)
    if (c.status !== 201) {
      errors[`create ${c.status}`] = (errors[`create ${c.status}`] ?? 0) + 1
      if (c.status === 401) await login(a)
      return c.status === 429 ? Number(c.headers['retry-after'] ?? 1) * 1000 : 1000
    }
    const params = c.json().data.attributes.evidence_requested[0].chosen_parameters
    const quote = a.quoter.quote(
      Buffer.from(params.challenge, 'base64').toString('latin1'),
      params.selected_subjects.sha256,
    )
    const [message, signature, subject] = quote.slice(1).split(':')
    const e = await call(
      'PATCH',
      `/v3.0/agents/${a.id}/attestations/latest`,
      {
        data: {
          type: 'attestation',
          attributes: {
            evidence_collected: [
              {
                evidence_class: 'certification',
                evidence_type: 'tpm_quote',
                data: { message, signature, subject_data: subject },
              },
            ],
          },
        },
      },
      a.token,
    )
    if (e.status !== 202) {
      errors[`evidence ${e.status}`] = (errors[`evidence ${e.status}`] ?? 0) + 1
      return 1000
    }
    acceptedTotal++
    if (measuring) {
      accepted++
      latencies.push(performance.now() - start)
    }
    return INTERVAL_S * 1000
  }
  const running = new Set<Promise<void>>()
  const schedule = (a: Agent, delayMs: number) => {
    const t = setTimeout(() => {
      if (stopping) return
      const p = (async () => {
        const due = performance.now()
        await slot()
        if (measuring) slotWaits.push(performance.now() - due)
        let after = 1000
        try {
          after = await attest(a)
        } catch (err) {
          errors[(err as Error).message.slice(0, 40)] = (errors[(err as Error).message.slice(0, 40)] ?? 0) + 1
        } finally {
          release()
        }
        schedule(a, after + 5)
      })()
      running.add(p)
      void p.finally(() => running.delete(p))
    }, delayMs)
    t.unref()
  }
  for (const [i, a] of agents.entries()) schedule(a, (i / AGENTS) * INTERVAL_S * 1000)
  await new Promise((r) => setTimeout(r, WARMUP_S * 1000))
  // PUSH_FLEET_CPU_PROF: the verifiers profile the measured window (push-fleet-verifier.ts)
  const profile = () => {
    if (process.env.PUSH_FLEET_CPU_PROF) for (const c of children) c.child.kill('SIGUSR2')
  }
  profile()
  const cpuStart = children.map((c) => procStats(c.child.pid).cpu)
  const loopCpuStart = children.map((c) => mainThreadCpu(c.child.pid))
  const syscallsStart = children.map((c) => syscalls(c.child.pid))
  const harnessCpuStart = process.cpuUsage()
  measuring = true
  const mStart = Date.now()
  await new Promise((r) => setTimeout(r, SECONDS * 1000))
  measuring = false
  const elapsed = (Date.now() - mStart) / 1000
  const cpu = children.map((c, i) => procStats(c.child.pid).cpu - (cpuStart[i] as number))
  const loopCpu = children.map((c, i) => mainThreadCpu(c.child.pid) - (loopCpuStart[i] as number))
  const syscallsUsed = children.reduce(
    (sum, c, i) => {
      const now = syscalls(c.child.pid)
      const start = syscallsStart[i] as { reads: number; writes: number }
      return { reads: sum.reads + now.reads - start.reads, writes: sum.writes + now.writes - start.writes }
    },
    { reads: 0, writes: 0 },
  )
  const harnessCpu = process.cpuUsage(harnessCpuStart)
  const rssAfter = children.map((c) => procStats(c.child.pid).rss)
  profile()
  stopping = true
  await Promise.allSettled([...running])
  // every accepted evidence verified and counted exactly once (evaluations run after the 202)
  let counted = 0
  let pendingEvaluations = 0
  for (let i = 0; i < 50; i++) {
    // pending first: once none is, every verdict (and its count, written in the same transaction) is in, so the
    // count read next is final. Read the other way round, a verdict batch committed between the two reads went
    // uncounted (one run once reported 9,114 202s against 9,039 counted).
    const pending = await sql<{
      n: number
    }>`select count(*) as n from attestations where stage = 'evaluating_evidence'`.execute(db)
    pendingEvaluations = Number(pending.rows[0]?.n ?? 0)
    // the count lives with the attestation state, apart from the enrolment row
    const row = await db
      .selectFrom('verifier_attestation_state')
      .select(sql<number>`coalesce(sum(attestation_count), 0)`.as('n'))
      .executeTakeFirstOrThrow()
    counted = Number(row.n)
    if (pendingEvaluations === 0) break
    await new Promise((r) => setTimeout(r, 200))
  }
  const failed = await sql<{
    n: number
  }>`select count(*) as n from attestations where evaluation = 'fail'`.execute(db)
  for (const c of children) {
    c.child.kill('SIGTERM')
    c.pool.close()
  }
  await db.destroy()
  if (pg) await dropPgSchema(PG_URL, schema)
  await mariadb?.drop()
  rmSync(dir, { recursive: true, force: true })

  latencies.sort((x, y) => x - y)
  slotWaits.sort((x, y) => x - y)
  const cpuTotal = cpu.reduce((x, y) => x + y, 0)
  const loopCpuTotal = loopCpu.reduce((x, y) => x + y, 0)
  const rssPerAgent = rssAfter.reduce((s, r, i) => s + (r - (rssBefore[i] as number)), 0) / AGENTS
  const out = {
    agents: AGENTS,
    verifiers: VERIFIERS,
    database: mariadb ? 'mariadb' : pg ? 'postgresql' : 'sqlite',
    intervalS: INTERVAL_S,
    loginAllS: Number(loginS.toFixed(1)),
    attestationsPerS: Math.round(accepted / elapsed),
    targetPerS: Math.round(AGENTS / INTERVAL_S),
    timeTo202Ms: {
      p50: Number(percentile(latencies, 0.5).toFixed(1)),
      p99: Number(percentile(latencies, 0.99).toFixed(1)),
    },
    slotWaitMs: {
      p50: Number(percentile(slotWaits, 0.5).toFixed(1)),
      p99: Number(percentile(slotWaits, 0.99).toFixed(1)),
    },
    verifierCpuUsPerAttestation: Math.round((cpuTotal / Math.max(1, accepted)) * 1e6),
    verifierCores: Number((cpuTotal / elapsed).toFixed(2)),
    // the main threads alone: the event loops, the bound of a verifier (workers and helper threads excluded)
    eventLoopCpuUsPerAttestation: Math.round((loopCpuTotal / Math.max(1, accepted)) * 1e6),
    eventLoopCores: Number((loopCpuTotal / elapsed).toFixed(2)),
    // read and write system calls (database file and sockets): each one is costly on a virtual machine
    verifierSyscallsPerAttestation: {
      reads: Number((syscallsUsed.reads / Math.max(1, accepted)).toFixed(1)),
      writes: Number((syscallsUsed.writes / Math.max(1, accepted)).toFixed(1)),
    },
    // the simulated agents share the machine's cores with the verifiers
    simulatedAgentsCores: Number(((harnessCpu.user + harnessCpu.system) / 1e6 / elapsed).toFixed(2)),
    verifierRssMb: rssAfter.map((r) => Math.round(r / 1048576)),
    rssPerAgentKb: Number((rssPerAgent / 1024).toFixed(1)),
    accepted202: acceptedTotal,
    countedAttestations: counted,
    failedEvaluations: Number(failed.rows[0]?.n ?? 0),
    unfinishedEvaluations: pendingEvaluations,
    errors,
    loadavg: loadavg().map((l) => Number(l.toFixed(2))),
  }
  process.stdout.write(`${JSON.stringify(out, null, 2)}\n`)
  if (counted !== acceptedTotal || out.failedEvaluations > 0) {
    process.stderr.write('attestations lost, counted twice or failed\n')
    process.exitCode = 1
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? err}\n`)
  process.exit(1)
})
