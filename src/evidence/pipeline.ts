/**
 * The one evidence pipeline of the verifier (keylime-protocols.md §A.2, §D.3, §G): quote (algorithms, signature,
 * nonce, PCR digest, clock) -> PCR policy and required PCRs -> measured boot (its boot aggregates feed IMA) -> the
 * IMA increment against the quoted PCR 10 -> one Verdict with the clock and IMA state to keep. Pure: no I/O, no
 * clock reads. The IMA replay can run in slices (`step(lines)`), so a caller can give the event loop back between
 * slices of a long list; `evaluateEvidence` runs it in one go.
 */
import { type AttestationInput, evaluateAttestation, type TpmClockInfo } from './attestation.ts'
import {
  type CompiledRuntimePolicy,
  type ImaChunkPlan,
  ImaIncrementVerification,
  type ImaKeyring,
  type ImaReplayState,
  type PcrBank,
} from './ima/index.ts'
import { checkMeasuredBoot, type MbPolicy } from './mb/index.ts'
import { type FailureEvent, failure, PASS, type Verdict } from './verdict.ts'

export interface MeasuredBootEvidence {
  /** The binary boot event log as sent (base64-decoded); undefined when the agent sent none. */
  eventLog: Uint8Array | undefined
  policy: MbPolicy | null
  /** false skips the policy (not the replay), as `measured_boot_evaluate = once` after a first pass. */
  evaluatePolicy: boolean
  /** Reported when a policy is set and no log came (pull and the evidence API name it differently). */
  missingLogEvent: FailureEvent
}

export interface ImaEvidence {
  /**
   * The IMA list text from `firstEntry` on, or its UTF-8 bytes (the evidence pool shares a long list's bytes with its
   * workers); undefined when the agent sent none.
   */
  listText: string | Uint8Array | undefined
  firstEntry: number
  /** Replay state of the previous good attestation; null starts from entry 0. */
  state: ImaReplayState | null
  policy: CompiledRuntimePolicy | null
  ignoreTomtouErrors: boolean
  /** The agent's own keyring (deprecated `ima_sign_verification_keys`); replaces the policy's keys when set. */
  verificationKeys?: ImaKeyring | undefined
  /** Reported when PCR 10 was quoted and no list came. */
  missingListEvent: FailureEvent
  /** Helper threads check chunks of a long list with this plan (the evidence pool makes one). */
  chunks?: ImaChunkPlan | undefined
}

export interface EvidenceInput extends Omit<AttestationInput, 'extensions'> {
  /** null: no measured-boot check (no policy and no log). */
  measuredBoot: MeasuredBootEvidence | null
  /** null: no IMA check (PCR 10 is neither required nor covered by a runtime policy). */
  ima: ImaEvidence | null
}

export interface EvidenceResult {
  verdict: Verdict
  /** Clock info to store, null unless the quote (and, when checked, the clock) verified. */
  clock: TpmClockInfo | null
  /** Quoted PCRs of the signing bank; empty when the quote did not verify. */
  pcrs: ReadonlyMap<number, Uint8Array>
  /** Boot aggregates per bank from the boot log (null: no log parsed). */
  bootAggregates: Record<string, string[]> | null
  /** IMA replay state to keep: reset after an IMA failure, unchanged when IMA did not run. */
  imaState: ImaReplayState | null
}

/** One evaluation; `step` until it returns true, then `result()`. */
export class EvidenceEvaluation {
  readonly #imaState: ImaReplayState | null
  readonly #first: { verdict: Verdict; clock: TpmClockInfo | null; pcrs: ReadonlyMap<number, Uint8Array> }
  readonly #bootAggregates: Record<string, string[]> | null
  #ima: ImaIncrementVerification | null = null
  #imaVerdict: Verdict = PASS
  #imaNextState: ImaReplayState | null

  constructor(input: EvidenceInput) {
    this.#imaState = input.ima?.state ?? null
    this.#imaNextState = this.#imaState
    let aggregates: Record<string, string[]> | null = null
    const mb = input.measuredBoot
    const out = evaluateAttestation(
      input,
      mb
        ? {
            measuredBoot: (pcrs, hashAlg) => {
              if (mb.eventLog === undefined)
                return mb.policy ? { ok: false, events: [mb.missingLogEvent] } : PASS
              const r = checkMeasuredBoot({
                eventLog: mb.eventLog,
                quotedPcrs: pcrs,
                hashAlg,
                policy: mb.policy,
                evaluatePolicy: mb.evaluatePolicy,
              })
              aggregates = r.bootAggregates
              return r.verdict
            },
          }
        : undefined,
    )
    this.#first = out
    this.#bootAggregates = aggregates
    const ima = input.ima
    // IMA needs PCR 10 from a quote whose signature, nonce and (when checked) clock passed
    const quoteTrusted = out.pcrs.size > 0 && (input.checkClock === false || out.clock !== null)
    if (ima === null || !quoteTrusted) return
    const pcr10 = out.pcrs.get(10)
    if (pcr10 === undefined) {
      // a runtime policy with no PCR 10 in the quote is never a pass, even when the caller forgot to require it
      if (!input.requiredPcrs?.includes(10))
        this.#imaVerdict = {
          ok: false,
          events: [
            failure('pcr_validation.missing_pcrs', { context: 'PCRs are missing in quote', data: [10] }),
          ],
        }
      return
    }
    if (ima.listText === undefined) {
      this.#imaVerdict = { ok: false, events: [ima.missingListEvent] }
      return
    }
    this.#ima = new ImaIncrementVerification({
      listText: ima.listText,
      firstEntry: ima.firstEntry,
      state: ima.state,
      quotedPcr10: { hashAlg: input.hashAlg as PcrBank, value: pcr10 },
      policy: ima.policy,
      ignoreTomtouErrors: ima.ignoreTomtouErrors,
      ...(aggregates ? { bootAggregates: aggregates } : {}),
      ...(ima.verificationKeys ? { verificationKeys: ima.verificationKeys } : {}),
      ...(ima.chunks ? { chunks: ima.chunks } : {}),
    })
  }

  /** Verifies up to `lines` more IMA lines; true when nothing is left. */
  step(lines: number): boolean {
    if (this.#ima === null) return true
    if (!this.#ima.step(lines)) return false
    const r = this.#ima.finish()
    this.#imaVerdict = r.verdict
    this.#imaNextState = r.state
    this.#ima = null
    return true
  }

  result(): EvidenceResult {
    if (this.#ima !== null) throw new Error('EvidenceEvaluation.result() before the last step')
    const first = this.#first.verdict
    const events: FailureEvent[] = [
      ...(first.ok ? [] : first.events),
      ...(this.#imaVerdict.ok ? [] : this.#imaVerdict.events),
    ]
    const verdict: Verdict = events.length === 0 ? PASS : { ok: false, events }
    return {
      verdict,
      clock: verdict.ok ? this.#first.clock : null,
      pcrs: this.#first.pcrs,
      bootAggregates: this.#bootAggregates,
      imaState: this.#imaNextState,
    }
  }
}

/** The whole pipeline in one call (tests, tools). */
export function evaluateEvidence(input: EvidenceInput): EvidenceResult {
  const e = new EvidenceEvaluation(input)
  while (!e.step(Number.MAX_SAFE_INTEGER));
  return e.result()
}
