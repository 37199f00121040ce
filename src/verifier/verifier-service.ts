/**
 * Ties the verifier together: repository, attestation loop, revocation notifier and the lease heartbeat.
 *
 * Multi-verifier (several processes on one PostgreSQL): every agent row carries `verifier_id` (the configured
 * `uuid`, as upstream) and a lease (`lease_holder`, `lease_expires`). A verifier attests only agents whose lease it
 * holds; every `leaseMs/3` it renews its leases and claims agents of its `verifier_id` that nobody holds or whose
 * lease expired — so a dead verifier's agents are picked up by a live one within one lease period. Each write of the
 * loop is guarded by the lease, so a verifier that lost an agent stops attesting it on its next write. The lease
 * holder id is `<uuid>@<host>:<port>`, so a verifier restarted on the same address resumes its agents at once.
 */
import type { Kysely } from 'kysely'
import { Agent } from 'undici'
import type { Logger } from '../common/log.ts'
import { AgentState, type VerifierDatabase, VerifierRepository } from '../db/verifier-repository.ts'
import { AgentConnections, type VerifierClientTls } from './agent-connections.ts'
import { AttestationLoop, defaultLeaseHolder } from './attestation-loop.ts'
import type { VerifierOptions } from './options.ts'
import { PolicyStore } from './policy-store.ts'
import { postWebhookWithUndici, RevocationNotifier, type RevocationWire } from './revocation-notifier.ts'

export interface VerifierServiceDeps {
  db: Kysely<VerifierDatabase>
  options: VerifierOptions
  log: Logger
  /** Client certificate toward agents and webhooks; null = plain HTTP to agents. */
  clientTls: VerifierClientTls | null
  leaseHolder?: string
  now?: () => number
}

const CLAIM_BATCH = 1000

export class VerifierService {
  readonly repo: VerifierRepository
  readonly loop: AttestationLoop
  readonly notifier: RevocationNotifier
  readonly connections: AgentConnections
  readonly leaseHolder: string
  readonly policies: PolicyStore
  /** https webhooks: the verifier's client certificate, server checked against `trusted_server_ca`. */
  private readonly webhookDispatcher: Agent | null
  private heartbeat: NodeJS.Timeout | null = null
  private beating: Promise<void> = Promise.resolve()
  private readonly now: () => number

  constructor(private readonly deps: VerifierServiceDeps) {
    const o = deps.options
    this.now = deps.now ?? Date.now
    this.repo = new VerifierRepository(deps.db)
    this.leaseHolder = deps.leaseHolder ?? defaultLeaseHolder(o.verifierId, o.ip, o.port)
    this.connections = new AgentConnections(deps.clientTls, o.requestTimeoutMs, {
      maxResponseBytes: o.maxAgentResponseBytes,
      memoryLimit: o.agentResponseMemoryLimit,
    })
    const tls = deps.clientTls
    this.webhookDispatcher = tls
      ? new Agent({
          connect: {
            cert: tls.cert,
            key: tls.key,
            ...(tls.trustedServerCa.length > 0 ? { ca: tls.trustedServerCa } : {}),
            // identity is the CA chain only; hostnames are not checked (keylime-api.md §0.1)
            checkServerIdentity: () => undefined,
            minVersion: 'TLSv1.2',
          },
        })
      : null
    this.notifier = new RevocationNotifier(
      {
        channels: o.revocationChannels,
        webhookUrl: o.webhookUrl,
        maxRetries: o.maxRetries,
        retryInterval: o.retryInterval,
        exponentialBackoff: o.exponentialBackoff,
      },
      {
        postWebhook: (url, wire) =>
          postWebhookWithUndici(url, wire, {
            timeoutMs: o.requestTimeoutMs,
            ...(url.startsWith('https:') && this.webhookDispatcher
              ? { dispatcher: this.webhookDispatcher }
              : {}),
          }),
        postToAgents: (except, wire) => this.postToAgents(except, wire),
      },
      deps.log,
    )
    this.policies = new PolicyStore(this.repo, o.mbPolicyEngine)
    this.loop = new AttestationLoop({
      policies: this.policies,
      repo: this.repo,
      options: o,
      connections: this.connections,
      notifier: this.notifier,
      log: deps.log,
      leaseHolder: this.leaseHolder,
      now: this.now,
    })
  }

  get options(): VerifierOptions {
    return this.deps.options
  }

  get leaseUntil(): number {
    return this.now() + this.deps.options.leaseMs
  }

  /** Resumes this holder's agents, claims free ones, starts the loop and the heartbeat. */
  async start(): Promise<void> {
    const own = await this.repo.resumeOwnAgents(this.leaseHolder, this.leaseUntil)
    for (const row of own) this.addSafely(row)
    this.loop.start()
    await this.beat()
    const every = Math.max(200, Math.floor(this.deps.options.leaseMs / 3))
    this.heartbeat = setInterval(() => {
      this.beating = this.beating.then(() => this.beat())
    }, every)
    this.deps.log.info(
      { agents: this.loop.size, leaseHolder: this.leaseHolder },
      'verifier attestation loop started',
    )
  }

  private addSafely(row: Parameters<AttestationLoop['add']>[0]): void {
    try {
      this.loop.add(row)
    } catch (err) {
      this.deps.log.error(
        { agentId: row.agent_id, err: (err as Error).message },
        'cannot attest agent (bad stored data)',
      )
      void this.repo.updateGuarded(row.agent_id, this.leaseHolder, { operational_state: AgentState.FAILED })
    }
  }

  /** Renew leases, then claim agents nobody (alive) attests. */
  async beat(): Promise<void> {
    try {
      await this.repo.renewLeases(this.leaseHolder, this.leaseUntil)
      for (;;) {
        const claimed = await this.repo.claimAgents(
          this.deps.options.verifierId,
          this.leaseHolder,
          this.now(),
          this.leaseUntil,
          CLAIM_BATCH,
        )
        for (const row of claimed) if (!this.loop.has(row.agent_id)) this.addSafely(row)
        if (claimed.length < CLAIM_BATCH) break
      }
      // deletions left pending (TERMINATED) by a verifier that died before finishing them
      for (const id of await this.repo.orphanedTerminated(this.deps.options.verifierId, this.now()))
        await this.repo.deleteAgent(id)
    } catch (err) {
      this.deps.log.error({ err: (err as Error).message }, 'lease heartbeat failed')
    }
  }

  private async postToAgents(exceptAgentId: string, wire: RevocationWire): Promise<void> {
    const ids = [...this.loop.agentIds()].filter((id) => id !== exceptAgentId)
    const CONCURRENCY = 16
    let i = 0
    const worker = async () => {
      while (i < ids.length) {
        const id = ids[i++] as string
        const ep = this.loop.endpointOf(id)
        if (!ep) continue
        try {
          await this.connections.client({ agentId: id, ...ep }).postRevocation(wire)
        } catch (err) {
          this.deps.log.warn(
            { agentId: id, err: (err as Error).message },
            'revocation to agent not delivered',
          )
        }
      }
    }
    await Promise.all(Array.from({ length: Math.min(CONCURRENCY, ids.length) }, worker))
  }

  /** Stops everything without writing or releasing anything: what a SIGKILL leaves behind (tests use it). */
  async abandon(): Promise<void> {
    if (this.heartbeat) clearInterval(this.heartbeat)
    this.heartbeat = null
    await this.loop.stop(0, { flush: false })
    await this.notifier.close(0)
    await this.connections.close()
    await this.webhookDispatcher?.close()
  }

  /** Graceful stop: drain in-flight steps, write results, release leases so others take over at once. */
  async stop(): Promise<void> {
    if (this.heartbeat) clearInterval(this.heartbeat)
    this.heartbeat = null
    await this.beating
    await this.loop.stop(this.deps.options.shutdownDrainTimeoutMs)
    await this.repo.releaseLeases(this.leaseHolder).catch(() => undefined)
    await this.notifier.close()
    await this.connections.close()
    await this.webhookDispatcher?.close()
  }
}
