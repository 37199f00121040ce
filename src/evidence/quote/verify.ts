/**
 * Quote verification (spec A.2 steps 1-6), pure: signature by the AK over H(TPMS_ATTEST), expected hash algorithm,
 * attestation type, nonce in extraData and the PCR digest recomputed from the PCR blob. Every failure is the
 * irrecoverable event `qoute_validation.quote_validation` (upstream's spelling); malformed evidence is a failure too,
 * never an exception, so one bad agent cannot break a verifier loop.
 */
import { constants, createHash, getHashes, type KeyObject, verify } from 'node:crypto'
import { KeylimeError } from '../../common/errors.ts'
import { publicAreaToKeyObject, readTpm2bPublic } from '../../crypto/tpm-public.ts'
import {
  decodeTpmsAttest,
  decodeTpmtSignature,
  TpmAlg,
  TpmFormatError,
  TpmSt,
  type TpmsAttest,
  type TpmsClockInfo,
} from '../../tpm/index.ts'
import { failure, PASS, type Verdict } from '../verdict.ts'
import { QuoteFormatError } from './errors.ts'
import { HASH_ALG_IDS, hashAlgName, isQuoteHashAlg, type QuoteHashAlg } from './hash-alg.ts'
import { type PcrBlob, parsePcrBlob, pcrBank } from './pcr-blob.ts'
import { parseQuoteString, type QuoteParts } from './quote-string.ts'

export const QUOTE_VALIDATION_EVENT = 'qoute_validation.quote_validation'

export interface VerifyQuoteInput {
  /** The AK: a KeyObject parsed once and cached by the caller (hot path), or its TPM2B_PUBLIC bytes. */
  akPublic: KeyObject | Uint8Array
  /** The quote string (`r...:...:...`) or its three decoded parts (push mode). */
  quote: string | QuoteParts
  /**
   * Expected qualifying data. A string is compared as its ASCII bytes (pull mode nonce); bytes are compared raw
   * (push mode challenge).
   */
  nonce: string | Uint8Array
  /** With a string nonce, also accept its base64 decoding (push-mode verifier behaviour). */
  acceptBase64Nonce?: boolean
  /** The agent's `hash_alg`, e.g. 'sha256'. */
  hashAlg: string
}

/**
 * TPMS_CLOCK_INFO in the JSON shape upstream stores per agent (`tpm_clockinfo`): clock as a number of ms (exact
 * below 2^53, i.e. for 285,000 years of TPM uptime), safe as 0/1.
 */
export interface TpmClockInfo {
  clock: number
  resetCount: number
  restartCount: number
  safe: number
}

export function clockInfoOf(attest: { clockInfo: TpmsClockInfo }): TpmClockInfo {
  const c = attest.clockInfo
  return {
    clock: Number(c.clock),
    resetCount: c.resetCount,
    restartCount: c.restartCount,
    safe: c.safe ? 1 : 0,
  }
}

export interface VerifyQuoteResult {
  verdict: Verdict
  /** The decoded attestation (src/tpm's TpmsAttest), when the quote decoded. */
  attest?: TpmsAttest
  /** Its clock info in the stored JSON shape, for checkClock. */
  clockInfo?: TpmClockInfo
  /** PCR values of the signature's hash bank (index -> value), when the quote verified. */
  pcrs?: Map<number, Uint8Array>
  /** All banks of the PCR blob, when the quote verified. */
  pcrBlob?: PcrBlob
}

interface AkInfo {
  kind: 'rsa' | 'ec'
  /** EC coordinate size in bytes. */
  coordinateSize: number
}
const AK_INFO = new WeakMap<KeyObject, AkInfo>()
const EC_SIZES: Record<string, number> = { prime256v1: 32, secp384r1: 48, secp521r1: 66 }

function akInfo(key: KeyObject): AkInfo {
  let info = AK_INFO.get(key)
  if (info === undefined) {
    if (key.type !== 'public' && key.type !== 'private')
      throw new QuoteFormatError('AK must be an asymmetric key')
    const type = key.asymmetricKeyType
    if (type === 'rsa') info = { kind: 'rsa', coordinateSize: 0 }
    else if (type === 'ec') {
      const size = EC_SIZES[key.asymmetricKeyDetails?.namedCurve ?? '']
      if (size === undefined) throw new QuoteFormatError('AK curve is not P-256, P-384 or P-521')
      info = { kind: 'ec', coordinateSize: size }
    } else throw new QuoteFormatError(`AK key type ${String(type)} is not RSA or EC`)
    AK_INFO.set(key, info)
  }
  return info
}

const NODE_HASH: Record<QuoteHashAlg, string> = {
  sha1: 'sha1',
  sha256: 'sha256',
  sha384: 'sha384',
  sha512: 'sha512',
  sm3_256: 'sm3',
}
let availableHashes: Set<string> | undefined
function nodeHash(alg: QuoteHashAlg): string | undefined {
  availableHashes ??= new Set(getHashes())
  const name = NODE_HASH[alg]
  return availableHashes.has(name) ? name : undefined
}

/** An AK for verification: accepts an already-parsed KeyObject or a TPM2B_PUBLIC. */
export function akKeyObject(akPublic: KeyObject | Uint8Array): KeyObject {
  if (akPublic instanceof Uint8Array) {
    const area = readTpm2bPublic(akPublic)
    const p = area.parameters
    const scheme = p.kind === 'rsa' || p.kind === 'ecc' ? p.scheme.scheme : TpmAlg.Null
    if (p.kind === 'rsa' && scheme !== TpmAlg.Null && scheme !== TpmAlg.RsaSsa) {
      throw new QuoteFormatError('RSA AK is not an RSASSA key')
    }
    if (p.kind === 'ecc' && scheme !== TpmAlg.Null && scheme !== TpmAlg.Ecdsa) {
      throw new QuoteFormatError('ECC AK is not an ECDSA key')
    }
    return publicAreaToKeyObject(area)
  }
  return akPublic
}

function stripLeadingZeros(b: Uint8Array): Uint8Array {
  let i = 0
  while (i < b.length && b[i] === 0) i++
  return b.subarray(i)
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.compare(a, b) === 0
}

/** node:crypto errors raised by hostile key or signature bytes (not programming errors). */
function isCryptoError(e: unknown): e is Error {
  const code = e instanceof Error && 'code' in e ? e.code : undefined
  return typeof code === 'string' && (code.startsWith('ERR_OSSL') || code.startsWith('ERR_CRYPTO'))
}

/**
 * Why a quote failed. Every reason keeps upstream's one event id (`qoute_validation.quote_validation`) for
 * compatibility; the reason goes into the event's context, which the verifier logs and shows as last_event_context.
 */
export type QuoteFailureReason =
  | 'hash_algorithm'
  | 'signature'
  | 'not_a_quote'
  | 'nonce'
  | 'pcr_digest'
  | 'malformed'
  | 'clock'

function fail(reason: QuoteFailureReason, message: string, extra?: Record<string, unknown>): Verdict {
  return { ok: false, events: [failure(QUOTE_VALIDATION_EVENT, { reason, message, ...extra }, false)] }
}

/** A signature ready for node:crypto's verify, or why it cannot verify at all. */
type SignatureJob = { key: VerifyKeyInput; signature: Uint8Array } | string
type VerifyKeyInput = { key: KeyObject; padding: number } | { key: KeyObject; dsaEncoding: 'ieee-p1363' }

function signatureJob(ak: KeyObject, parts: QuoteParts, expected: QuoteHashAlg): SignatureJob {
  const sig = decodeTpmtSignature(parts.signature)
  const info = akInfo(ak)
  if (info.kind === 'rsa' && sig.sigAlg !== TpmAlg.RsaSsa)
    return 'RSA attestation key only accepts RSASSA quotes'
  if (info.kind === 'ec' && sig.sigAlg !== TpmAlg.Ecdsa)
    return 'ECC attestation key only accepts ECDSA quotes'
  if (!('hash' in sig) || sig.hash !== HASH_ALG_IDS[expected]) {
    const got = 'hash' in sig ? (hashAlgName(sig.hash) ?? `0x${sig.hash.toString(16)}`) : 'none'
    return `quote signed with hash ${got}, expected ${expected}`
  }
  if ('sig' in sig) return { key: { key: ak, padding: constants.RSA_PKCS1_PADDING }, signature: sig.sig }
  if ('r' in sig) {
    const size = info.coordinateSize
    const r = stripLeadingZeros(sig.r)
    const s = stripLeadingZeros(sig.s)
    if (r.length > size || s.length > size) return 'ECDSA signature component longer than the curve order'
    const raw = new Uint8Array(2 * size)
    raw.set(r, size - r.length)
    raw.set(s, 2 * size - s.length)
    return { key: { key: ak, dsaEncoding: 'ieee-p1363' }, signature: raw }
  }
  return 'unsupported signature structure'
}

/**
 * Quote parts whose signature `verifyQuoteSignatureAsync` found good, with the key, hash and byte arrays it checked:
 * `verifyQuote` skips only that one computation, and only for exactly those (same objects).
 */
const VERIFIED = new WeakMap<
  QuoteParts,
  { ak: KeyObject; hash: string; attest: Uint8Array; signature: Uint8Array }
>()

function verifiedAhead(ak: KeyObject, parts: QuoteParts, hash: string): boolean {
  const v = VERIFIED.get(parts)
  return (
    v !== undefined &&
    v.ak === ak &&
    v.hash === hash &&
    v.attest === parts.attest &&
    v.signature === parts.signature
  )
}

function checkSignature(
  ak: KeyObject,
  parts: QuoteParts,
  hash: string,
  expected: QuoteHashAlg,
): string | null {
  const job = signatureJob(ak, parts, expected)
  if (typeof job === 'string') return job
  const ok = verifiedAhead(ak, parts, hash) || verify(hash, parts.attest, job.key, job.signature)
  return ok ? null : 'quote signature does not verify with the attestation key'
}

/**
 * Verifies the quote's signature on libuv's thread pool (the signature is most of a PCR-only quote's CPU), so a
 * verifier evaluating evidence on its event loop keeps that thread for I/O. A good signature is remembered for
 * exactly these parts, key and hash, and `verifyQuote` then runs every other check as usual; anything else
 * (a bad or malformed signature, an unusable key) remembers nothing and `verifyQuote` finds and reports it itself.
 * Never rejects.
 */
export function verifyQuoteSignatureAsync(ak: KeyObject, parts: QuoteParts, hashAlg: string): Promise<void> {
  if (!isQuoteHashAlg(hashAlg)) return Promise.resolve()
  const hash = nodeHash(hashAlg)
  if (hash === undefined) return Promise.resolve()
  let job: SignatureJob
  try {
    job = signatureJob(ak, parts, hashAlg)
  } catch {
    return Promise.resolve()
  }
  if (typeof job === 'string') return Promise.resolve()
  const { attest, signature } = parts
  return new Promise((resolve) => {
    try {
      verify(hash, attest, job.key, job.signature, (err, ok) => {
        if (err === null && ok) VERIFIED.set(parts, { ak, hash, attest, signature })
        resolve()
      })
    } catch {
      resolve()
    }
  })
}

function nonceMatches(extraData: Uint8Array, nonce: string | Uint8Array, acceptBase64: boolean): boolean {
  if (nonce instanceof Uint8Array) return equalBytes(extraData, nonce)
  if (equalBytes(extraData, Buffer.from(nonce, 'utf8'))) return true
  return acceptBase64 && nonce.length > 0 && equalBytes(extraData, Buffer.from(nonce, 'base64'))
}

export function verifyQuote(input: VerifyQuoteInput): VerifyQuoteResult {
  const { hashAlg } = input
  if (!isQuoteHashAlg(hashAlg))
    return { verdict: fail('hash_algorithm', `unsupported hash algorithm ${String(hashAlg)}`) }
  const hash = nodeHash(hashAlg)
  if (hash === undefined)
    return { verdict: fail('hash_algorithm', `hash algorithm ${hashAlg} is not available`) }
  let attest: TpmsAttest | undefined
  try {
    const ak = akKeyObject(input.akPublic)
    const parts = typeof input.quote === 'string' ? parseQuoteString(input.quote) : input.quote
    const sigProblem = checkSignature(ak, parts, hash, hashAlg)
    if (sigProblem !== null) return { verdict: fail('signature', sigProblem) }
    attest = decodeTpmsAttest(parts.attest)
    const clockInfo = clockInfoOf(attest)
    if (attest.type !== TpmSt.AttestQuote || attest.attested.kind !== 'quote') {
      return {
        verdict: fail('not_a_quote', `attestation type 0x${attest.type.toString(16)} is not a quote`),
        attest,
        clockInfo,
      }
    }
    const quoted = attest.attested
    if (!nonceMatches(attest.extraData, input.nonce, input.acceptBase64Nonce === true)) {
      return {
        verdict: fail('nonce', 'quote nonce (extraData) does not match the expected nonce'),
        attest,
        clockInfo,
      }
    }
    const pcrBlob = parsePcrBlob(parts.pcrBlob)
    const pcrs = pcrBank(pcrBlob, hashAlg) ?? new Map<number, Uint8Array>()
    // The TPM digests every selected PCR of every bank in selection order; for Keylime's single-bank quotes this is
    // exactly the signature bank's values (spec A.2 step 5).
    const h = createHash(hash)
    for (const value of pcrBlob.ordered ?? []) h.update(value)
    if (!equalBytes(h.digest(), quoted.pcrDigest)) {
      return {
        verdict: fail('pcr_digest', 'PCR values do not match the quoted PCR digest'),
        attest,
        clockInfo,
      }
    }
    return { verdict: PASS, attest, clockInfo, pcrs, pcrBlob }
  } catch (e) {
    if (e instanceof KeylimeError || e instanceof TpmFormatError || isCryptoError(e)) {
      return {
        verdict: fail('malformed', `malformed quote: ${e.message}`),
        ...(attest === undefined ? {} : { attest }),
      }
    }
    throw e
  }
}

export interface ClockCheckResult {
  verdict: Verdict
  /** The clock info to keep for the next check (upstream keeps the old one after a reboot + restart). */
  clockInfo: TpmClockInfo
}

function badClock(kept: TpmClockInfo, message: string): ClockCheckResult {
  return { verdict: fail('clock', message, { data: message }), clockInfo: kept }
}

/**
 * TPM clock sanity between consecutive quotes of one agent (spec A.2 step 6): reset and restart counters never
 * decrease, `safe` is set, and unless both counters moved the clock strictly advances. `prev` null means no stored
 * state yet and is treated as all zeros, as upstream does.
 */
export function checkClock(prev: TpmClockInfo | null, next: TpmClockInfo): ClockCheckResult {
  const base = prev ?? { clock: 0, resetCount: 0, restartCount: 0, safe: 1 }
  const resetDiff = next.resetCount - base.resetCount
  const restartDiff = next.restartCount - base.restartCount
  if (resetDiff < 0) return badClock(base, 'resetCount value decreased on TPM between two consecutive quotes')
  if (restartDiff < 0)
    return badClock(base, 'restartCount value decreased on TPM between two consecutive quotes')
  if (next.safe !== 1) return badClock(base, 'clock safe flag is disabled')
  if (resetDiff !== 0 && restartDiff !== 0) return { verdict: PASS, clockInfo: base }
  if (next.clock - base.clock <= 0)
    return badClock(base, 'TPM clock did not increase between two consecutive quotes')
  const { clock, resetCount, restartCount, safe } = next
  return { verdict: PASS, clockInfo: { clock, resetCount, restartCount, safe } }
}
