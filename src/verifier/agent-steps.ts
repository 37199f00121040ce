/**
 * One step of the pull loop for one agent (keylime-protocols.md §D.1-D.4): ask for a quote and run the evidence
 * pipeline on it, or deliver V; transport errors become outcomes (retry, renegotiate, refuse). Returns the outcome
 * for the state machine, or null when the agent left the loop meanwhile (its generation changed).
 */
import { constants, publicEncrypt } from 'node:crypto'
import { AgentClientError } from '../api/agent/client.ts'
import type { IntegrityQuoteResults } from '../api/agent/schemas.ts'
import { AGENT_API_VERSIONS, compareVersions, negotiateVersion } from '../api/versions.ts'
import { KeylimeError } from '../common/errors.ts'
import type { Logger } from '../common/log.ts'
import type { EvidenceInput, EvidenceResult } from '../evidence/pipeline.ts'
import { maskOfPcrs, requiredPcrs } from '../evidence/quote/index.ts'
import { type FailureEvent, failure } from '../evidence/verdict.ts'
import type { AgentConnections } from './agent-connections.ts'
import type { AgentRuntime } from './agent-runtime.ts'
import type { DbOutage } from './db-outage.ts'
import type { EvidenceRunner } from './evidence-runner.ts'
import { randomNonce } from './nonce.ts'
import type { VerifierOptions } from './options.ts'
import type { PolicyStore } from './policy-store.ts'
import type { StepOutcome } from './state-machine.ts'

export interface AgentStepsDeps {
  options: VerifierOptions
  connections: AgentConnections
  evidence: EvidenceRunner
  policies: PolicyStore
  log: Logger
  outage: DbOutage
  now: () => number
}

export class AgentSteps {
  private readonly now: () => number

  constructor(private readonly deps: AgentStepsDeps) {
    this.now = deps.now
  }

  /** The quote step; null when the agent left the loop meanwhile. */
  async quote(a: AgentRuntime, gen: number): Promise<StepOutcome | null> {
    if (a.unusable !== null) {
      this.deps.log.error(
        { agentId: a.id, field: a.unusable.field, err: a.unusable.message },
        'stored agent data is unusable: cannot evaluate (not revoked)',
      )
      return { kind: 'cannot_evaluate', context: { ...a.unusable } }
    }
    if (a.policies === null) {
      for (let attempt = 0; a.policies === null; attempt++) {
        try {
          a.policies = {
            runtime: await this.deps.policies.runtimeFor(a.imaPolicyId),
            mb: await this.deps.policies.mbFor(a.mbPolicyId),
          }
        } catch (err) {
          // a policy that is gone or does not parse is the verifier's fault; a database error passes: wait for it
          if (err instanceof KeylimeError) {
            this.deps.log.error({ agentId: a.id, err: err.message }, 'stored policy is unusable')
            return { kind: 'cannot_evaluate', context: { field: 'policy', message: err.message } }
          }
          this.deps.outage.failed(err, 'loading policies')
          await new Promise((r) => setTimeout(r, Math.min(5000, 100 * 2 ** attempt)))
          if (gen !== a.generation) return null
        }
      }
      if (gen !== a.generation) return null
      a.requiredPcrs = requiredPcrs(a.tpmPolicy, {
        runtimePolicy: a.policies.runtime !== null,
        measuredBootPolicy: a.policies.mb !== null,
        bindsPubkey: true,
      })
      a.pcrMask = maskOfPcrs(a.requiredPcrs)
    }
    const nonce = randomNonce()
    let res: IntegrityQuoteResults
    try {
      res = await this.client(a).integrityQuote({
        nonce,
        mask: a.pcrMask,
        partial: !(a.sendPubkey || a.pubkey === null),
        imaMlEntry: a.imaState?.nextEntry ?? 0,
      })
    } catch (err) {
      return gen === a.generation ? this.requestFailed(a, gen, err) : null
    }
    if (gen !== a.generation) return null
    const now = this.now()
    const receivedPubkey = res.pubkey
    const pubkey = receivedPubkey ?? a.pubkey
    if (pubkey === null)
      return this.failed(a, now, [
        failure('qoute_validation.no_pubkey', 'agent did not send its public key and none is cached', false),
      ])
    const out = await this.deps.evidence.run(this.evidenceInput(a, res, nonce, pubkey))
    if (gen !== a.generation) return null
    // an IMA failure resets its state (next round replays from entry 0); kept across restarts
    a.imaState = out.imaState
    if (!out.verdict.ok) return this.failed(a, now, out.verdict.events)
    this.passed(a, res, out, receivedPubkey, now)
    return { kind: 'quote_passed', deliverV: a.provideV && a.v !== null && a.v !== '' }
  }

  private evidenceInput(
    a: AgentRuntime,
    res: IntegrityQuoteResults,
    nonce: string,
    pubkey: string,
  ): EvidenceInput {
    const policies = a.policies ?? { runtime: null, mb: null }
    const o = this.deps.options
    return {
      akPublic: a.akPublic,
      quote: res.quote,
      nonce,
      hashAlg: res.hash_alg,
      encAlg: res.enc_alg,
      signAlg: res.sign_alg,
      accepted: a.accepted,
      tpmPolicy: a.tpmPolicy,
      boundPubkeyPem: pubkey,
      previousClock: a.clock,
      requiredPcrs: a.requiredPcrs,
      measuredBoot:
        policies.mb !== null || res.mb_measurement_list !== undefined
          ? {
              eventLog:
                res.mb_measurement_list === undefined
                  ? undefined
                  : Buffer.from(res.mb_measurement_list, 'base64'),
              policy: policies.mb,
              evaluatePolicy: o.measuredBootEvaluate === 'always' || a.attestationCount === 0,
              missingLogEvent: failure(
                'measured_boot.missing_event_log',
                'agent sent no boot event log',
                true,
              ),
            }
          : null,
      ima: a.requiredPcrs.includes(10)
        ? {
            listText: res.ima_measurement_list,
            firstEntry: res.ima_measurement_list_entry ?? 0,
            state: a.imaState,
            policy: policies.runtime,
            ignoreTomtouErrors: o.ignoreTomtouErrors,
            verificationKeys: a.verificationKeys ?? undefined,
            missingListEvent: failure(
              'pcr_validation.unused_pcr_10',
              'PCR 10 quoted but no IMA list sent',
              true,
            ),
          }
        : null,
    }
  }

  /** Bookkeeping of a good attestation; its row is written by the batch (`persist` batched). */
  private passed(
    a: AgentRuntime,
    res: IntegrityQuoteResults,
    out: EvidenceResult,
    receivedPubkey: string | undefined,
    now: number,
  ): void {
    a.sendPubkey = false
    a.attestationCount++
    a.clock = out.clock
    if (receivedPubkey !== undefined && receivedPubkey !== a.pubkey) {
      a.pubkey = receivedPubkey
      a.encryptedV = null
      a.provideV = true
      a.pubkeyChanged = true
    }
    a.lastSuccess = {
      agentId: a.id,
      leaseEpoch: a.leaseEpoch,
      attestationCount: a.attestationCount,
      lastReceivedQuote: Math.floor(now / 1000),
      lastSuccessfulAttestation: Math.floor(now / 1000),
      tpmClockinfo: out.clock ? JSON.stringify(out.clock) : null,
      operationalState: a.state,
      publicKey: a.pubkeyChanged ? a.pubkey : null,
      imaState: out.imaState ? JSON.stringify(out.imaState) : null,
      nextImaEntry: out.imaState?.nextEntry ?? 0,
      hashAlg: res.hash_alg,
      encAlg: res.enc_alg,
      signAlg: res.sign_alg,
    }
    a.pubkeyChanged = false
  }

  private failed(a: AgentRuntime, now: number, events: FailureEvent[]): StepOutcome {
    a.lastReceivedQuote = Math.floor(now / 1000)
    // the specific reason (e.g. which quote check failed) goes into the log line, not only the event id
    this.deps.log.warn(
      { agentId: a.id, events: events.map((e) => ({ id: e.eventId, ...e.context })) },
      'attestation failed: INVALID_QUOTE',
    )
    return { kind: 'quote_failed', events }
  }

  async provideV(a: AgentRuntime, gen: number): Promise<StepOutcome | null> {
    if (a.v === null || a.pubkey === null) {
      a.provideV = false
      return { kind: 'v_not_needed' }
    }
    if (!a.encryptedV || a.encryptedV.forPubkey !== a.pubkey) {
      const encrypted = publicEncrypt(
        { key: a.pubkey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' },
        Buffer.from(a.v, 'base64'),
      )
      a.encryptedV = { forPubkey: a.pubkey, b64: encrypted.toString('base64') }
    }
    try {
      await this.client(a).postVkey(a.encryptedV.b64)
    } catch (err) {
      return gen === a.generation ? this.requestFailed(a, gen, err) : null
    }
    if (gen !== a.generation) return null
    a.provideV = false
    return { kind: 'v_delivered' }
  }

  private client(a: AgentRuntime) {
    return this.deps.connections.client({
      agentId: a.id,
      ip: a.ip,
      port: a.port,
      apiVersion: a.apiVersion,
      mtlsCert: a.mtlsCert,
    })
  }

  /** §D.2: transient errors retry, "API version not supported" renegotiates, anything else fails the agent. */
  private async requestFailed(a: AgentRuntime, gen: number, err: unknown): Promise<StepOutcome | null> {
    const e = err instanceof AgentClientError ? err : null
    if (e?.isTooLarge) {
      // an agent that floods the verifier is failed like any other bad evidence, never retried into memory trouble
      return this.failed(a, this.now(), [failure('qoute_validation.response_too_large', e.message, true)])
    }
    if (e?.isVersionNotSupported) {
      const chosen = await this.renegotiate(a)
      if (gen !== a.generation) return null
      if (chosen !== null) {
        a.apiVersion = chosen
        return { kind: 'renegotiated' }
      }
    }
    const status = e?.httpStatus
    if (status === undefined || status === 408 || status === 500 || status === 599) {
      if (a.numRetries >= this.deps.options.maxRetries)
        this.deps.log.warn(
          { agentId: a.id, retries: a.numRetries },
          'agent unreachable after retries: FAILED',
        )
      return { kind: 'unreachable' }
    }
    this.deps.log.warn({ agentId: a.id, status }, 'agent answered an unexpected status: FAILED')
    return { kind: 'refused', httpStatus: status }
  }

  /** The version both sides speak, or null (logged) when there is none or asking failed. */
  private async renegotiate(a: AgentRuntime): Promise<string | null> {
    try {
      const v = await this.client(a).getVersion()
      const remote =
        v.supported_versions && v.supported_versions.length > 0 ? v.supported_versions : [v.supported_version]
      const chosen = negotiateVersion(remote, AGENT_API_VERSIONS)
      if (chosen === null) {
        this.deps.log.warn({ agentId: a.id, remote }, 'no agent API version in common')
        return null
      }
      if (a.attestationCount > 0 && compareVersions(chosen, a.apiVersion) < 0) {
        this.deps.log.warn(
          { agentId: a.id, from: a.apiVersion, to: chosen },
          'refusing an API version downgrade',
        )
        return null
      }
      return chosen
    } catch (err) {
      this.deps.log.warn(
        { agentId: a.id, err: (err as Error).message },
        'agent API version renegotiation failed',
      )
      return null
    }
  }
}
