/**
 * Push mode's metrics (`/metrics`, named as the pull verifier's: `keylime_verifier_push_*`). `PushMetrics` is what the
 * push routes, attestations and monitor record into (a no-op unless `/metrics` is enabled); the overdue gauge is read
 * from the database at scrape time.
 */
import { type Kysely, sql } from 'kysely'
import { Counter, Gauge, Histogram, type Registry } from 'prom-client'
import { AgentState } from '../../api/verifier/states.ts'
import type { VerifierDatabase } from '../../db/verifier-repository.ts'
import {
  DB_WRITE_ROWS_BUCKETS,
  DB_WRITE_SECONDS_BUCKETS,
  FailureEventLabel,
  VERDICT_SECONDS_BUCKETS,
} from '../metrics.ts'

export type SessionOutcome = 'created' | 'authenticated' | 'refused' | 'rate_limited'

export interface PushMetrics {
  /** A session step: challenge sent, proof accepted (token issued), proof refused, or create refused (429). */
  session(outcome: SessionOutcome): void
  /** Capabilities received and an attestation created (201). */
  attestationCreated(): void
  /** Evidence accepted (202); `timeTo202Seconds` from the capabilities' arrival, null when unknown. */
  evidenceAccepted(timeTo202Seconds: number | null): void
  /** A verdict this verifier wrote: result, first failure event id (null on pass), seconds from the 202. */
  verdict(result: 'pass' | 'fail', failureEventId: string | null, evaluationSeconds: number): void
  /** Agents this verifier failed as overdue. */
  overdue(count: number): void
  /** One batched write: `requests` (new attestations and evidence, group commit) or `verdicts`. */
  databaseWrite(kind: 'requests' | 'verdicts', rows: number, seconds: number): void
}

export const NO_PUSH_METRICS: PushMetrics = {
  session: () => undefined,
  attestationCreated: () => undefined,
  evidenceAccepted: () => undefined,
  verdict: () => undefined,
  overdue: () => undefined,
  databaseWrite: () => undefined,
}

export class PrometheusPushMetrics implements PushMetrics {
  private readonly sessions: Counter<'outcome'>
  private readonly created: Counter
  private readonly accepted: Counter
  private readonly verdicts: Counter<'result' | 'event_id'>
  private readonly timeTo202: Histogram
  private readonly evaluation: Histogram<'result'>
  private readonly overdueTotal: Counter
  private readonly writeRows: Histogram<'kind'>
  private readonly writeLatency: Histogram<'kind'>
  private readonly eventIds = new FailureEventLabel()

  constructor(registry: Registry, db: Kysely<VerifierDatabase>) {
    const registers = [registry]
    this.sessions = new Counter({
      name: 'keylime_verifier_push_sessions_total',
      help: 'Push session steps: created (challenge sent), authenticated (token issued), refused (proof of possession failed), rate_limited (429)',
      labelNames: ['outcome'],
      registers,
    })
    this.created = new Counter({
      name: 'keylime_verifier_push_attestations_received_total',
      help: 'Push attestations created: capabilities received, evidence requested (201)',
      registers,
    })
    this.accepted = new Counter({
      name: 'keylime_verifier_push_evidence_accepted_total',
      help: 'Push evidence accepted for verification (202)',
      registers,
    })
    this.verdicts = new Counter({
      name: 'keylime_verifier_push_attestations_total',
      help: 'Push verdicts written by this verifier by result (pass, fail) and, for failures, the worst event id',
      labelNames: ['result', 'event_id'],
      registers,
    })
    this.timeTo202 = new Histogram({
      name: 'keylime_verifier_push_time_to_202_seconds',
      help: 'From the capabilities of a push attestation to the 202 of its evidence (includes the agent quoting)',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    })
    this.evaluation = new Histogram({
      name: 'keylime_verifier_push_evaluation_duration_seconds',
      help: 'From the 202 of push evidence to its verdict written',
      labelNames: ['result'],
      buckets: VERDICT_SECONDS_BUCKETS,
      registers,
    })
    this.overdueTotal = new Counter({
      name: 'keylime_verifier_push_overdue_total',
      help: 'Push agents this verifier failed because their evidence was overdue',
      registers,
    })
    this.writeRows = new Histogram({
      name: 'keylime_verifier_push_db_write_batch_rows',
      help: 'Rows per batched push write: requests (new attestations and evidence) or verdicts',
      labelNames: ['kind'],
      buckets: DB_WRITE_ROWS_BUCKETS,
      registers,
    })
    this.writeLatency = new Histogram({
      name: 'keylime_verifier_push_db_write_duration_seconds',
      help: 'Time of one batched push write',
      labelNames: ['kind'],
      buckets: DB_WRITE_SECONDS_BUCKETS,
      registers,
    })
    new Gauge({
      name: 'keylime_verifier_push_overdue_agents',
      help: 'Push agents failed as overdue and not attested since (read from the database at scrape time)',
      registers,
      async collect() {
        this.reset()
        const n = await sql<{ n: number | string }>`select count(*) as n from verifiermain
            where ip is null and operational_state = ${AgentState.FAILED} and accept_attestations = 0
            and last_event_id = 'internal.push.evidence_overdue'`
          .execute(db)
          .then(
            (r) => Number(r.rows[0]?.n ?? 0),
            () => null,
          )
        // database unreachable: no sample rather than a zero
        if (n !== null) this.set(n)
      },
    })
  }

  session(outcome: SessionOutcome): void {
    this.sessions.inc({ outcome })
  }

  attestationCreated(): void {
    this.created.inc()
  }

  evidenceAccepted(timeTo202Seconds: number | null): void {
    this.accepted.inc()
    if (timeTo202Seconds !== null && timeTo202Seconds >= 0) this.timeTo202.observe(timeTo202Seconds)
  }

  verdict(result: 'pass' | 'fail', failureEventId: string | null, evaluationSeconds: number): void {
    this.verdicts.inc({ result, event_id: this.eventIds.of(failureEventId) })
    this.evaluation.observe({ result }, Math.max(0, evaluationSeconds))
  }

  overdue(count: number): void {
    if (count > 0) this.overdueTotal.inc(count)
  }

  databaseWrite(kind: 'requests' | 'verdicts', rows: number, seconds: number): void {
    this.writeRows.observe({ kind }, rows)
    this.writeLatency.observe({ kind }, seconds)
  }
}
