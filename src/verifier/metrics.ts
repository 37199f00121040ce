/**
 * Verifier metrics. `VerifierMetrics` is what the attestation loop and the lease heartbeat record into (a no-op
 * unless `/metrics` is enabled); the gauges that mirror state (agents per operational state, leases held, scheduler
 * lag, in-flight steps) are read on each scrape from the loop and the database, so nothing is kept twice.
 */
import { type Kysely, sql } from 'kysely'
import { Counter, Gauge, Histogram, type Registry } from 'prom-client'
import { BoundedLabel } from '../api/metrics.ts'
import { AgentState } from '../api/verifier/states.ts'
import type { VerifierDatabase } from '../db/verifier-repository.ts'

/** How one attestation step ended: `pass` (evidence verified), `fail` (evidence refused: a policy or quote
 * failure with an event id), `error` (no evidence to judge: the agent did not answer or answered garbage). */
export type AttestationResult = 'pass' | 'fail' | 'error'

export interface VerifierMetrics {
  /** One finished attestation step; `failureEventId` is the verdict's first event id (null on pass). */
  attestation(result: AttestationResult, failureEventId: string | null, latencySeconds: number): void
  /** One batched database write of attestation results: rows written and how long the write took. */
  databaseWrite(rows: number, latencySeconds: number): void
  /** Agents this verifier claimed on one heartbeat (free or expired leases taken over). */
  leaseClaims(count: number): void
}

export const NO_VERIFIER_METRICS: VerifierMetrics = {
  attestation: () => undefined,
  databaseWrite: () => undefined,
  leaseClaims: () => undefined,
}

/** Distinct failure event ids reported before further ones are counted as `other` (upstream has about 60). */
const MAX_EVENT_IDS = 200

/** The `event_id` label of a verdict: empty on pass, else the first failure's event id (bounded, see MAX_EVENT_IDS). */
export class FailureEventLabel {
  private readonly seen = new BoundedLabel(MAX_EVENT_IDS)

  of(failureEventId: string | null): string {
    return failureEventId === null ? '' : this.seen.value(failureEventId)
  }
}

/** Buckets shared by the pull and push verifiers' metrics, so their histograms compare. */
export const VERDICT_SECONDS_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
export const DB_WRITE_ROWS_BUCKETS = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000]
export const DB_WRITE_SECONDS_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5]

const STATE_NAMES = new Map<number, string>(
  Object.entries(AgentState).map(([name, code]): [number, string] => [code, name.toLowerCase()]),
)

/** The loop's counters the scrape reads (`AttestationLoop.stats()`). */
export interface LoopStats {
  agents: number
  inFlight: number
  attestations: number
  failures: number
  /** Steps whose outcome the state machine applied (every quote, V delivery and error). */
  steps: number
  lagP50: number
  lagP99: number
}

/** Where the scrape-time gauges read from. */
export interface VerifierMetricSources {
  stats(): LoopStats
  db: Kysely<VerifierDatabase>
  leaseHolder: string
  /** The revocation notifier's own counts (delivered, dropped when its queue overflowed). */
  revocations?: () => { delivered: number; dropped: number }
  now?: () => number
}

export class PrometheusVerifierMetrics implements VerifierMetrics {
  private readonly attestations: Counter<'result' | 'event_id'>
  private readonly latency: Histogram<'result'>
  private readonly writeRows: Histogram
  private readonly writeLatency: Histogram
  private readonly claims: Counter
  private readonly eventIds = new FailureEventLabel()

  constructor(registry: Registry, sources: VerifierMetricSources) {
    const registers = [registry]
    this.attestations = new Counter({
      name: 'keylime_verifier_attestations_total',
      help: 'Attestation steps by result (pass, fail, error) and, for failures, the first failure event id',
      labelNames: ['result', 'event_id'],
      registers,
    })
    this.latency = new Histogram({
      name: 'keylime_verifier_attestation_duration_seconds',
      help: 'Time of one attestation step: quote request, agent answer, verification',
      labelNames: ['result'],
      buckets: VERDICT_SECONDS_BUCKETS,
      registers,
    })
    this.writeRows = new Histogram({
      name: 'keylime_verifier_db_write_batch_rows',
      help: 'Rows per batched database write of attestation results',
      buckets: DB_WRITE_ROWS_BUCKETS,
      registers,
    })
    this.writeLatency = new Histogram({
      name: 'keylime_verifier_db_write_duration_seconds',
      help: 'Time of one batched database write of attestation results',
      buckets: DB_WRITE_SECONDS_BUCKETS,
      registers,
    })
    this.claims = new Counter({
      name: 'keylime_verifier_lease_claims_total',
      help: 'Agents claimed by this verifier (free or expired leases taken over)',
      registers,
    })
    registerScrapeGauges(registry, sources)
  }

  attestation(result: AttestationResult, failureEventId: string | null, latencySeconds: number): void {
    this.attestations.inc({ result, event_id: this.eventIds.of(failureEventId) })
    this.latency.observe({ result }, latencySeconds)
  }

  databaseWrite(rows: number, latencySeconds: number): void {
    this.writeRows.observe(rows)
    this.writeLatency.observe(latencySeconds)
  }

  leaseClaims(count: number): void {
    if (count > 0) this.claims.inc(count)
  }
}

function registerScrapeGauges(registry: Registry, sources: VerifierMetricSources): void {
  const registers = [registry]
  new Gauge({
    name: 'keylime_verifier_scheduler_lag_seconds',
    help: 'Delay of attestation steps behind their due time over the last 65,536 steps, by quantile',
    labelNames: ['quantile'],
    registers,
    collect() {
      const s = sources.stats()
      this.set({ quantile: '0.5' }, s.lagP50 / 1000)
      this.set({ quantile: '0.99' }, s.lagP99 / 1000)
    },
  })
  new Gauge({
    name: 'keylime_verifier_loop_agents',
    help: 'Agents in this verifier attestation loop',
    registers,
    collect() {
      this.set(sources.stats().agents)
    },
  })
  new Gauge({
    name: 'keylime_verifier_loop_in_flight',
    help: 'Attestation steps in progress',
    registers,
    collect() {
      this.set(sources.stats().inFlight)
    },
  })
  // counters the loop keeps itself, mirrored at scrape time (a counter restarts at zero with the process)
  new Counter({
    name: 'keylime_verifier_loop_attestations_total',
    help: 'Quotes the loop judged since start: pass (verified) or fail (evidence refused, an invalid quote)',
    labelNames: ['result'],
    registers,
    collect() {
      const s = sources.stats()
      this.reset()
      this.inc({ result: 'pass' }, s.attestations)
      this.inc({ result: 'fail' }, s.failures)
    },
  })
  const revocations = sources.revocations
  if (revocations)
    new Counter({
      name: 'keylime_verifier_revocation_deliveries_total',
      help: 'Revocation notifications the notifier delivered, or dropped because its queue was full',
      labelNames: ['outcome'],
      registers,
      collect() {
        const r = revocations()
        this.reset()
        this.inc({ outcome: 'delivered' }, r.delivered)
        this.inc({ outcome: 'dropped' }, r.dropped)
      },
    })
  new Gauge({
    name: 'keylime_verifier_agents',
    help: 'Agents whose lease this verifier holds, by operational state (read from the database at scrape time)',
    labelNames: ['state'],
    registers,
    async collect() {
      this.reset()
      const rows = await leaseRows(sources)
      // database unreachable: no samples rather than zeros that would look like an empty fleet
      if (rows === null) return
      for (const name of STATE_NAMES.values()) this.set({ state: name }, 0)
      for (const r of rows) this.inc({ state: stateName(r.state) }, Number(r.agents))
    },
  })
  new Gauge({
    name: 'keylime_verifier_leases',
    help: 'Leases held by this verifier: valid (not yet expired) and expired (not renewed in time)',
    labelNames: ['status'],
    registers,
    async collect() {
      this.reset()
      const rows = await leaseRows(sources)
      if (rows === null) return
      let valid = 0
      let expired = 0
      for (const r of rows) {
        valid += Number(r.valid)
        expired += Number(r.agents) - Number(r.valid)
      }
      this.set({ status: 'valid' }, valid)
      this.set({ status: 'expired' }, expired)
    },
  })
}

function stateName(state: number | null): string {
  return state === null ? 'unknown' : (STATE_NAMES.get(state) ?? 'unknown')
}

interface LeaseRow {
  state: number | null
  agents: number | string
  valid: number | string
}

/**
 * One grouped query per scrape, shared by the two gauges that need it (prom-client collects them one after the
 * other within the same scrape).
 */
const pendingLeaseRows = new WeakMap<VerifierMetricSources, Promise<LeaseRow[] | null>>()
function leaseRows(sources: VerifierMetricSources): Promise<LeaseRow[] | null> {
  let p = pendingLeaseRows.get(sources)
  if (!p) {
    const now = (sources.now ?? Date.now)()
    p = sql<LeaseRow>`select m.operational_state as state, count(*) as agents,
        sum(case when h.expires > ${now} then 1 else 0 end) as valid
        from verifiermain m left join verifier_holders h on h.holder = m.lease_holder
        where m.lease_holder = ${sources.leaseHolder} group by m.operational_state`
      .execute(sources.db)
      .then(
        (r) => r.rows,
        () => null,
      )
      .finally(() => setImmediate(() => pendingLeaseRows.delete(sources)))
    pendingLeaseRows.set(sources, p)
  }
  return p
}

/**
 * Agents whose lease this verifier holds but let expire: the heartbeat renews its row a third of the lease time
 * before it runs out, so an expired one means renewal has been failing (readiness fails; other verifiers take over).
 */
export async function expiredLeaseCount(
  db: Kysely<VerifierDatabase>,
  leaseHolder: string,
  now: number,
): Promise<number> {
  const row = await db
    .selectFrom('verifiermain')
    .select((eb) => eb.fn.countAll<number | string>().as('n'))
    .where('lease_holder', '=', leaseHolder)
    .where((eb) =>
      eb.not(
        eb.exists(
          eb
            .selectFrom('verifier_holders')
            .select('holder')
            .where('holder', '=', leaseHolder)
            .where('expires', '>=', now),
        ),
      ),
    )
    .executeTakeFirst()
  return Number(row?.n ?? 0)
}
