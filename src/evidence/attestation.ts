/**
 * The verifier's attestation pipeline (keylime-protocols.md §A.2, §D.3): one pure function turns an agent's
 * integrity-quote response plus the verifier's stored expectations into one Verdict. No I/O, no clock reads.
 *
 * Quote decoding and signature checks are done here with compact readers of exactly the fields the verifier needs
 * (TPMS_ATTEST quote body, TPMT_SIGNATURE, PCRBLOB, TPM2B_PUBLIC) so the hot path allocates little. IMA and
 * measured-boot evaluation plug in through `AttestationExtensions`.
 */
import { constants, createHash, createPublicKey, type KeyObject, verify } from 'node:crypto'
import { InputFormatError } from '../common/errors.ts'
import { type FailureEvent, failure, PASS, type Verdict } from './verdict.ts'

export type QuoteHashAlg = 'sha1' | 'sha256' | 'sha384' | 'sha512'

const HASH_BY_ALG_ID: ReadonlyMap<number, QuoteHashAlg> = new Map([
  [0x0004, 'sha1'],
  [0x000b, 'sha256'],
  [0x000c, 'sha384'],
  [0x000d, 'sha512'],
])
const DIGEST_SIZE: Record<QuoteHashAlg, number> = { sha1: 20, sha256: 32, sha384: 48, sha512: 64 }
const TPM_GENERATED = 0xff544347
const TPM_ST_ATTEST_QUOTE = 0x8018
const TPM_ALG_RSA = 0x0001
const TPM_ALG_ECC = 0x0023
const TPM_ALG_NULL = 0x0010
const TPM_ALG_RSASSA = 0x0014
const TPM_ALG_ECDSA = 0x0018
const CURVES: ReadonlyMap<number, { crv: string; size: number }> = new Map([
  [0x0003, { crv: 'P-256', size: 32 }],
  [0x0004, { crv: 'P-384', size: 48 }],
  [0x0005, { crv: 'P-521', size: 66 }],
])

export function isQuoteHashAlg(name: string): name is QuoteHashAlg {
  return name === 'sha1' || name === 'sha256' || name === 'sha384' || name === 'sha512'
}

/** Malformed evidence bytes (not a policy failure). */
export class EvidenceFormatError extends InputFormatError {}

/** Bounds-checked big-endian reader; every overrun becomes an EvidenceFormatError naming the structure. */
class Reader {
  offset = 0
  constructor(
    readonly buf: Uint8Array,
    readonly what: string,
  ) {}
  private need(n: number): void {
    if (this.offset + n > this.buf.length)
      throw new EvidenceFormatError(`${this.what}: truncated at offset ${this.offset} (need ${n} bytes)`)
  }
  u8(): number {
    this.need(1)
    return this.buf[this.offset++] as number
  }
  u16(): number {
    this.need(2)
    const v = ((this.buf[this.offset] as number) << 8) | (this.buf[this.offset + 1] as number)
    this.offset += 2
    return v
  }
  u32(): number {
    this.need(4)
    const b = this.buf
    const o = this.offset
    this.offset += 4
    return (
      (((b[o] as number) << 24) >>> 0) +
      ((b[o + 1] as number) << 16) +
      ((b[o + 2] as number) << 8) +
      (b[o + 3] as number)
    )
  }
  u64(): number {
    const hi = this.u32()
    const lo = this.u32()
    return hi * 0x1_0000_0000 + lo
  }
  bytes(n: number): Uint8Array {
    this.need(n)
    const v = this.buf.subarray(this.offset, this.offset + n)
    this.offset += n
    return v
  }
  tpm2b(): Uint8Array {
    return this.bytes(this.u16())
  }
}

// ---------------------------------------------------------------------------------------------- AK public key

/** TPM2B_PUBLIC (as in the registrar's `aik_tpm`) to a node KeyObject; RSA and NIST ECC keys. */
export function akPublicToKeyObject(tpm2bPublic: Uint8Array): KeyObject {
  const outer = new Reader(tpm2bPublic, 'TPM2B_PUBLIC')
  const size = outer.u16()
  const r = new Reader(outer.bytes(size), 'TPMT_PUBLIC')
  const type = r.u16()
  r.u16() // nameAlg
  r.u32() // objectAttributes
  r.tpm2b() // authPolicy
  const symmetric = r.u16()
  if (symmetric !== TPM_ALG_NULL) {
    r.u16()
    r.u16()
  }
  const scheme = r.u16()
  if (scheme !== TPM_ALG_NULL) r.u16()
  if (type === TPM_ALG_RSA) {
    r.u16() // keyBits
    const exponent = r.u32() || 65537
    const modulus = r.tpm2b()
    const e = Buffer.alloc(4)
    e.writeUInt32BE(exponent)
    const eTrim = e.subarray(e.findIndex((b) => b !== 0))
    return createPublicKey({
      key: { kty: 'RSA', n: Buffer.from(modulus).toString('base64url'), e: eTrim.toString('base64url') },
      format: 'jwk',
    })
  }
  if (type === TPM_ALG_ECC) {
    const curve = CURVES.get(r.u16())
    if (!curve) throw new EvidenceFormatError('TPMT_PUBLIC: unsupported ECC curve')
    const kdf = r.u16()
    if (kdf !== TPM_ALG_NULL) r.u16()
    const pad = (b: Uint8Array) => Buffer.concat([Buffer.alloc(Math.max(0, curve.size - b.length)), b])
    const x = pad(r.tpm2b())
    const y = pad(r.tpm2b())
    return createPublicKey({
      key: { kty: 'EC', crv: curve.crv, x: x.toString('base64url'), y: y.toString('base64url') },
      format: 'jwk',
    })
  }
  throw new EvidenceFormatError(`TPMT_PUBLIC: unsupported key type 0x${type.toString(16)}`)
}

// ---------------------------------------------------------------------------------------------- quote parts

export interface TpmClockInfo {
  clock: number
  resetCount: number
  restartCount: number
  safe: number
}

export interface QuoteBody {
  extraData: Uint8Array
  clockInfo: TpmClockInfo
  pcrDigest: Uint8Array
}

export interface QuoteParts {
  attest: Uint8Array
  signature: Uint8Array
  pcrBlob: Uint8Array
}

/** `r<b64 TPMS_ATTEST>:<b64 TPMT_SIGNATURE>:<b64 PCRBLOB>` (protocols §A.1). */
export function splitQuoteString(quote: string): QuoteParts {
  if (quote.length < 2 || quote[0] !== 'r') throw new EvidenceFormatError('quote: must start with "r"')
  const parts = quote.slice(1).split(':')
  if (parts.length < 3) throw new EvidenceFormatError('quote: expected 3 ":"-separated parts')
  const dec = (s: string) => new Uint8Array(Buffer.from(s, 'base64'))
  return {
    attest: dec(parts[0] as string),
    signature: dec(parts[1] as string),
    pcrBlob: dec(parts[2] as string),
  }
}

export function decodeQuoteAttest(attest: Uint8Array): QuoteBody {
  const r = new Reader(attest, 'TPMS_ATTEST')
  if (r.u32() !== TPM_GENERATED) throw new EvidenceFormatError('TPMS_ATTEST: bad magic')
  if (r.u16() !== TPM_ST_ATTEST_QUOTE) throw new EvidenceFormatError('TPMS_ATTEST: not a quote')
  r.tpm2b() // qualifiedSigner
  const extraData = r.tpm2b()
  const clockInfo: TpmClockInfo = { clock: r.u64(), resetCount: r.u32(), restartCount: r.u32(), safe: r.u8() }
  r.u64() // firmwareVersion
  const count = r.u32()
  if (count > 16) throw new EvidenceFormatError('TPMS_ATTEST: too many PCR selections')
  for (let i = 0; i < count; i++) {
    r.u16()
    r.bytes(r.u8())
  }
  const pcrDigest = r.tpm2b()
  return { extraData, clockInfo, pcrDigest }
}

export interface QuoteSignature {
  sigAlg: number
  hashAlg: number
  /** RSA: the signature; ECDSA: r||s each padded to the curve size (IEEE P1363). */
  value: Uint8Array
  ecdsa?: { r: Uint8Array; s: Uint8Array }
}

export function decodeQuoteSignature(sig: Uint8Array): QuoteSignature {
  const r = new Reader(sig, 'TPMT_SIGNATURE')
  const sigAlg = r.u16()
  const hashAlg = r.u16()
  if (sigAlg === TPM_ALG_ECDSA) {
    const er = r.tpm2b()
    const es = r.tpm2b()
    return { sigAlg, hashAlg, value: new Uint8Array(0), ecdsa: { r: er, s: es } }
  }
  return { sigAlg, hashAlg, value: r.tpm2b() }
}

/** PCRBLOB (tpm2-tools in-memory dump, little-endian): returns bank alg id -> (pcr -> value), in blob order. */
export function decodePcrBlob(blob: Uint8Array): Map<number, Map<number, Uint8Array>> {
  const view = new DataView(blob.buffer, blob.byteOffset, blob.byteLength)
  const expectLen = (n: number) => {
    if (n > blob.length) throw new EvidenceFormatError('PCRBLOB: truncated')
  }
  expectLen(4 + 16 * 8 + 4)
  const count = view.getUint32(0, true)
  if (count > 16) throw new EvidenceFormatError('PCRBLOB: too many selections')
  const selections: { alg: number; pcrs: number[] }[] = []
  for (let i = 0; i < 16; i++) {
    const o = 4 + i * 8
    const sizeofSelect = view.getUint8(o + 2)
    if (sizeofSelect !== 0 && sizeofSelect !== 3)
      throw new EvidenceFormatError('PCRBLOB: sizeofSelect not 0 or 3')
    if (i >= count) continue
    const pcrs: number[] = []
    for (let byte = 0; byte < sizeofSelect; byte++) {
      const bits = view.getUint8(o + 3 + byte)
      for (let bit = 0; bit < 8; bit++) if (bits & (1 << bit)) pcrs.push(byte * 8 + bit)
    }
    selections.push({ alg: view.getUint16(o, true), pcrs })
  }
  const nLists = view.getUint32(4 + 16 * 8, true)
  let o = 4 + 16 * 8 + 4
  expectLen(o + nLists * 532)
  if (o + nLists * 532 !== blob.length)
    throw new EvidenceFormatError('PCRBLOB: length does not match its lists')
  const values: Uint8Array[] = []
  for (let l = 0; l < nLists; l++) {
    const n = view.getUint32(o, true)
    if (n > 8) throw new EvidenceFormatError('PCRBLOB: digest list longer than 8')
    for (let d = 0; d < n; d++) {
      const e = o + 4 + d * 66
      const size = view.getUint16(e, true)
      if (size > 64) throw new EvidenceFormatError('PCRBLOB: digest larger than 64 bytes')
      values.push(blob.subarray(e + 2, e + 2 + size))
    }
    o += 532
  }
  const banks = new Map<number, Map<number, Uint8Array>>()
  let next = 0
  for (const sel of selections) {
    const bank = banks.get(sel.alg) ?? new Map<number, Uint8Array>()
    for (const pcr of sel.pcrs) {
      const v = values[next++]
      if (!v) throw new EvidenceFormatError('PCRBLOB: fewer digests than selected PCRs')
      bank.set(pcr, v)
    }
    banks.set(sel.alg, bank)
  }
  if (next !== values.length) throw new EvidenceFormatError('PCRBLOB: more digests than selected PCRs')
  return banks
}

// ---------------------------------------------------------------------------------------------- tpm_policy

export interface TpmPolicy {
  /** pcr -> allowed lowercase hex values */
  pcrs: ReadonlyMap<number, ReadonlySet<string>>
  mask: string
}

/** The enrolled `tpm_policy` JSON text `{"<pcr>": ["hex", …], "mask": "0x…"}`; throws InputFormatError. */
export function parseTpmPolicyText(text: string): TpmPolicy {
  let obj: unknown
  try {
    obj = JSON.parse(text)
  } catch {
    throw new InputFormatError('tpm_policy is not valid JSON')
  }
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj))
    throw new InputFormatError('tpm_policy must be a JSON object')
  const pcrs = new Map<number, Set<string>>()
  let mask = '0x0'
  for (const [k, v] of Object.entries(obj)) {
    if (k === 'mask') {
      if (typeof v !== 'string' || !/^(0x)?[0-9a-fA-F]+$/.test(v))
        throw new InputFormatError('tpm_policy.mask must be hex')
      mask = v.startsWith('0x') ? v : `0x${v}`
      continue
    }
    const pcr = Number(k)
    if (!/^\d+$/.test(k) || pcr > 23)
      throw new InputFormatError(`tpm_policy: "${k}" is not a PCR number (0-23)`)
    const list = typeof v === 'string' ? [v] : v
    if (!Array.isArray(list) || !list.every((x) => typeof x === 'string' && /^[0-9a-fA-F]+$/.test(x)))
      throw new InputFormatError(`tpm_policy: PCR ${k} must list hex digests`)
    pcrs.set(pcr, new Set(list.map((x: string) => x.toLowerCase())))
  }
  return { pcrs, mask }
}

/** PCR indexes selected by a `0x…` mask. */
export function pcrsOfMask(mask: string): number[] {
  const bits = BigInt(mask.startsWith('0x') ? mask : `0x${mask}`)
  const out: number[] = []
  for (let i = 0; i < 24; i++) if (bits & (1n << BigInt(i))) out.push(i)
  return out
}

// ---------------------------------------------------------------------------------------------- pipeline

export interface AcceptedAlgorithms {
  hash: readonly string[]
  encryption: readonly string[]
  signing: readonly string[]
}

export interface AttestationInput {
  /** Parsed once per agent and cached by the caller. */
  akPublic: KeyObject
  quote: string
  /** The nonce string sent to the agent; its ASCII bytes must be the quote's extraData. */
  nonce: string
  hashAlg: string
  encAlg: string
  signAlg: string
  accepted: AcceptedAlgorithms
  tpmPolicy: TpmPolicy
  /** The agent's payload pubkey PEM text bound into PCR 16 (pull mode); undefined skips the PCR 16 check. */
  boundPubkeyPem?: string | undefined
  /** Clock info stored from the previous good attestation; null skips the clock check. */
  previousClock: TpmClockInfo | null
  extensions?: AttestationExtensions
}

/** IMA and measured-boot checks, given the quoted PCR values of the signing bank. */
export interface AttestationExtensions {
  ima?: (quotedPcrs: ReadonlyMap<number, Uint8Array>, hashAlg: QuoteHashAlg) => Verdict
  measuredBoot?: (quotedPcrs: ReadonlyMap<number, Uint8Array>, hashAlg: QuoteHashAlg) => Verdict
  /** PCRs whose values are judged by measured boot (not by tpm_policy alone). */
  measuredBootPcrs?: ReadonlySet<number>
}

export interface AttestationOutcome {
  verdict: Verdict
  /** Clock info to store after a passing attestation (per §A.2 step 6), null when unavailable. */
  clock: TpmClockInfo | null
  /** Quoted PCR values of the signing hash bank (empty when the quote could not be read). */
  pcrs: ReadonlyMap<number, Uint8Array>
}

const QUOTE_EVENT = 'qoute_validation.quote_validation'
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
    events.push(
      failure('qoute_validation.hash_algorithm', { message: `hash_alg ${hashAlg} not accepted` }, false),
    )
  const enc = normalizeEncAlg(encAlg)
  if (!accepted.encryption.map(normalizeEncAlg).includes(enc))
    events.push(
      failure('qoute_validation.encryption_algorithm', { message: `enc_alg ${encAlg} not accepted` }, false),
    )
  if (!accepted.signing.includes(signAlg))
    events.push(
      failure('qoute_validation.signing_algorithm', { message: `sign_alg ${signAlg} not accepted` }, false),
    )
  return events.length === 0 ? PASS : { ok: false, events }
}

/** §A.2 step 6: counters never go back, `safe` is set, clock strictly increases unless both counters moved. */
export function checkClockProgress(
  prev: TpmClockInfo | null,
  next: TpmClockInfo,
): { ok: true; store: TpmClockInfo } | { ok: false; reason: string } {
  if (prev === null) return { ok: true, store: next }
  if (next.resetCount < prev.resetCount) return { ok: false, reason: 'TPM resetCount decreased' }
  if (next.restartCount < prev.restartCount) return { ok: false, reason: 'TPM restartCount decreased' }
  if (next.safe !== 1) return { ok: false, reason: 'TPM clock not safe' }
  const bothMoved = next.resetCount > prev.resetCount && next.restartCount > prev.restartCount
  if (!bothMoved && next.clock <= prev.clock) return { ok: false, reason: 'TPM clock did not increase' }
  return { ok: true, store: bothMoved ? prev : next }
}

function hex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex')
}

function stripLeadingZeros(h: string): string {
  return h.replace(/^0+/, '')
}

/** Verifies the signature, nonce and PCR digest (§A.2 steps 1-5) and returns the signing bank's PCRs. */
export function verifyQuoteSignature(
  akPublic: KeyObject,
  quote: string,
  nonce: string,
  hashAlg: QuoteHashAlg,
): { ok: true; body: QuoteBody; pcrs: Map<number, Uint8Array> } | { ok: false; reason: string } {
  let parts: QuoteParts
  let body: QuoteBody
  let sig: QuoteSignature
  let banks: Map<number, Map<number, Uint8Array>>
  try {
    parts = splitQuoteString(quote)
    body = decodeQuoteAttest(parts.attest)
    sig = decodeQuoteSignature(parts.signature)
    banks = decodePcrBlob(parts.pcrBlob)
  } catch (err) {
    if (err instanceof EvidenceFormatError) return { ok: false, reason: `malformed quote: ${err.message}` }
    throw err
  }
  const sigHash = HASH_BY_ALG_ID.get(sig.hashAlg)
  if (sigHash !== hashAlg) return { ok: false, reason: `signature hash algorithm is not ${hashAlg}` }
  const keyType = akPublic.asymmetricKeyType
  let valid: boolean
  if (keyType === 'rsa') {
    if (sig.sigAlg !== TPM_ALG_RSASSA) return { ok: false, reason: 'RSA AK quotes must be RSASSA' }
    valid = verify(hashAlg, parts.attest, { key: akPublic, padding: constants.RSA_PKCS1_PADDING }, sig.value)
  } else if (keyType === 'ec') {
    if (sig.sigAlg !== TPM_ALG_ECDSA || !sig.ecdsa) return { ok: false, reason: 'EC AK quotes must be ECDSA' }
    const size = CURVES.get(curveIdOf(akPublic))?.size ?? 32
    const { r, s } = sig.ecdsa
    if (r.length > size || s.length > size) return { ok: false, reason: 'ECDSA r/s larger than the curve' }
    const p1363 = Buffer.alloc(size * 2)
    p1363.set(r, size - r.length)
    p1363.set(s, size * 2 - s.length)
    valid = verify(hashAlg, parts.attest, { key: akPublic, dsaEncoding: 'ieee-p1363' }, p1363)
  } else {
    return { ok: false, reason: `unsupported AK type ${keyType}` }
  }
  if (!valid) return { ok: false, reason: 'quote signature is invalid' }
  if (Buffer.compare(Buffer.from(body.extraData), Buffer.from(nonce, 'latin1')) !== 0)
    return { ok: false, reason: 'quote nonce does not match' }
  const algId = [...HASH_BY_ALG_ID].find(([, n]) => n === hashAlg)?.[0]
  const bank = algId === undefined ? undefined : banks.get(algId)
  if (!bank) return { ok: false, reason: `PCR blob has no ${hashAlg} bank` }
  const h = createHash(hashAlg)
  for (const v of bank.values()) h.update(v)
  if (Buffer.compare(h.digest(), Buffer.from(body.pcrDigest)) !== 0)
    return { ok: false, reason: 'PCR values do not match the quoted digest' }
  return { ok: true, body, pcrs: bank }
}

function curveIdOf(key: KeyObject): number {
  const c = key.asymmetricKeyDetails?.namedCurve
  return c === 'secp384r1' ? 0x0004 : c === 'secp521r1' ? 0x0005 : 0x0003
}

/** PCR 16 expected value: H(0^n || H(pubkey PEM text)). */
export function expectedPcr16(pubkeyPem: string, hashAlg: QuoteHashAlg): Buffer {
  const inner = createHash(hashAlg).update(pubkeyPem, 'utf8').digest()
  return createHash(hashAlg).update(Buffer.alloc(DIGEST_SIZE[hashAlg])).update(inner).digest()
}

/** §A.2 step 7 for the static policy and PCR 16; IMA/MB through the extensions. */
export function checkPcrs(
  pcrs: ReadonlyMap<number, Uint8Array>,
  input: Pick<AttestationInput, 'tpmPolicy' | 'boundPubkeyPem' | 'extensions'>,
  hashAlg: QuoteHashAlg,
): Verdict {
  const events: FailureEvent[] = []
  if (input.boundPubkeyPem !== undefined) {
    const v16 = pcrs.get(16)
    if (!v16) events.push(failure('pcr_validation.missing_pcr_16', 'PCR 16 not in quote', true))
    else if (Buffer.compare(Buffer.from(v16), expectedPcr16(input.boundPubkeyPem, hashAlg)) !== 0)
      events.push(
        failure('pcr_validation.invalid_pcr_16', { message: 'PCR 16 does not bind the agent key' }, true),
      )
  }
  const ext = input.extensions
  if (pcrs.has(10) && ext?.ima) {
    const v = ext.ima(pcrs, hashAlg)
    if (!v.ok) events.push(...v.events)
  }
  if (ext?.measuredBoot) {
    const v = ext.measuredBoot(pcrs, hashAlg)
    if (!v.ok) events.push(...v.events)
  }
  for (const [pcr, value] of pcrs) {
    if (pcr === 16 || (pcr === 10 && ext?.ima)) continue
    const allowed = input.tpmPolicy.pcrs.get(pcr)
    if (!allowed) continue
    const h = hex(value)
    if (!allowed.has(h) && ![...allowed].some((a) => stripLeadingZeros(a) === stripLeadingZeros(h)))
      events.push(
        failure(`pcr_validation.invalid_pcr_${pcr}`, { pcr, value: h, allowed: [...allowed] }, true),
      )
  }
  const missing = [...input.tpmPolicy.pcrs.keys()].filter((p) => !pcrs.has(p))
  if (missing.length > 0) events.push(failure('pcr_validation.missing_pcrs', { missing }, true))
  return events.length === 0 ? PASS : { ok: false, events }
}

/** The whole pull-mode verdict for one quote response (§D.3 + §A.2). */
export function evaluateAttestation(input: AttestationInput): AttestationOutcome {
  const algs = checkAlgorithms(input.hashAlg, input.encAlg, input.signAlg, input.accepted)
  if (!algs.ok) return { verdict: algs, clock: null, pcrs: EMPTY_PCRS }
  const hashAlg = input.hashAlg as QuoteHashAlg
  const q = verifyQuoteSignature(input.akPublic, input.quote, input.nonce, hashAlg)
  if (!q.ok)
    return {
      verdict: { ok: false, events: [failure(QUOTE_EVENT, q.reason, false)] },
      clock: null,
      pcrs: EMPTY_PCRS,
    }
  const clock = checkClockProgress(input.previousClock, q.body.clockInfo)
  if (!clock.ok)
    return {
      verdict: { ok: false, events: [failure(QUOTE_EVENT, clock.reason, false)] },
      clock: null,
      pcrs: q.pcrs,
    }
  return { verdict: checkPcrs(q.pcrs, input, hashAlg), clock: clock.store, pcrs: q.pcrs }
}
