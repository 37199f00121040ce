/**
 * Push mode (`mode = push`) of the verifier: sessions, attestations and the monitor over one database, held by
 * nothing but the database, so a group of verifiers sharing PostgreSQL serves every agent from any member.
 */
import type { Kysely } from 'kysely'
import type { Logger } from '../../common/log.ts'
import { type PushDatabase, PushRepository } from '../../db/push-repository.ts'
import type { VerifierDatabase, VerifierRepository } from '../../db/verifier-repository.ts'
import type { DbOutage } from '../db-outage.ts'
import type { EvidenceRunner } from '../evidence-runner.ts'
import type { VerifierOptions } from '../options.ts'
import type { PolicyStore } from '../policy-store.ts'
import type { RevocationNotifier } from '../revocation-notifier.ts'
import { AkKeys } from './ak-keys.ts'
import { PushAttestations } from './attestations.ts'
import { PushMonitor } from './monitor.ts'
import { NO_PUSH_METRICS, type PushMetrics } from './push-metrics.ts'
import { PushResultBatcher } from './push-results.ts'
import { PushWriteQueue } from './push-writes.ts'
import { EscalatingRateLimiter } from './rate-limits.ts'
import { PushSessions } from './sessions.ts'

export interface PushVerifierDeps {
  db: Kysely<VerifierDatabase>
  agents: VerifierRepository
  options: VerifierOptions
  policies: PolicyStore
  evidence: EvidenceRunner
  notifier: RevocationNotifier
  outage: DbOutage
  log: Logger
  now: () => number
  /** This process's id in the group (holds the evaluations it accepted). */
  holder: string
}

/** How often batched verdicts are written (the agent's next attestation waits for its verdict: 503 until then). */
const VERDICT_FLUSH_MS = 100

export class PushVerifier {
  readonly repo: PushRepository
  readonly sessions: PushSessions
  readonly attestations: PushAttestations
  readonly monitor: PushMonitor
  readonly limits: { perIp: EscalatingRateLimiter; perAgent: EscalatingRateLimiter }
  readonly results: PushResultBatcher
  private readonly log: Logger
  /** Where push metrics are recorded (`/metrics`); a no-op until the server sets it. */
  metrics: PushMetrics = NO_PUSH_METRICS

  constructor(deps: PushVerifierDeps) {
    const o = deps.options
    this.log = deps.log
    // the push tables live in the verifier's database, created by its migrations
    this.repo = new PushRepository(deps.db as unknown as Kysely<PushDatabase>)
    // the parts record through this object, so metrics set after construction reach them
    const metrics: PushMetrics = {
      session: (outcome) => this.metrics.session(outcome),
      attestationCreated: () => this.metrics.attestationCreated(),
      evidenceAccepted: (s) => this.metrics.evidenceAccepted(s),
      verdict: (r, e, s) => this.metrics.verdict(r, e, s),
      overdue: (n) => this.metrics.overdue(n),
      databaseWrite: (k, r, s) => this.metrics.databaseWrite(k, r, s),
    }
    const aks = new AkKeys()
    this.sessions = new PushSessions({
      push: this.repo,
      aks,
      agents: deps.agents,
      options: o.push,
      log: deps.log,
      now: deps.now,
      metrics,
    })
    this.results = new PushResultBatcher({
      repo: this.repo,
      flushMs: VERDICT_FLUSH_MS,
      extendUntil: () => this.sessions.extensionUntil(),
      onExtended: (sessions) => this.sessions.extended(sessions),
      outage: deps.outage,
      log: deps.log,
      onWritten: (rows, seconds) => metrics.databaseWrite('verdicts', rows, seconds),
    })
    this.attestations = new PushAttestations({
      push: this.repo,
      writes: new PushWriteQueue({
        repo: this.repo,
        onWritten: (rows, seconds) => metrics.databaseWrite('requests', rows, seconds),
      }),
      results: this.results,
      options: o,
      policies: deps.policies,
      evidence: deps.evidence,
      notifier: deps.notifier,
      log: deps.log,
      now: deps.now,
      holder: deps.holder,
      aks,
      metrics,
    })
    this.monitor = new PushMonitor({
      push: this.repo,
      attestations: this.attestations,
      notifier: deps.notifier,
      options: o,
      log: deps.log,
      outage: deps.outage,
      now: deps.now,
      metrics,
    })
    const r = o.push.sessionRateLimit
    this.limits = {
      perIp: new EscalatingRateLimiter(r.perIp, r.windowIpMs),
      perAgent: new EscalatingRateLimiter(r.perAgent, r.windowAgentMs),
    }
  }

  /** Starts the monitor; finishes first what an earlier process at `address` (this verifier restarted) left. */
  async start(address: string): Promise<void> {
    try {
      await this.attestations.resumePredecessors(address)
    } catch (err) {
      // the monitor finishes them once their hold expires
      this.log.warn({ err: (err as Error).message }, 'push: evaluations of a previous instance not resumed')
    }
    this.monitor.start()
  }

  async stop(): Promise<void> {
    await this.monitor.stop()
    await this.attestations.idle()
    await this.results.stop()
  }
}
