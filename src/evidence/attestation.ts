/**
 * The quote stage of the evidence pipeline (keylime-protocols.md §A.2, §D.3): algorithms, signature/nonce/PCR digest,
 * TPM clock, static PCR policy + PCR 16 binding, then the measured-boot and IMA checks plugged in through
 * `AttestationExtensions`. Pure: no I/O, no clock reads. The verifier calls it through `pipeline.ts`.
 */
import type { KeyObject } from 'node:crypto'
import {
  checkClock,
  checkPcrPolicy,
  isQuoteHashAlg,
  type QuoteHashAlg,
  type QuoteParts,
  type TpmClockInfo,
  type TpmPolicy,
  verifyQuote,
} from './quote/index.ts'
import { type FailureEvent, failure, PASS, type Verdict } from './verdict.ts'

export type { QuoteHashAlg, TpmClockInfo, TpmPolicy }

export interface AcceptedAlgorithms {
  hash: readonly string[]
  encryption: readonly string[]
  signing: readonly string[]
}

/** Measured-boot then IMA checks (closures over the agent's evidence), given the signing bank's quoted PCRs. */
export interface AttestationExtensions {
  ima?: (quotedPcrs: ReadonlyMap<number, Uint8Array>, hashAlg: QuoteHashAlg) => Verdict
  measuredBoot?: (quotedPcrs: ReadonlyMap<number, Uint8Array>, hashAlg: QuoteHashAlg) => Verdict
}

export interface AttestationInput {
  /** Parsed once per agent and cached by the caller (`akKeyObject`). */
  akPublic: KeyObject
  /** The quote string (pull) or its three decoded parts (push: message, signature, subject_data). */
  quote: string | QuoteParts
  /** Pull: the nonce string sent to the agent, whose ASCII bytes must be the quote's extraData. Push: the raw challenge. */
  nonce: string | Uint8Array
  hashAlg: string
  encAlg: string
  signAlg: string
  accepted: AcceptedAlgorithms
  tpmPolicy: TpmPolicy | null
  /** The agent's payload pubkey PEM text bound into PCR 16 (pull mode); undefined skips the PCR 16 check. */
  boundPubkeyPem?: string | undefined
  /** Clock info stored from the previous good attestation; null = none stored yet. */
  previousClock: TpmClockInfo | null
  /** PCRs the quote must cover (`requiredPcrs` of every enrolled check); absent ones fail `missing_pcrs`. */
  requiredPcrs?: readonly number[]
  /** false skips the clock check (identity / evidence APIs). Default true. */
  checkClock?: boolean
  extensions?: AttestationExtensions | undefined
}

export interface AttestationOutcome {
  verdict: Verdict
  /** Clock info to store after a passing attestation (§A.2 step 6), null when the quote did not verify. */
  clock: TpmClockInfo | null
  /** Quoted PCR values of the signing hash bank (empty when the quote could not be verified). */
  pcrs: ReadonlyMap<number, Uint8Array>
}

const EMPTY_PCRS: ReadonlyMap<number, Uint8Array> = new Map()

function normalizeEncAlg(alg: string): string {
  return alg === 'rsa' ? 'rsa2048' : alg === 'ecc' ? 'ecc256' : alg
}

/** §D.3 algorithm checks of the quote response; each failure is irrecoverable. */
export function checkAlgorithms(
  hashAlg: string,
  encAlg: string,
  signAlg: string,
  accepted: AcceptedAlgorithms,
): Verdict {
  const events: FailureEvent[] = []
  if (!isQuoteHashAlg(hashAlg) || !accepted.hash.includes(hashAlg))
    events.push(failure('qoute_validation.hash_algorithm', `hash_alg ${hashAlg} is not accepted`, false))
  if (!accepted.encryption.map(normalizeEncAlg).includes(normalizeEncAlg(encAlg)))
    events.push(failure('qoute_validation.encryption_algorithm', `enc_alg ${encAlg} is not accepted`, false))
  if (!accepted.signing.includes(signAlg))
    events.push(failure('qoute_validation.signing_algorithm', `sign_alg ${signAlg} is not accepted`, false))
  return events.length === 0 ? PASS : { ok: false, events }
}

/** The whole pull-mode verdict for one quote response (§D.3 + §A.2). */
export function evaluateAttestation(
  input: Omit<AttestationInput, 'extensions'>,
  extensions?: AttestationExtensions,
): AttestationOutcome {
  const algs = checkAlgorithms(input.hashAlg, input.encAlg, input.signAlg, input.accepted)
  if (!algs.ok) return { verdict: algs, clock: null, pcrs: EMPTY_PCRS }
  const hashAlg = input.hashAlg as QuoteHashAlg
  const q = verifyQuote({ akPublic: input.akPublic, quote: input.quote, nonce: input.nonce, hashAlg })
  if (!q.verdict.ok || !q.clockInfo || !q.pcrs) return { verdict: q.verdict, clock: null, pcrs: EMPTY_PCRS }
  let clock: TpmClockInfo | null = null
  if (input.checkClock !== false) {
    const c = checkClock(input.previousClock, q.clockInfo)
    if (!c.verdict.ok) return { verdict: c.verdict, clock: null, pcrs: q.pcrs }
    clock = c.clockInfo
  }
  const events: FailureEvent[] = []
  const pcrVerdict = checkPcrPolicy({
    pcrs: q.pcrs,
    tpmPolicy: input.tpmPolicy,
    hashAlg,
    ...(input.boundPubkeyPem === undefined ? {} : { boundPubkeyPem: input.boundPubkeyPem }),
    ...(input.requiredPcrs === undefined ? {} : { required: input.requiredPcrs }),
  })
  if (!pcrVerdict.ok) events.push(...pcrVerdict.events)
  // measured boot first: its boot aggregates feed the IMA `boot_aggregate` entry
  const ext = extensions ?? (input as AttestationInput).extensions
  if (ext?.measuredBoot) {
    const v = ext.measuredBoot(q.pcrs, hashAlg)
    if (!v.ok) events.push(...v.events)
  }
  if (ext?.ima) {
    if (q.pcrs.has(10)) {
      const v = ext.ima(q.pcrs, hashAlg)
      if (!v.ok) events.push(...v.events)
    } else if (!input.requiredPcrs?.includes(10)) {
      // a runtime policy with no PCR 10 in the quote is never a pass, even when the caller forgot to require it
      events.push(
        failure('pcr_validation.missing_pcrs', { context: 'PCRs are missing in quote', data: [10] }),
      )
    }
  }
  return { verdict: events.length === 0 ? PASS : { ok: false, events }, clock, pcrs: q.pcrs }
}
