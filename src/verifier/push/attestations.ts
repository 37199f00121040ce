/**
 * Push attestations (keylime-api.md §4.2, keylime-protocols.md §H.4-H.6): capabilities -> evidence requested,
 * evidence -> 202, then verification through the same evidence pipeline as pull mode (`EvidenceRunner`), and the
 * verdict written to the attestation and the agent. Every stage is a row in `attestations`; the verifier that
 * accepted the evidence holds its evaluation for a while, and if it dies another verifier finishes it from the
 * stored evidence (`resumeAbandoned`), so nothing is lost or counted twice.
 */
import type { KeyObject } from 'node:crypto'
import { databaseUnavailableReason } from '../../api/server.ts'
import { AgentState } from '../../api/verifier/states.ts'
import type { Logger } from '../../common/log.ts'
import type {
  AgentForAttestation,
  AttestationRow,
  CompletedEvaluation,
  NewAttestationRow,
  PushAgentRow,
  PushRepository,
} from '../../db/push-repository.ts'
import type { ImaReplayState, PcrBank } from '../../evidence/ima/index.ts'
import type { EvidenceInput } from '../../evidence/pipeline.ts'
import {
  decodeBase64Strict,
  parsePcrBlob,
  parseTpmPolicy,
  pcrBank,
  QuoteFormatError,
  type QuoteHashAlg,
  type QuoteParts,
  requiredPcrs,
  type TpmClockInfo,
} from '../../evidence/quote/index.ts'
import { type FailureEvent, failure, severityOf } from '../../evidence/verdict.ts'
import { parseAcceptList, parseImaState } from '../agent-runtime.ts'
import type { EvidenceRunner } from '../evidence-runner.ts'
import type { VerifierOptions } from '../options.ts'
import type { PolicyStore } from '../policy-store.ts'
import type { RevocationNotifier } from '../revocation-notifier.ts'
import type { AkKeys } from './ak-keys.ts'
import { type EvidenceItemOffer, negotiateEvidence, type RequestedItem } from './capabilities.ts'
import { alignImaList, chooseStartingOffset } from './ima-offset.ts'
import { iso, PushApiError } from './json-api.ts'
import { NO_PUSH_METRICS, type PushMetrics } from './push-metrics.ts'
import type { PushResultBatcher } from './push-results.ts'
import type { PushWriteQueue } from './push-writes.ts'
import { newChallenge } from './tokens.ts'

export interface PushAttestationDeps {
  push: PushRepository
  /** Group commit of new attestations and accepted evidence (answered once committed). */
  writes: PushWriteQueue
  /** Batched verdicts (written after the 202; see push-results.ts for why nothing is lost). */
  results: PushResultBatcher
  options: VerifierOptions
  policies: PolicyStore
  evidence: EvidenceRunner
  notifier: RevocationNotifier
  log: Logger
  now: () => number
  /** Who holds an evaluation (this process). */
  holder: string
  /** Enrolled AKs parsed (shared with the session answers). */
  aks: AkKeys
  metrics?: PushMetrics
}

interface CollectedItem {
  evidence_class?: unknown
  evidence_type?: unknown
  data?: Record<string, unknown>
}

/** What the agent's enrolment asks of every attestation. */
interface AgentChecks {
  akPublic: KeyObject
  akKind: 'rsa' | 'ecc'
  required: number[]
  accepted: { hash: string[]; encryption: string[]; signing: string[] }
  runtime: Awaited<ReturnType<PolicyStore['runtimeFor']>>
  mb: Awaited<ReturnType<PolicyStore['mbFor']>>
  tpmPolicy: ReturnType<typeof parseTpmPolicy>
}

/** Failures of the evidence chain itself (keylime-protocols.md §H.6); every other failure is a policy violation. */
function failureReason(events: readonly FailureEvent[]): 'broken_evidence_chain' | 'policy_violation' {
  const broken = events.some(
    (e) =>
      e.eventId.startsWith('qoute_validation.') ||
      /^measured_boot\.invalid_pcr_/.test(e.eventId) ||
      e.eventId === 'ima.pcr_mismatch',
  )
  return broken ? 'broken_evidence_chain' : 'policy_violation'
}

const parseJson = <T>(text: string | null, fallback: T): T => {
  if (!text) return fallback
  try {
    return JSON.parse(text) as T
  } catch {
    return fallback
  }
}

/** Parsed forms of enrolment columns, cached by their text (so never stale: a changed column is a new key). */
const MAX_CACHED_POLICIES = 20_000

/** A bounded map: the oldest entry goes when it is full. */
function remember<V>(map: Map<string, V>, max: number, key: string, make: () => V): V {
  let v = map.get(key)
  if (v === undefined) {
    v = make()
    if (map.size >= max) map.delete(map.keys().next().value as string)
    map.set(key, v)
  }
  return v
}

/** How long an accepted evaluation stays with its verifier before another may take it over. */
const DEFAULT_EVALUATION_HOLD_MS = 120_000

interface Awaiting {
  att: AttestationRow
  row: PushAgentRow
  requested: RequestedItem[]
}

const MAX_AWAITING = 50_000

export class PushAttestations {
  private readonly running = new Set<Promise<void>>()
  private readonly tpmPolicies = new Map<string, ReturnType<typeof parseTpmPolicy>>()
  private readonly acceptLists = new Map<string, string[]>()
  /**
   * Attestations this process created whose evidence it has not received yet, with the agent as the create read it:
   * when the PATCH comes back here it needs no read (the conditional update still checks, in the database, that the
   * attestation awaits evidence, is the agent's latest and that the agent may attest; if not, the full path says why).
   */
  private readonly awaiting = new Map<string, Awaiting>()
  private readonly metrics: PushMetrics

  constructor(private readonly deps: PushAttestationDeps) {
    this.metrics = deps.metrics ?? NO_PUSH_METRICS
  }

  private get o() {
    return this.deps.options
  }

  /** Resolves when every evaluation this process started has finished (tests, shutdown). */
  async idle(): Promise<void> {
    // an evaluation finishes once its verdict's batch is written
    while (this.running.size > 0) await Promise.allSettled([...this.running])
  }

  /** The agent (enrolment, attestation state, latest attestation: one read), refused unless it may attest. */
  private async pushAgent(agentId: string): Promise<AgentForAttestation> {
    return mayAttest(agentId, await this.deps.push.agentForAttestation(agentId))
  }

  private async checksOf(row: PushAgentRow): Promise<AgentChecks> {
    const akPublic = this.deps.aks.get(row.ak_tpm ?? '')
    const policyText = row.tpm_policy ?? ''
    const tpmPolicy = remember(this.tpmPolicies, MAX_CACHED_POLICIES, policyText, () =>
      parseTpmPolicy(policyText),
    )
    const runtime = await this.deps.policies.runtimeFor(row.ima_policy_id)
    const mb = await this.deps.policies.mbFor(row.mb_policy_id)
    return {
      akPublic,
      akKind: akPublic.asymmetricKeyType === 'ec' ? 'ecc' : 'rsa',
      required: requiredPcrs(tpmPolicy, {
        runtimePolicy: runtime !== null,
        measuredBootPolicy: mb !== null,
        bindsPubkey: false,
      }),
      accepted: {
        hash: this.acceptList(row.accept_tpm_hash_algs),
        encryption: this.acceptList(row.accept_tpm_encryption_algs),
        signing: this.acceptList(row.accept_tpm_signing_algs),
      },
      runtime,
      mb,
      tpmPolicy,
    }
  }

  private acceptList(text: string | null): string[] {
    return remember(this.acceptLists, 1000, text ?? '', () => parseAcceptList(text))
  }

  // ---------------------------------------------------------------------------- create

  async create(
    agentId: string,
    attributes: { evidence_supported?: unknown; system_info?: { boot_time?: unknown } },
  ): Promise<{ location: string; body: unknown }> {
    // the latest attestation summarised: its stored evidence is not needed here
    const row = mayAttest(agentId, await this.deps.push.agentForCreate(agentId))
    const now = this.deps.now()
    const latest = row.latest
    if (latest?.stage === 'evaluating_evidence')
      throw new PushApiError(503, 'the previous attestation is still being verified', {
        code: 'verification_in_progress',
        retryAfterSeconds: 1,
      })
    // spacing from the last evidence: the latest attestation's, or the agent's last verified quote when the latest
    // still awaits evidence (a new create must not skip the interval). Not the later of the two: the verdict (and
    // last_received_quote with it) comes after the 202, from which the agent counts seconds_to_next_attestation
    const received = latest?.evidence_received_at
      ? Date.parse(latest.evidence_received_at)
      : row.last_received_quote === null
        ? 0
        : Number(row.last_received_quote) * 1000
    if (received > 0) {
      const spacing = Math.max(this.o.quoteIntervalMs, this.o.push.verificationTimeoutMs)
      const wait = received + spacing - now
      if (wait > 0)
        throw new PushApiError(429, 'the next attestation is not due yet', {
          code: 'too_early',
          retryAfterSeconds: Math.ceil(wait / 1000),
        })
    }
    const offered = attributes.evidence_supported
    if (!Array.isArray(offered))
      throw new PushApiError(422, 'evidence_supported must be a list', {
        code: 'invalid_resource_data',
        pointer: '/evidence_supported',
      })
    const bootRaw = attributes.system_info?.boot_time
    if (bootRaw !== undefined && (typeof bootRaw !== 'string' || Number.isNaN(Date.parse(bootRaw))))
      throw new PushApiError(422, 'boot_time must be an ISO 8601 time', {
        code: 'invalid_resource_data',
        pointer: '/system_info/boot_time',
      })
    const bootTime = typeof bootRaw === 'string' ? bootRaw : null
    const checks = await this.checksOf(row)
    const previous = checks.runtime !== null ? await this.deps.push.latestPassed(agentId) : undefined
    const challenge = newChallenge()
    const negotiated = negotiateEvidence({
      offered: offered as EvidenceItemOffer[],
      bootTime,
      requiredPcrs: checks.required,
      acceptedHash: checks.accepted.hash,
      acceptedSigning: checks.accepted.signing,
      akKind: checks.akKind,
      needsUefiLog: checks.mb !== null,
      needsImaLog: checks.runtime !== null,
      imaOffset: (count) =>
        chooseStartingOffset(
          previous
            ? {
                bootTime: previous.system_info__boot_time,
                state: parseJson<ImaReplayState | null>(previous.ima_state, null),
              }
            : null,
          bootTime,
          count,
        ),
      challenge,
    })
    if (!negotiated.ok) {
      const [first, ...more] = negotiated.errors
      throw new PushApiError(422, first?.detail ?? 'invalid capabilities', {
        code: 'invalid_resource_data',
        ...(first?.source ? { pointer: first.source.pointer } : {}),
        more,
      })
    }
    const index = latest ? latest.index + 1 : 0
    const requested = negotiated.requested
    const ima = requested.find((r) => r.evidence_type === 'ima_log')
    const row0 = {
      agent_id: agentId,
      index,
      system_info__boot_time: bootTime,
      capabilities_received_at: iso(now),
      challenges_expire_at: iso(now + this.o.push.challengeLifetimeMs),
      evidence_requested: JSON.stringify(requested),
      ima_starting_offset: ima ? (ima.chosen_parameters.starting_offset as number) : null,
    }
    this.awaiting.delete(agentId)
    if (!(await this.deps.writes.insert(row0)))
      throw new PushApiError(409, 'another attestation of this agent was created at the same time', {
        code: 'conflict',
      })
    this.metrics.attestationCreated()
    remember(this.awaiting, MAX_AWAITING, agentId, () => ({ att: newAttestation(row0), row, requested }))
    const location = `/v3.0/agents/${agentId}/attestations/${index}`
    return {
      location,
      body: {
        data: {
          type: 'attestation',
          id: String(index),
          attributes: {
            stage: 'awaiting_evidence',
            evidence_requested: requested.map((r) => ({
              evidence_class: r.evidence_class,
              evidence_type: r.evidence_type,
              chosen_parameters: r.chosen_parameters,
            })),
            system_info: { boot_time: bootTime },
            capabilities_received_at: row0.capabilities_received_at,
            challenges_expire_at: row0.challenges_expire_at,
          },
          links: { self: location },
        },
      },
    }
  }

  // ---------------------------------------------------------------------------- evidence

  async submit(
    agentId: string,
    which: string,
    attributes: { evidence_collected?: unknown },
  ): Promise<{ body: unknown }> {
    const mine = this.awaiting.get(agentId)
    this.awaiting.delete(agentId)
    if (mine && (which === 'latest' || which === String(mine.att.index))) {
      const done = await this.accept(mine, attributes)
      if (done) return done
      // refused by the database: the full path below says why
    }
    const agentRow = await this.pushAgent(agentId)
    const latest = agentRow.latest
    const index = which === 'latest' ? latest?.index : Number(which)
    const att =
      index === undefined || !Number.isSafeInteger(index)
        ? undefined
        : index === latest?.index
          ? latest
          : await this.deps.push.getAttestation(agentId, index)
    if (!att || !latest) throw new PushApiError(404, 'no such attestation', { code: 'not_found' })
    if (att.index !== latest.index)
      throw new PushApiError(403, 'only the latest attestation takes evidence', { code: 'old_attestation' })
    if (att.stage !== 'awaiting_evidence')
      throw new PushApiError(403, 'evidence was already received for this attestation', {
        code: 'evidence_immutable',
      })
    const requested = parseJson<RequestedItem[]>(att.evidence_requested, [])
    const done = await this.accept({ att, row: agentRow, requested }, attributes)
    if (!done)
      throw new PushApiError(403, 'evidence was already received for this attestation', {
        code: 'evidence_immutable',
      })
    return done
  }

  /** Checks and stores the evidence; null when the database refused it (see `submitEvidenceMany`). */
  private async accept(
    { att, row: agentRow, requested }: Awaiting,
    attributes: { evidence_collected?: unknown },
  ): Promise<{ body: unknown } | null> {
    const agentId = agentRow.agent_id
    const now = this.deps.now()
    const receivedAt = iso(now)
    if ((att.challenges_expire_at ?? '') < receivedAt)
      throw new PushApiError(403, 'the challenges of this attestation have expired', {
        code: 'challenges_expired',
      })
    const collected = checkCollected(requested, attributes.evidence_collected)
    const hold = this.o.push.verificationTimeoutMs || DEFAULT_EVALUATION_HOLD_MS
    const collectedText = JSON.stringify(collected)
    const accepted = await this.deps.writes.submit({
      agentId,
      index: att.index,
      evidenceCollected: collectedText,
      receivedAt,
      holder: this.deps.holder,
      expires: now + hold,
    })
    if (!accepted) return null
    // verification starts once the answer is on its way (keylime-api.md §4.2)
    this.metrics.evidenceAccepted(
      att.capabilities_received_at
        ? (this.deps.now() - Date.parse(att.capabilities_received_at)) / 1000
        : null,
    )
    const evaluating: AttestationRow = {
      ...att,
      stage: 'evaluating_evidence',
      evidence_collected: collectedText,
      evidence_received_at: receivedAt,
      evaluation_holder: this.deps.holder,
      evaluation_expires: now + hold,
    }
    this.track(
      new Promise<void>((r) => setImmediate(r)).then(() =>
        this.evaluate(agentId, att.index, { att: evaluating, row: agentRow, requested, collected }),
      ),
    )
    const self = `/v3.0/agents/${agentId}/attestations/${att.index}`
    return {
      body: {
        data: {
          type: 'attestation',
          id: String(att.index),
          attributes: {
            stage: 'evaluating_evidence',
            evidence: requested.map((r, i) => ({
              evidence_class: r.evidence_class,
              evidence_type: r.evidence_type,
              capabilities: r.capabilities,
              chosen_parameters: r.chosen_parameters,
              data: collected[i]?.data ?? {},
            })),
            system_info: { boot_time: att.system_info__boot_time },
            capabilities_received_at: att.capabilities_received_at,
            challenges_expire_at: att.challenges_expire_at,
            evidence_received_at: receivedAt,
          },
          links: { self },
        },
        meta: { seconds_to_next_attestation: Math.ceil(this.o.quoteIntervalMs / 1000) },
      },
    }
  }

  private track(p: Promise<void>): void {
    const done = p.catch((err: unknown) =>
      this.deps.log.error(
        { err: (err as Error).message },
        'push evaluation failed; another verifier retries it',
      ),
    )
    this.running.add(done)
    void done.finally(() => this.running.delete(done))
  }

  /** Evaluations whose verifier died (hold expired): finished here from the stored evidence. */
  async resumeAbandoned(limit = 100): Promise<number> {
    const now = this.deps.now()
    const taken = await this.deps.push.takeAbandonedEvaluations(
      now,
      this.deps.holder,
      now + this.hold(),
      limit,
    )
    return this.resume(taken)
  }

  /**
   * At start: evaluations an earlier process at this address left (killed before their verdicts were written) are
   * finished at once, not once their hold expires (the agents would get 503 until then).
   */
  async resumePredecessors(address: string, limit = 10_000): Promise<number> {
    const now = this.deps.now()
    const taken = await this.deps.push.takeEvaluationsOfPredecessors(
      address,
      this.deps.holder,
      now + this.hold(),
      limit,
    )
    return this.resume(taken)
  }

  private hold(): number {
    return this.o.push.verificationTimeoutMs || DEFAULT_EVALUATION_HOLD_MS
  }

  private resume(taken: AttestationRow[]): number {
    for (const a of taken) {
      this.deps.log.warn(
        { agentId: a.agent_id, index: a.index },
        'push: finishing an evaluation another verifier left',
      )
      this.track(this.evaluate(a.agent_id, a.index))
    }
    return taken.length
  }

  // ---------------------------------------------------------------------------- verification

  /**
   * Verifies held evidence; `known` are the rows the accepting request just read and wrote, and their requested and
   * collected evidence as it parsed them (saves two reads and parsing them again).
   */
  private async evaluate(
    agentId: string,
    index: number,
    known?: {
      att: AttestationRow
      row: PushAgentRow
      requested: RequestedItem[]
      collected: CollectedItem[]
    },
  ): Promise<void> {
    const att = known?.att ?? (await this.deps.push.getAttestation(agentId, index))
    const row = known?.row ?? (await this.deps.push.agentForAttestation(agentId))
    if (!att || !row || att.stage !== 'evaluating_evidence' || att.evaluation_holder !== this.deps.holder)
      return
    const requested = known?.requested ?? parseJson<RequestedItem[]>(att.evidence_requested, [])
    const collected = known?.collected ?? parseJson<CollectedItem[]>(att.evidence_collected, [])
    let events: FailureEvent[]
    let clock: TpmClockInfo | null = null
    let imaState: ImaReplayState | null = null
    let quoteAlgs: { hash: string; sign: string; enc: string } | null = null
    try {
      const checks = await this.checksOf(row)
      // IMA continues from the last passing attestation; without a runtime policy there is nothing to continue
      const previous =
        checks.runtime !== null && (att.ima_starting_offset ?? 0) > 0
          ? await this.deps.push.latestPassed(agentId)
          : undefined
      const input = this.evidenceInput(row, att, checks, requested, collected, previous)
      quoteAlgs = { hash: input.hashAlg, sign: input.signAlg, enc: input.encAlg }
      const out = await this.deps.evidence.run(input)
      events = out.verdict.ok ? [] : out.verdict.events
      clock = out.clock
      imaState = out.imaState
    } catch (err) {
      // an unreachable database leaves the evaluation held: it is retried once the hold expires
      if (databaseUnavailableReason(err) !== null) throw err
      // what cannot be evaluated is never a pass
      events = [failure('internal.verifier.cannot_evaluate', { message: (err as Error).message }, false)]
    }
    await this.complete(row, att, collected, events, clock, imaState, quoteAlgs)
  }

  private evidenceInput(
    row: PushAgentRow,
    att: AttestationRow,
    checks: AgentChecks,
    requested: RequestedItem[],
    collected: CollectedItem[],
    previous: AttestationRow | undefined,
  ): EvidenceInput {
    const quoteAt = requested.findIndex((r) => r.evidence_type === 'tpm_quote')
    const quoteReq = requested[quoteAt]
    const quoteData = collected[quoteAt]?.data ?? {}
    if (!quoteReq) throw new Error('no quote was requested')
    const params = quoteReq.chosen_parameters
    const hashAlg = params.hash_algorithm as QuoteHashAlg
    const parts: QuoteParts = {
      attest: decodeBase64Strict(String(quoteData.message), 'message'),
      signature: decodeBase64Strict(String(quoteData.signature), 'signature'),
      pcrBlob: decodeBase64Strict(String(quoteData.subject_data), 'subject_data'),
    }
    const dataOf = (type: string) => {
      const i = requested.findIndex((r) => r.evidence_type === type)
      return i < 0 ? undefined : (collected[i]?.data ?? {})
    }
    const uefi = dataOf('uefi_log')
    const ima = dataOf('ima_log')
    const offset = att.ima_starting_offset ?? 0
    // IMA continues from the last pass of this boot; from zero it starts over
    const prevState = offset > 0 ? parseImaState(previous?.ima_state ?? null) : null
    const aligned =
      ima && typeof ima.entries === 'string'
        ? alignImaList(ima.entries, offset, prevState, hashAlg as PcrBank)
        : undefined
    if (aligned?.wholeList)
      this.deps.log.debug(
        { agentId: row.agent_id, offset },
        'push: whole IMA list received; verified prefix skipped',
      )
    return {
      akPublic: checks.akPublic,
      quote: parts,
      nonce: new Uint8Array(Buffer.from(String(params.challenge), 'base64')),
      hashAlg,
      encAlg: checks.akKind,
      signAlg: String(params.signature_scheme),
      accepted: checks.accepted,
      tpmPolicy: checks.tpmPolicy,
      previousClock: parseJson<TpmClockInfo | null>(row.tpm_clockinfo, null),
      requiredPcrs: checks.required,
      measuredBoot:
        checks.mb !== null || uefi !== undefined
          ? {
              eventLog: typeof uefi?.entries === 'string' ? Buffer.from(uefi.entries, 'base64') : undefined,
              policy: checks.mb,
              evaluatePolicy: this.o.measuredBootEvaluate === 'always' || row.attestation_count === 0,
              missingLogEvent: failure('measured_boot.missing_event_log', 'agent sent no UEFI log', true),
            }
          : null,
      ima: checks.required.includes(10)
        ? {
            listText: aligned?.listText,
            firstEntry: aligned?.firstEntry ?? offset,
            state: prevState,
            policy: checks.runtime,
            ignoreTomtouErrors: this.o.ignoreTomtouErrors,
            verificationKeys: undefined,
            missingListEvent: failure('pcr_validation.unused_pcr_10', 'agent sent no IMA list', true),
          }
        : null,
    }
  }

  private async complete(
    row: PushAgentRow,
    att: AttestationRow,
    collected: CollectedItem[],
    events: FailureEvent[],
    clock: TpmClockInfo | null,
    imaState: ImaReplayState | null,
    algs: { hash: string; sign: string; enc: string } | null,
  ): Promise<void> {
    const now = this.deps.now()
    const nowS = Math.floor(now / 1000)
    const passed = events.length === 0
    let worst: { event: FailureEvent; level: number } | null = null
    for (const event of events) {
      const level = severityOf(event, this.o.severityRules, this.o.severityLabels)
      if (!worst || level > worst.level) worst = { event, level }
    }
    const recovers =
      passed &&
      ((row.consecutive_attestation_failures ?? 0) === 0 || this.o.push.autoRecoverAttestationFailures)
    const item: CompletedEvaluation = {
      agentId: row.agent_id,
      index: att.index,
      holder: this.deps.holder,
      attestation: {
        evaluation: passed ? 'pass' : 'fail',
        failure_reason: passed ? null : failureReason(events),
        verification_completed_at: iso(now),
        ima_state: passed && imaState ? JSON.stringify(imaState) : null,
        ima_certified_entry_count:
          passed && imaState && att.ima_starting_offset !== null
            ? Math.max(0, imaState.nextEntry - att.ima_starting_offset)
            : null,
        event_id: worst?.event.eventId ?? null,
        event_context: worst ? JSON.stringify(worst.event.context) : null,
        evidence_collected: summariseEvidence(collected),
      },
      agent: {
        push_deadline: now + this.o.push.evidenceTimeoutMs,
        hash_alg: algs?.hash ?? null,
        sign_alg: algs?.sign ?? null,
        enc_alg: algs?.enc ?? null,
        operational_state: passed
          ? recovers
            ? AgentState.GET_QUOTE
            : null
          : worst
            ? AgentState.INVALID_QUOTE
            : null,
        failures: passed ? (recovers ? 'reset' : 'keep') : 'increment',
        last_event_id: worst?.event.eventId ?? null,
        last_event_context: worst ? JSON.stringify(worst.event.context) : null,
        severity_level: worst?.level ?? null,
      },
      state: {
        passed,
        last_received_quote: nowS,
        last_successful_attestation: passed ? nowS : null,
        tpm_clockinfo: passed && clock ? JSON.stringify(clock) : null,
        next_ima_ml_entry: passed && imaState ? imaState.nextEntry : null,
        ima_state: passed && imaState ? JSON.stringify(imaState) : null,
      },
    }
    const receivedAt = att.evidence_received_at ? Date.parse(att.evidence_received_at) : now
    await new Promise<void>((resolve) =>
      this.deps.results.put(item, (outcome) => {
        resolve()
        // taken over by another verifier meanwhile, or the agent was deleted: its verdict is not ours to report
        if (!outcome.written) return
        this.metrics.verdict(
          passed ? 'pass' : 'fail',
          worst?.event.eventId ?? null,
          (this.deps.now() - receivedAt) / 1000,
        )
        if (passed || !outcome.enrolled) return
        this.deps.log.warn(
          { agentId: row.agent_id, index: att.index, eventId: worst?.event.eventId },
          'push attestation failed',
        )
        if (worst && this.o.push.revocationNotifications)
          this.deps.notifier.notify(
            {
              agentId: row.agent_id,
              ip: null,
              port: null,
              tpmPolicy: row.tpm_policy,
              metaData: row.meta_data,
              revocationKey: row.revocation_key,
            },
            'revocation',
            new Date(now),
            {
              eventId: worst.event.eventId,
              severityLabel: this.o.severityLabels[worst.level] ?? 'emergency',
              context: worst.event.context,
            },
          )
      }),
    )
  }

  // ---------------------------------------------------------------------------- reading

  async get(agentId: string, which: string): Promise<unknown> {
    if (!(await this.deps.push.agentForAttestation(agentId)))
      throw new PushApiError(404, `Agent ${agentId} is not enrolled`, { code: 'not_found' })
    const att =
      which === 'latest'
        ? await this.deps.push.latestAttestation(agentId)
        : /^\d+$/.test(which)
          ? await this.deps.push.getAttestation(agentId, Number(which))
          : undefined
    if (!att) throw new PushApiError(404, 'no such attestation', { code: 'not_found' })
    return { data: renderAttestation(att) }
  }

  async list(agentId: string): Promise<unknown> {
    if (!(await this.deps.push.agentForAttestation(agentId)))
      throw new PushApiError(404, `Agent ${agentId} is not enrolled`, { code: 'not_found' })
    return { data: (await this.deps.push.listAttestations(agentId)).map(renderAttestation) }
  }
}

/** The agent as read, refused unless it may attest (404 not enrolled, 403 pull mode or stopped by an operator). */
function mayAttest<R extends PushAgentRow>(agentId: string, row: R | undefined): R {
  if (!row) throw new PushApiError(404, `Agent ${agentId} is not enrolled`, { code: 'not_found' })
  if (row.ip !== null)
    throw new PushApiError(403, 'attestations are not accepted for a pull-mode agent', {
      code: 'attestations_disabled',
    })
  if (row.operational_state === AgentState.TENANT_FAILED || row.operational_state === AgentState.TERMINATED)
    throw new PushApiError(403, 'attestation of this agent was stopped by an operator', {
      code: 'attestations_disabled',
    })
  return row
}

/**
 * The evidence kept after verification: logs replaced by their size, the quote kept; null when there is no log to
 * drop (the stored evidence stays as it is, not written again).
 */
function summariseEvidence(items: CollectedItem[]): string | null {
  if (!items.some((it) => it.evidence_class === 'log' && it.data)) return null
  return JSON.stringify(
    items.map((it) => {
      if (it.evidence_class !== 'log' || !it.data) return it
      const entries = it.data.entries
      const { entries: _dropped, ...rest } = it.data
      return { ...it, data: { ...rest, entries_length: typeof entries === 'string' ? entries.length : 0 } }
    }),
  )
}

/** An attestation as `GET` renders it, `failure_reason` and `verification_completed_at` included. */
export function renderAttestation(a: AttestationRow) {
  const requested = parseJson<RequestedItem[]>(a.evidence_requested, [])
  const collected = parseJson<CollectedItem[]>(a.evidence_collected, [])
  const self = `/v3.0/agents/${a.agent_id}/attestations/${a.index}`
  return {
    type: 'attestation',
    id: String(a.index),
    attributes: {
      stage: a.stage,
      evaluation: a.evaluation,
      failure_reason: a.failure_reason,
      ...(a.event_id ? { failure: { event_id: a.event_id, context: parseJson(a.event_context, null) } } : {}),
      evidence: requested.map((r, i) => ({
        evidence_class: r.evidence_class,
        evidence_type: r.evidence_type,
        capabilities: r.capabilities,
        chosen_parameters: r.chosen_parameters,
        ...(collected[i]?.data ? { data: collected[i]?.data } : {}),
      })),
      system_info: { boot_time: a.system_info__boot_time },
      capabilities_received_at: a.capabilities_received_at,
      challenges_expire_at: a.challenges_expire_at,
      evidence_received_at: a.evidence_received_at,
      verification_completed_at: a.verification_completed_at,
    },
    links: { self },
  }
}

const bad = (detail: string, pointer: string) =>
  new PushApiError(400, detail, { code: 'invalid_resource_data', pointer })

/** The row `insertAttestations` writes, as a whole attestation (every property written out: no spread per create). */
function newAttestation(r: NewAttestationRow): AttestationRow {
  return {
    agent_id: r.agent_id,
    index: r.index,
    stage: 'awaiting_evidence',
    evaluation: 'pending',
    failure_reason: null,
    system_info__boot_time: r.system_info__boot_time,
    capabilities_received_at: r.capabilities_received_at,
    challenges_expire_at: r.challenges_expire_at,
    evidence_received_at: null,
    verification_completed_at: null,
    evidence_requested: r.evidence_requested,
    evidence_collected: null,
    ima_starting_offset: r.ima_starting_offset,
    ima_certified_entry_count: null,
    ima_state: null,
    event_id: null,
    event_context: null,
    evaluation_holder: null,
    evaluation_expires: null,
  }
}

/** The submitted evidence matches what was requested, item by item (400 naming the first mismatch). */
function checkCollected(requested: RequestedItem[], value: unknown): CollectedItem[] {
  if (!Array.isArray(value)) throw bad('evidence_collected must be a list', '/evidence_collected')
  if (value.length !== requested.length)
    throw bad(`evidence_collected must have the ${requested.length} requested items`, '/evidence_collected')
  return requested.map((r, i) => {
    const item = value[i] as CollectedItem
    const at = `/evidence_collected/${i}`
    if (item?.evidence_class !== r.evidence_class || item.evidence_type !== r.evidence_type)
      throw bad(`item ${i} must be ${r.evidence_class}/${r.evidence_type}`, at)
    const data = item.data
    if (typeof data !== 'object' || data === null) throw bad('data is required', `${at}/data`)
    const str = (k: string) => {
      if (typeof data[k] !== 'string' || data[k] === '') throw bad(`${k} is required`, `${at}/data/${k}`)
      return data[k] as string
    }
    if (r.evidence_type === 'tpm_quote') {
      let blob: ReturnType<typeof parsePcrBlob>
      try {
        decodeBase64Strict(str('message'), 'message')
        decodeBase64Strict(str('signature'), 'signature')
        blob = parsePcrBlob(decodeBase64Strict(str('subject_data'), 'subject_data'))
      } catch (err) {
        if (err instanceof QuoteFormatError) throw bad(err.message, `${at}/data`)
        throw err
      }
      const selected = r.chosen_parameters.selected_subjects as Record<string, number[]>
      for (const [bank, pcrs] of Object.entries(selected)) {
        const values = pcrBank(blob, bank as QuoteHashAlg)
        const missing = pcrs.filter((p) => !values?.has(p))
        if (missing.length > 0)
          throw bad(
            `the quote lacks requested PCRs ${missing.join(', ')} of ${bank}`,
            `${at}/data/subject_data`,
          )
      }
    } else if (r.evidence_type === 'uefi_log') {
      try {
        decodeBase64Strict(str('entries'), 'entries')
      } catch {
        throw bad('entries must be base64', `${at}/data/entries`)
      }
    } else if (r.evidence_type === 'ima_log') {
      if (typeof data.entries !== 'string') throw bad('entries must be text', `${at}/data/entries`)
      const count = data.entry_count
      if (count !== undefined && (typeof count !== 'number' || !Number.isSafeInteger(count) || count < 0))
        throw bad('entry_count must be a whole number', `${at}/data/entry_count`)
    }
    return { evidence_class: r.evidence_class, evidence_type: r.evidence_type, data }
  })
}
