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
import { PushAttestations } from './attestations.ts'
import { PushMonitor } from './monitor.ts'
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

export class PushVerifier {
  readonly repo: PushRepository
  readonly sessions: PushSessions
  readonly attestations: PushAttestations
  readonly monitor: PushMonitor
  readonly limits: { perIp: EscalatingRateLimiter; perAgent: EscalatingRateLimiter }

  constructor(deps: PushVerifierDeps) {
    const o = deps.options
    // the push tables live in the verifier's database, created by its migrations
    this.repo = new PushRepository(deps.db as unknown as Kysely<PushDatabase>)
    this.sessions = new PushSessions({
      push: this.repo,
      agents: deps.agents,
      options: o.push,
      log: deps.log,
      now: deps.now,
    })
    this.attestations = new PushAttestations({
      push: this.repo,
      agents: deps.agents,
      options: o,
      policies: deps.policies,
      evidence: deps.evidence,
      notifier: deps.notifier,
      extendToken: (agentId) => this.sessions.extendAfterPass(agentId),
      log: deps.log,
      now: deps.now,
      holder: deps.holder,
    })
    this.monitor = new PushMonitor({
      push: this.repo,
      attestations: this.attestations,
      notifier: deps.notifier,
      options: o,
      log: deps.log,
      outage: deps.outage,
      now: deps.now,
    })
    const r = o.push.sessionRateLimit
    this.limits = {
      perIp: new EscalatingRateLimiter(r.perIp, r.windowIpMs),
      perAgent: new EscalatingRateLimiter(r.perAgent, r.windowAgentMs),
    }
  }

  start(): void {
    this.monitor.start()
  }

  async stop(): Promise<void> {
    await this.monitor.stop()
    await this.attestations.idle()
  }
}
