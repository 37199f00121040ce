/**
 * The pull-mode attestation loop (keylime-protocols.md §D) for every agent this verifier holds: the glue between
 * the scheduler (when), the agent step (`agent-steps.ts`: the step's I/O and the evidence verdict), the state
 * machine (what follows) and the repository (what is kept). Successful attestations are written in batches, state
 * changes at once and retried until written.
 */
import type { KeyObject } from 'node:crypto'
import { EventEmitter } from 'node:events'
import { AgentState } from '../api/verifier/states.ts'
import type { Logger } from '../common/log.ts'
import type { VerifierAgentPatch, VerifierAgentRow, VerifierRepository } from '../db/verifier-repository.ts'
import type { AgentConnections } from './agent-connections.ts'
import { type AgentRuntime, agentRuntimeFromRow } from './agent-runtime.ts'
import { AgentSteps } from './agent-steps.ts'
import { DbOutage } from './db-outage.ts'
import type { EvidenceRunner } from './evidence-runner.ts'
import { type LoopStats, NO_VERIFIER_METRICS, type VerifierMetrics } from './metrics.ts'

import type { VerifierOptions } from './options.ts'
import type { PolicyStore } from './policy-store.ts'
import type { RevocationNotifier } from './revocation-notifier.ts'
import { Scheduler } from './scheduler.ts'
import { type Effect, type StepOutcome, transition } from './state-machine.ts'
import { WriteBatcher } from './write-batcher.ts'

const FLUSH_MS = 200
const MAX_WRITE_RETRY_MS = 5000

export interface AttestationLoopDeps {
  repo: VerifierRepository
  options: VerifierOptions
  connections: AgentConnections
  notifier: RevocationNotifier
  evidence: EvidenceRunner
  log: Logger
  /** This process instance's lease holder id. */
  leaseHolder: string
  now?: () => number
  policies: PolicyStore
  outage?: DbOutage
}

type Scheduled = { a: AgentRuntime; gen: number }

/** Emitted as `step` once the effects of a step's outcome are carried out (tests and metrics observe the loop). */
export interface StepEvent {
  agentId: string
  outcome: StepOutcome['kind']
  state: AgentState
  /** Whether the agent is still attested after this step. */
  attested: boolean
}

export class AttestationLoop {
  private readonly agents = new Map<string, AgentRuntime>()
  private readonly scheduler: Scheduler<Scheduled>
  private readonly batcher: WriteBatcher
  private readonly agentSteps: AgentSteps
  readonly outage: DbOutage
  private running = false
  attestations = 0
  failures = 0
  steps = 0
  /** Where attestation results and batch writes are recorded (`/metrics`); a no-op until a service sets it. */
  metrics: VerifierMetrics = NO_VERIFIER_METRICS
  /** `step` (StepEvent) after every applied outcome. */
  readonly events = new EventEmitter<{ step: [StepEvent] }>()
  private readonly now: () => number

  constructor(private readonly deps: AttestationLoopDeps) {
    this.now = deps.now ?? Date.now
    this.outage = deps.outage ?? new DbOutage(deps.log, this.now)
    this.scheduler = new Scheduler<Scheduled>({
      maxConcurrency: deps.options.maxConcurrency,
      now: this.now,
      isCurrent: ({ a, gen }) => gen === a.generation && this.agents.get(a.id) === a,
      run: ({ a, gen }) => this.step(a, gen),
    })
    this.agentSteps = new AgentSteps({ ...deps, outage: this.outage, now: this.now })
    this.batcher = new WriteBatcher({
      repo: deps.repo,
      leaseHolder: deps.leaseHolder,
      outage: this.outage,
      log: deps.log,
      flushMs: FLUSH_MS,
      isHeld: (id) => this.agents.has(id),
      // a success from an earlier claim (the agent was re-enrolled or reactivated meanwhile) says nothing of now
      onWritten: (rows, seconds) => this.metrics.databaseWrite(rows, seconds),
      onRefused: async (s) => {
        if (this.agents.get(s.agentId)?.leaseEpoch === s.leaseEpoch) await this.refused(s.agentId)
      },
    })
  }

  start(): void {
    this.running = true
    this.batcher.start()
    this.scheduler.start()
  }

  has(agentId: string): boolean {
    return this.agents.has(agentId)
  }

  isInFlight(agentId: string): boolean {
    return this.agents.get(agentId)?.inFlight ?? false
  }

  get size(): number {
    return this.agents.size
  }

  /** Starts (or restarts) attesting an agent from START (`akPublic`: its AK when the caller has just imported it). */
  add(row: VerifierAgentRow, akPublic?: KeyObject): void {
    this.remove(row.agent_id)
    if (!row.ip || row.port === null) {
      this.deps.log.warn({ agentId: row.agent_id }, 'agent row has no ip/port: not attested')
      return
    }
    const a = agentRuntimeFromRow({ ...row, ip: row.ip, port: row.port }, akPublic)
    this.agents.set(a.id, a)
    this.scheduler.schedule({ a, gen: a.generation }, this.now())
  }

  /** Stops attesting an agent (its pending success write is dropped); true if it was mid-step. */
  remove(agentId: string): boolean {
    const a = this.agents.get(agentId)
    if (!a) return false
    a.generation++
    this.agents.delete(agentId)
    this.batcher.take(agentId)
    this.deps.connections.release(agentId)
    return a.inFlight
  }

  /** A stored policy changed (PUT): agents using it reload their policies at their next step. */
  invalidatePolicy(kind: 'ima' | 'mb', policyId: number): void {
    for (const a of this.agents.values())
      if ((kind === 'ima' ? a.imaPolicyId : a.mbPolicyId) === policyId) a.policies = null
  }

  /** Agent ids being attested (for the `agent` revocation channel). */
  agentIds(): IterableIterator<string> {
    return this.agents.keys()
  }

  /** What the heartbeat compares with the stored rows (lease epoch, configuration version). */
  heldVersion(agentId: string): { leaseEpoch: number; configVersion: number } | undefined {
    const a = this.agents.get(agentId)
    return a ? { leaseEpoch: a.leaseEpoch, configVersion: a.configVersion } : undefined
  }

  endpointOf(
    agentId: string,
  ): { ip: string; port: number; apiVersion: string; mtlsCert: string | null } | undefined {
    const a = this.agents.get(agentId)
    return a ? { ip: a.ip, port: a.port, apiVersion: a.apiVersion, mtlsCert: a.mtlsCert } : undefined
  }

  stats(): LoopStats {
    const lag = this.scheduler.stats()
    return {
      agents: this.agents.size,
      inFlight: lag.inFlight,
      attestations: this.attestations,
      failures: this.failures,
      steps: this.steps,
      lagP50: lag.lagP50,
      lagP99: lag.lagP99,
    }
  }

  /** How late the latest step started, ms: a verifier running late keeps connections open that much longer. */
  get currentLagMs(): number {
    return this.scheduler.currentLagMs
  }

  resetLagStats(): void {
    this.scheduler.resetLagStats()
  }

  /** Stops scheduling, waits for in-flight steps (bounded) and writes pending successes. */
  async stop(drainMs: number, opts: { flush?: boolean } = {}): Promise<void> {
    this.running = false
    await this.scheduler.stop(drainMs)
    await this.batcher.stop(opts.flush !== false)
    for (const id of [...this.agents.keys()]) this.remove(id)
  }

  /** Writes the batched successful attestations now. */
  flush(): Promise<void> {
    return this.batcher.flush()
  }

  // ------------------------------------------------------------------------------------- steps

  /** One step; never rejects: anything unexpected is the verifier's fault ("cannot evaluate"). */
  private async step(a: AgentRuntime, gen: number): Promise<void> {
    a.inFlight = true
    const started = performance.now()
    try {
      const outcome =
        a.state === AgentState.PROVIDE_V || a.state === AgentState.PROVIDE_V_RETRY
          ? await this.agentSteps.provideV(a, gen)
          : await this.agentSteps.quote(a, gen)
      if (outcome === null || gen !== a.generation) return
      if (outcome.kind === 'quote_passed') this.attestations++
      else if (outcome.kind === 'quote_failed') this.failures++
      this.recordResult(outcome, (performance.now() - started) / 1000)
      await this.apply(a, gen, outcome)
    } catch (err) {
      this.deps.log.error(
        { agentId: a.id, err: (err as Error).message },
        'attestation step failed unexpectedly',
      )
      if (gen === a.generation)
        await this.apply(a, gen, {
          kind: 'cannot_evaluate',
          context: { message: `verifier error: ${(err as Error).message}` },
        }).catch((e2) =>
          this.deps.log.error({ agentId: a.id, err: (e2 as Error).message }, 'cannot record the failed step'),
        )
    } finally {
      a.inFlight = false
    }
  }

  /** Attestation steps in the metrics: evidence judged (pass/fail) or not obtained (error); V deliveries are not. */
  private recordResult(outcome: StepOutcome, seconds: number): void {
    if (outcome.kind === 'quote_passed') this.metrics.attestation('pass', null, seconds)
    else if (outcome.kind === 'quote_failed')
      this.metrics.attestation('fail', outcome.events[0]?.eventId ?? null, seconds)
    else if (
      outcome.kind === 'unreachable' ||
      outcome.kind === 'refused' ||
      outcome.kind === 'cannot_evaluate'
    )
      this.metrics.attestation('error', null, seconds)
  }

  // ------------------------------------------------------------------------------------- outcomes

  /** Runs the state machine and carries out its effects in order; stops at a refused write. */
  private async apply(a: AgentRuntime, gen: number, outcome: StepOutcome): Promise<void> {
    this.steps++
    const t = transition(a.state, outcome, a, this.deps.options)
    const patch: VerifierAgentPatch = { operational_state: t.state }
    a.state = t.state
    a.numRetries = t.numRetries
    for (const effect of t.effects) if (!(await this.carryOut(a, gen, effect, patch, outcome))) break
    if (this.events.listenerCount('step') > 0)
      this.events.emit('step', {
        agentId: a.id,
        outcome: outcome.kind,
        state: a.state,
        attested: this.agents.get(a.id) === a && gen === a.generation,
      })
  }

  /** One effect; false when the agent left the loop (refused write, stop). */
  private async carryOut(
    a: AgentRuntime,
    gen: number,
    effect: Effect,
    patch: VerifierAgentPatch,
    outcome: StepOutcome,
  ): Promise<boolean> {
    switch (effect.kind) {
      case 'record_event':
        a.severityLevel = effect.severityLevel
        patch.severity_level = effect.severityLevel
        patch.last_event_id = effect.eventId
        patch.last_event_context = JSON.stringify(effect.context)
        return true
      case 'persist':
        if (effect.mode === 'batched') {
          const s = a.lastSuccess
          if (s) {
            s.operationalState = a.state
            this.batcher.put(s)
            a.lastSuccess = null
          }
          return true
        }
        if (outcome.kind === 'quote_failed') {
          patch.last_received_quote = a.lastReceivedQuote
          patch.ima_state = a.imaState ? JSON.stringify(a.imaState) : null
        }
        if (outcome.kind === 'renegotiated') patch.supported_version = a.apiVersion
        return this.write(a, gen, patch)
      case 'revoke':
        this.deps.notifier.notify(a.subject, 'revocation', new Date(this.now()), {
          eventId: effect.eventId,
          severityLabel: effect.severityLabel,
          context: effect.context,
        })
        return true
      case 'notify_comm_error':
        this.deps.notifier.notify(a.subject, 'comm_error', new Date(this.now()))
        return true
      case 'reschedule':
        if (effect.sendPubkey) a.sendPubkey = true
        this.scheduler.schedule({ a, gen }, this.now() + effect.delayMs)
        return true
      case 'send_v':
        // the step run next for a PROVIDE_V agent is the V delivery
        this.scheduler.schedule({ a, gen }, this.now())
        return true
      case 'stop':
        this.remove(a.id)
        return false
    }
  }

  /**
   * Fenced immediate write, retried until written while the agent is still attested here (a database outage pauses
   * only this agent). Takes the agent's pending batched success along so the batch cannot overwrite it later. On
   * refusal (deleted, stopped, TERMINATED, lease lost) the agent leaves the loop, finishing a pending delete.
   */
  private async write(a: AgentRuntime, gen: number, patch: VerifierAgentPatch): Promise<boolean> {
    const p = this.batcher.take(a.id)
    const merged: VerifierAgentPatch = p
      ? {
          attestation_count: p.attestationCount,
          last_successful_attestation: p.lastSuccessfulAttestation,
          tpm_clockinfo: p.tpmClockinfo,
          ...(p.publicKey !== null ? { public_key: p.publicKey } : {}),
          ...patch,
        }
      : patch
    for (let attempt = 0; ; attempt++) {
      if (gen !== a.generation || !this.running) return false
      let ok: boolean
      try {
        ok = await this.deps.repo.updateGuarded(
          a.id,
          { holder: this.deps.leaseHolder, epoch: a.leaseEpoch },
          merged,
        )
      } catch (err) {
        this.outage.failed(err, 'agent state change')
        await new Promise((r) => setTimeout(r, Math.min(MAX_WRITE_RETRY_MS, 100 * 2 ** attempt)))
        continue
      }
      this.outage.succeeded()
      if (!ok) {
        if (gen === a.generation) {
          this.deps.log.info({ agentId: a.id }, 'lease: agent released (write fence refused)')
          await this.refused(a.id)
        }
        return false
      }
      return gen === a.generation
    }
  }

  /** A fenced write was refused: the agent leaves the loop; a pending delete (TERMINATED) is finished here. */
  private async refused(agentId: string): Promise<void> {
    this.remove(agentId)
    try {
      const row = await this.deps.repo.getAgent(agentId)
      if (row?.operational_state === AgentState.TERMINATED) {
        await this.deps.repo.deleteAgent(agentId)
        this.deps.log.info({ agentId }, 'agent deleted (TERMINATED observed by the loop)')
      }
    } catch (err) {
      // the heartbeat finishes orphaned deletions later
      this.outage.failed(err, 'finishing a pending delete')
    }
  }
}
