/**
 * The push monitor (keylime-protocols.md §H.6): a push agent whose evidence is overdue (no evidence within
 * `push_evidence_timeout`, default 5 x `quote_interval`) goes to FAILED with the event `internal.push.evidence_overdue`
 * and stops counting as attested (`accept_attestations = 0`, status TIMEOUT or FAIL) until its next good
 * attestation; a revocation notification (`comm_error`) goes out when push notifications are on. Every verifier of a
 * group runs it: the conditional update fails each agent once, on one verifier. It also finishes evaluations other
 * verifiers left and purges expired sessions.
 */
import type { Logger } from '../../common/log.ts'
import type { PushRepository } from '../../db/push-repository.ts'
import { failure, severityOf } from '../../evidence/verdict.ts'
import type { DbOutage } from '../db-outage.ts'
import type { VerifierOptions } from '../options.ts'
import type { RevocationNotifier } from '../revocation-notifier.ts'
import type { PushAttestations } from './attestations.ts'
import { iso } from './json-api.ts'
import type { PushMetrics } from './push-metrics.ts'

export const OVERDUE_EVENT = 'internal.push.evidence_overdue'
const SESSION_PURGE_EVERY_MS = 60_000

export class PushMonitor {
  private timer: NodeJS.Timeout | null = null
  private ticking: Promise<void> = Promise.resolve()
  private lastPurge = 0
  /** Agents failed as overdue by this process (tests, logs). */
  overdue = 0

  constructor(
    private readonly deps: {
      push: PushRepository
      attestations: PushAttestations
      notifier: RevocationNotifier
      options: VerifierOptions
      log: Logger
      outage: DbOutage
      now: () => number
      metrics?: PushMetrics
    },
  ) {}

  start(): void {
    const every = Math.min(5000, Math.max(200, Math.floor(this.deps.options.push.evidenceTimeoutMs / 4)))
    this.timer = setInterval(() => {
      this.ticking = this.ticking.then(() => this.tick())
    }, every)
    this.timer.unref()
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer)
    this.timer = null
    await this.ticking
  }

  /** One round; never rejects (a database outage is logged once and retried next round). */
  async tick(): Promise<void> {
    const o = this.deps.options
    const now = this.deps.now()
    try {
      const event = failure(OVERDUE_EVENT, {
        message: `no evidence within ${o.push.evidenceTimeoutMs / 1000} s`,
      })
      const level = severityOf(event, o.severityRules, o.severityLabels)
      const failed = await this.deps.push.failOverdue(now, {
        eventId: OVERDUE_EVENT,
        context: JSON.stringify(event.context),
        severityLevel: level,
      })
      this.deps.metrics?.overdue(failed.length)
      for (const row of failed) {
        this.overdue++
        this.deps.log.warn({ agentId: row.agent_id }, 'push agent evidence overdue: failed')
        if (o.push.revocationNotifications)
          this.deps.notifier.notify(
            {
              agentId: row.agent_id,
              ip: null,
              port: null,
              tpmPolicy: row.tpm_policy,
              metaData: row.meta_data,
              revocationKey: row.revocation_key,
            },
            'comm_error',
            new Date(now),
            {
              eventId: OVERDUE_EVENT,
              severityLabel: o.severityLabels[level] ?? 'emergency',
              context: event.context,
            },
          )
      }
      await this.deps.attestations.resumeAbandoned()
      if (now - this.lastPurge >= SESSION_PURGE_EVERY_MS) {
        this.lastPurge = now
        await this.deps.push.purgeExpiredSessions(iso(now))
      }
      this.deps.outage.succeeded()
    } catch (err) {
      this.deps.outage.failed(err, 'push monitor')
    }
  }
}
