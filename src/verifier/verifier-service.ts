/**
 * Ties the verifier together: repository, attestation loop, evidence runner, revocation notifier, leases, and the
 * operations the REST routes call (enrolment, on-demand evidence verification).
 *
 * Multi-verifier (several processes on one PostgreSQL): every agent row carries `verifier_id` (the configured
 * `uuid`, as upstream) and a lease (`lease_holder`, `lease_epoch`); each running instance has one heartbeat row
 * (`verifier_holders`), and an agent's lease is valid while its holder's row has not expired. The holder id is
 * `<uuid>@<host>/<ip>:<port>#<instance>`, the instance part random for the life of the process, so identical
 * replicas (same uuid, ip and port) never share one. A verifier attests only agents whose lease it holds; every
 * `leaseMs/3` it extends its heartbeat row (one statement, however many agents it holds), claims agents of its
 * `verifier_id` that nobody holds or whose holder's row expired, and compares what it holds with the stored rows
 * (see `reconcile`). Every claim bumps the row's epoch and every write
 * of the loop is fenced by holder and epoch, so a stale holder cannot write. At start a process takes over at once
 * the agents of a previous instance at the same address: on one host only one process can listen there, so that
 * instance is dead.
 */
import { randomBytes } from 'node:crypto'
import { hostname } from 'node:os'
import type { Kysely } from 'kysely'
import { Agent } from 'undici'
import type { EnrollBody, VerifyEvidenceResults } from '../api/verifier/schemas.ts'
import { AgentState, OPERATOR_HELD_STATES, RESUMABLE_STATES } from '../api/verifier/states.ts'
import type { Logger } from '../common/log.ts'
import {
  DuplicateError,
  type NewVerifierAgent,
  type VerifierDatabase,
  VerifierRepository,
} from '../db/verifier-repository.ts'
import { AgentConnections, type VerifierClientTls } from './agent-connections.ts'
import { AttestationLoop } from './attestation-loop.ts'
import { DbOutage } from './db-outage.ts'
import { planEnrolment } from './enrolment.ts'
import { EvidencePool } from './evidence-pool.ts'
import { EvidenceParamsError, evidenceInputFromRequest, evidenceResults } from './evidence-request.ts'
import { EvidenceRunner } from './evidence-runner.ts'
import type { VerifierOptions } from './options.ts'
import { VerifierRequestError } from './policy-input.ts'
import { PolicyStore } from './policy-store.ts'
import { PushVerifier } from './push/push-verifier.ts'
import { postWebhookWithUndici, RevocationNotifier, type RevocationWire } from './revocation-notifier.ts'

export interface VerifierServiceDeps {
  db: Kysely<VerifierDatabase>
  options: VerifierOptions
  log: Logger
  /** Client certificate toward agents and webhooks; null = plain HTTP to agents. */
  clientTls: VerifierClientTls | null
  /** Stable part of the lease holder id; default `<uuid>@<host>/<ip>:<port>`. */
  leaseAddress?: string
  now?: () => number
}

const CLAIM_BATCH = 1000

/** The address part of the lease holder id: what a restarted process on the same host and port shares. */
export function defaultLeaseAddress(verifierId: string, ip: string, port: number): string {
  return `${verifierId}@${hostname()}/${ip}:${port}`
}

export class VerifierService {
  readonly repo: VerifierRepository
  readonly loop: AttestationLoop
  readonly notifier: RevocationNotifier
  readonly connections: AgentConnections
  /** The one entry into the evidence pipeline, shared by the loop and `verifyEvidence`. */
  readonly evidence: EvidenceRunner
  readonly leaseHolder: string
  readonly policies: PolicyStore
  readonly outage: DbOutage
  /** Push mode (API 3.0); null in pull mode. */
  readonly push: PushVerifier | null
  /** Rows the last reconcile found changed by someone else, by kind (tests and logs). */
  readonly noticed = { configChanged: 0, leaseLost: 0, stoppedByOperator: 0, resumed: 0 }
  private readonly leaseAddress: string
  /** https webhooks: the verifier's client certificate, server checked against `trusted_server_ca`. */
  private readonly webhookDispatcher: Agent | null
  private heartbeat: NodeJS.Timeout | null = null
  private beating: Promise<void> = Promise.resolve()
  private readonly now: () => number

  constructor(private readonly deps: VerifierServiceDeps) {
    const o = deps.options
    this.now = deps.now ?? Date.now
    this.repo = new VerifierRepository(deps.db)
    this.leaseAddress = deps.leaseAddress ?? defaultLeaseAddress(o.verifierId, o.ip, o.port)
    this.leaseHolder = `${this.leaseAddress}#${randomBytes(6).toString('hex')}`
    this.outage = new DbOutage(deps.log, this.now)
    this.policies = new PolicyStore(this.repo, o.mbPolicyEngine)
    this.evidence = new EvidenceRunner(
      o.evidenceWorkers > 0
        ? new EvidencePool({
            workers: o.evidenceWorkers,
            // one evaluation may take as long as fetching the evidence may
            jobTimeoutMs: o.requestTimeoutMs,
            sourceOf: (policy) => this.policies.sourceOf(policy),
            onWorkerDied: (reason) => deps.log.error({ err: reason }, 'evidence worker died: replaced'),
          })
        : null,
    )
    this.connections = new AgentConnections(deps.clientTls, o.requestTimeoutMs, {
      maxResponseBytes: o.maxAgentResponseBytes,
      memoryLimit: o.agentResponseMemoryLimit,
      quoteIntervalMs: o.quoteIntervalMs,
      maxOpenConnections: o.maxOpenAgentConnections,
      idleGraceMs: () => this.loop?.currentLagMs ?? 0,
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
    this.loop = new AttestationLoop({
      policies: this.policies,
      repo: this.repo,
      options: o,
      connections: this.connections,
      notifier: this.notifier,
      evidence: this.evidence,
      log: deps.log,
      leaseHolder: this.leaseHolder,
      now: this.now,
      outage: this.outage,
    })
    this.push =
      o.mode === 'push'
        ? new PushVerifier({
            db: deps.db,
            agents: this.repo,
            options: o,
            policies: this.policies,
            evidence: this.evidence,
            notifier: this.notifier,
            outage: this.outage,
            log: deps.log,
            now: this.now,
            holder: this.leaseHolder,
          })
        : null
  }

  get options(): VerifierOptions {
    return this.deps.options
  }

  get leaseUntil(): number {
    return this.now() + this.deps.options.leaseMs
  }

  /** Takes over a dead predecessor's agents, claims free ones, starts the loop and the heartbeat. */
  async start(): Promise<void> {
    // the workers load their modules while the leases are claimed, not on the first attestation
    this.evidence.pool?.warm()
    // a push verifier polls no agent: its agents come to it (docs/push.md)
    if (this.push) {
      await this.push.start(this.leaseAddress)
      this.deps.log.info({ holder: this.leaseHolder }, 'verifier started in push mode')
      return
    }
    await this.repo.heartbeat(this.leaseHolder, this.now(), this.leaseUntil)
    const { agents, previousHolders } = await this.repo.takeOverFromAddress(
      this.leaseAddress,
      this.leaseHolder,
    )
    for (const row of agents) this.loop.add(row)
    if (previousHolders.length > 0)
      this.deps.log.info(
        { agents: agents.length, previousHolders, leaseHolder: this.leaseHolder },
        'lease: took over the agents of a previous instance at this address',
      )
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

  /** Renew the lease, notice rows changed by others, then claim agents nobody (alive) attests. Never rejects. */
  async beat(): Promise<void> {
    try {
      if (!(await this.repo.heartbeat(this.leaseHolder, this.now(), this.leaseUntil)))
        this.deps.log.warn(
          { leaseHolder: this.leaseHolder },
          'lease: heartbeat row had expired; agents other verifiers claimed meanwhile are theirs',
        )
      await this.reconcile()
      let claimedTotal = 0
      for (;;) {
        const claimed = await this.repo.claimAgents(
          this.deps.options.verifierId,
          this.leaseHolder,
          this.now(),
          CLAIM_BATCH,
        )
        for (const row of claimed)
          if (!this.loop.has(row.agent_id)) {
            this.loop.add(row)
            claimedTotal++
          }
        if (claimed.length < CLAIM_BATCH) break
      }
      this.loop.metrics.leaseClaims(claimedTotal)
      if (claimedTotal > 0)
        this.deps.log.info(
          { claimed: claimedTotal, held: this.loop.size, leaseHolder: this.leaseHolder },
          'lease: claimed agents nobody held',
        )
      await this.repo.forgetExpiredHolders(this.now() - this.deps.options.leaseMs)
      // deletions left pending (TERMINATED) by a verifier that died before finishing them
      for (const id of await this.repo.orphanedTerminated(this.deps.options.verifierId, this.now()))
        await this.repo.deleteAgent(id)
      this.outage.succeeded()
    } catch (err) {
      this.outage.failed(err, 'lease heartbeat')
    }
  }

  /**
   * What a running verifier notices of changes made by another verifier or an operator, once per heartbeat:
   * - a row it attests whose lease is now held by someone else or under a newer epoch: it stops attesting it;
   * - a row set to TERMINATED or TENANT_FAILED: it stops (and finishes a pending delete);
   * - a changed configuration column (`config_version`, bumped by a database trigger: ip, port, tpm_policy, accept
   *   lists, AK, mTLS certificate, V, policies ids, keys, metadata): it restarts the agent from the new row;
   * - a row it holds in a resumable state but does not attest: it resumes it.
   * Edits of a stored policy's text by another verifier are not noticed until the agent restarts.
   */
  private async reconcile(): Promise<void> {
    // agents the loop lets go of from now on wrote their final state first; only those absent already may be stuck
    const attestedBefore = new Set(this.loop.agentIds())
    const rows = new Map((await this.repo.heldRows(this.leaseHolder)).map((r) => [r.agent_id, r]))
    let lost = 0
    for (const id of [...this.loop.agentIds()]) {
      const held = this.loop.heldVersion(id)
      const row = rows.get(id)
      if (!held) continue
      if (!row || row.lease_epoch !== held.leaseEpoch) {
        // read again: the API may have restarted the agent under a new epoch since the list was read
        const fresh = await this.repo.getAgent(id)
        const now = this.loop.heldVersion(id)
        if (fresh?.lease_holder === this.leaseHolder && now && fresh.lease_epoch === now.leaseEpoch) continue
        this.loop.remove(id)
        lost++
        continue
      }
      const state = row.operational_state
      if (state !== null && (OPERATOR_HELD_STATES as readonly number[]).includes(state)) {
        this.loop.remove(id)
        this.noticed.stoppedByOperator++
        if (state === AgentState.TERMINATED) await this.repo.deleteAgent(id)
        this.deps.log.info({ agentId: id, state }, 'agent stopped or deleted elsewhere: no longer attested')
      } else if (row.config_version !== held.configVersion) {
        const full = await this.repo.getAgent(id)
        if (full?.lease_holder === this.leaseHolder) {
          this.deps.log.info(
            { agentId: id },
            'agent row changed elsewhere: attestation restarted from the new row',
          )
          this.loop.add(full)
          this.noticed.configChanged++
        }
      }
    }
    // rows this verifier holds in a resumable state that it did not attest (a restart raced with a write): resume
    const resumable = (state: number | null) =>
      state !== null && (RESUMABLE_STATES as readonly number[]).includes(state)
    for (const [id, row] of rows)
      if (!attestedBefore.has(id) && !this.loop.has(id) && resumable(row.operational_state)) {
        const full = await this.repo.getAgent(id)
        if (
          !full ||
          full.lease_holder !== this.leaseHolder ||
          !resumable(full.operational_state) ||
          this.loop.has(id)
        )
          continue
        this.deps.log.warn({ agentId: id }, 'held agent was not attested: resumed')
        this.loop.add(full)
        this.noticed.resumed++
      }
    this.noticed.leaseLost += lost
    if (lost > 0)
      this.deps.log.warn({ released: lost, held: this.loop.size }, 'lease: agents taken by another verifier')
  }

  /**
   * `POST /agents/:id` (body already checked against its schema): checks what the schema cannot, then stores the
   * agent with its new policies in one transaction and starts attesting it. Returns the stored row. An agent that
   * exists is refused by the insert (409), after the checks of its input, in upstream's order.
   */
  async enrol(agentId: string, body: EnrollBody): Promise<NewVerifierAgent> {
    const plan = await planEnrolment(agentId, body, {
      repo: this.repo,
      options: this.deps.options,
      policies: this.policies,
      lease: { holder: this.leaseHolder },
      now: this.now(),
    })
    let stored: Awaited<ReturnType<VerifierRepository['enrolAgent']>>
    try {
      stored = await this.repo.enrolAgent(plan.row, plan.newPolicies)
    } catch (err) {
      if (!(err instanceof DuplicateError)) throw err
      // The agent's primary key decides between adds of one id, however they interleave: exactly one insert commits
      // and every other one lands here (a check before the insert would only sometimes catch the loser).
      if (await this.repo.agentExists(agentId))
        throw new VerifierRequestError(409, `Agent of uuid ${agentId} already exists`)
      throw new VerifierRequestError(409, err.message)
    }
    if (stored) this.loop.add(stored, plan.akPublic)
    return stored ?? plan.row
  }

  /** `POST /verify/evidence`: the caller's evidence through the loop's pipeline (400 names missing parameters). */
  async verifyEvidence(body: unknown): Promise<{ statusCode: 200 | 400; results: VerifyEvidenceResults }> {
    let input: ReturnType<typeof evidenceInputFromRequest>
    try {
      input = evidenceInputFromRequest(body, this.deps.options, this.policies)
    } catch (err) {
      if (!(err instanceof EvidenceParamsError)) throw err
      return { statusCode: 400, results: { valid: false, claims: {}, failures: err.failures } }
    }
    return { statusCode: 200, results: evidenceResults(await this.evidence.run(input)) }
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
    await this.push?.monitor.stop()
    if (this.heartbeat) clearInterval(this.heartbeat)
    this.heartbeat = null
    await this.loop.stop(0, { flush: false })
    await this.notifier.close(0)
    await this.connections.close()
    await this.webhookDispatcher?.close()
  }

  /**
   * Graceful stop within `shutdown_drain_timeout`, however slow the database is: drain in-flight steps, write
   * results, release leases so others take over at once. A step of it still waiting when the time is up is left
   * behind (its transaction rolls back when the connection closes; unreleased leases expire with the heartbeat row).
   */
  async stop(deadline = Date.now() + this.deps.options.shutdownDrainTimeoutMs): Promise<void> {
    const left = () => Math.max(0, deadline - Date.now())
    await this.push?.stop()
    if (this.heartbeat) clearInterval(this.heartbeat)
    this.heartbeat = null
    await settleWithin(this.beating, left())
    const held = this.loop.size
    if (!(await settleWithin(this.loop.stop(left()), left())))
      this.deps.log.warn({ held }, 'shutdown: results not all written within the drain time')
    await settleWithin(this.evidence.close(), left())
    const release = this.repo.releaseLeases(this.leaseHolder).then(
      (released) =>
        this.deps.log.info({ released, held, leaseHolder: this.leaseHolder }, 'lease: released on shutdown'),
      (err: unknown) =>
        this.deps.log.warn(
          { err: (err as Error).message },
          'lease: release failed; leases expire on their own',
        ),
    )
    if (!(await settleWithin(release, left())))
      this.deps.log.warn('lease: release not done within the drain time; leases expire on their own')
    await this.notifier.close(Math.min(2000, left()))
    await this.connections.close()
    await this.webhookDispatcher?.close()
  }
}

/** Whether `p` settled within `ms` (false: it is left behind, still running). */
export async function settleWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined
  const settled = p.then(
    () => true,
    () => true,
  )
  const timeout = new Promise<boolean>((r) => {
    timer = setTimeout(() => r(false), ms)
  })
  try {
    return await Promise.race([settled, timeout])
  } finally {
    clearTimeout(timer)
  }
}
