/**
 * Static PCR policy (`tpm_policy`) and the PCR 16 key binding (spec A.2 step 7, without IMA and measured boot, which
 * plug in beside it). Wire format: JSON `{"<pcr>": ["<hex>", ...], ..., "mask": "0x..."}`.
 */
import { createHash } from 'node:crypto'
import { type FailureEvent, failure, PASS, type Verdict } from '../verdict.ts'
import { TpmPolicyError } from './errors.ts'
import { HASH_ALG_SIZES, isQuoteHashAlg, type QuoteHashAlg } from './hash-alg.ts'

export const DATA_PCR = 16
export const IMA_PCR = 10
export const MEASURED_BOOT_PCRS: readonly number[] = Object.freeze([
  0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15,
])
const MAX_PCR = 23

export interface TpmPolicy {
  /** PCR index -> allowed values (lowercase hex). */
  pcrs: ReadonlyMap<number, ReadonlySet<string>>
  /** Mask of PCRs to quote, e.g. "0x408400". */
  mask: string
}

const HEX = /^[0-9a-f]+$/
const hex = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex')

function parsePcrIndex(key: string): number {
  if (!/^(0|[1-9][0-9]?)$/.test(key)) throw new TpmPolicyError(`tpm_policy key "${key}" is not a PCR number`)
  const pcr = Number(key)
  if (pcr > MAX_PCR) throw new TpmPolicyError(`tpm_policy PCR ${pcr} is out of range 0-${MAX_PCR}`)
  return pcr
}

function parseValues(pcr: number, raw: unknown): Set<string> {
  const list = typeof raw === 'string' ? [raw] : raw
  if (!Array.isArray(list))
    throw new TpmPolicyError(`tpm_policy PCR ${pcr} must be a hex string or a list of them`)
  const values = new Set<string>()
  for (const v of list) {
    if (typeof v !== 'string') throw new TpmPolicyError(`tpm_policy PCR ${pcr} holds a non-string value`)
    const hex = v.toLowerCase().replace(/^0x/, '')
    if (!HEX.test(hex) || hex.length % 2 !== 0)
      throw new TpmPolicyError(`tpm_policy PCR ${pcr} value "${v}" is not hex`)
    values.add(hex)
  }
  return values
}

export function maskOfPcrs(pcrs: Iterable<number>): string {
  let mask = 0
  for (const p of pcrs) mask |= 1 << p
  return `0x${(mask >>> 0).toString(16)}`
}

export function pcrsOfMask(mask: string): number[] {
  if (typeof mask !== 'string' || !/^0x[0-9a-fA-F]{1,8}$/.test(mask)) {
    throw new TpmPolicyError(`mask "${String(mask)}" is not a hex number like 0x408400`)
  }
  const value = Number.parseInt(mask.slice(2), 16)
  if (value >= 1 << (MAX_PCR + 1)) throw new TpmPolicyError(`mask ${mask} selects PCRs above ${MAX_PCR}`)
  const pcrs: number[] = []
  for (let p = 0; p <= MAX_PCR; p++) if (value & (1 << p)) pcrs.push(p)
  return pcrs
}

function asObject(json: string | unknown): Record<string, unknown> {
  let value = json
  if (typeof json === 'string') {
    try {
      value = JSON.parse(json)
    } catch (e) {
      throw new TpmPolicyError(`tpm_policy is not valid JSON: ${(e as Error).message}`)
    }
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new TpmPolicyError('tpm_policy must be a JSON object')
  }
  return value as Record<string, unknown>
}

/** Parses the verifier's stored `tpm_policy` (as built by a tenant); the mask is kept, or derived when absent. */
export function parseTpmPolicy(json: string | unknown): TpmPolicy {
  const obj = asObject(json)
  const pcrs = new Map<number, ReadonlySet<string>>()
  let mask: string | undefined
  for (const [key, raw] of Object.entries(obj)) {
    if (key === 'mask') {
      if (typeof raw !== 'string') throw new TpmPolicyError('tpm_policy mask must be a string')
      pcrsOfMask(raw)
      mask = raw.toLowerCase()
      continue
    }
    const pcr = parsePcrIndex(key)
    pcrs.set(pcr, parseValues(pcr, raw))
  }
  return { pcrs, mask: mask ?? maskOfPcrs(pcrs.keys()) }
}

export interface BuildTpmPolicyOptions {
  /** A runtime (IMA) policy is enrolled: PCR 10 is quoted. */
  runtimePolicy?: boolean
  /** A measured-boot policy is enrolled: PCRs 0-9 and 11-15 are quoted. */
  mbPolicy?: boolean
}

/**
 * Tenant side: turns the user's PCR policy JSON into the wire `tpm_policy` object. A single string becomes a list,
 * PCR 10 (IMA) and 16 (key binding) are refused, the mask is computed from the listed PCRs and the enrolled policies.
 */
export function buildTpmPolicy(
  userPolicy: string | unknown | null | undefined,
  options: BuildTpmPolicyOptions = {},
): Record<string, string[] | string> {
  const obj = userPolicy === null || userPolicy === undefined || userPolicy === '' ? {} : asObject(userPolicy)
  const out: Record<string, string[] | string> = {}
  const maskPcrs = new Set<number>()
  for (const [key, raw] of Object.entries(obj)) {
    if (key === 'mask') continue // recomputed below
    const pcr = parsePcrIndex(key)
    if (pcr === IMA_PCR) throw new TpmPolicyError('PCR 10 is reserved for IMA; use a runtime policy instead')
    if (pcr === DATA_PCR) throw new TpmPolicyError('PCR 16 is reserved for the agent key binding')
    out[String(pcr)] = [...parseValues(pcr, raw)]
    maskPcrs.add(pcr)
  }
  if (options.runtimePolicy) maskPcrs.add(IMA_PCR)
  if (options.mbPolicy) for (const p of MEASURED_BOOT_PCRS) maskPcrs.add(p)
  out.mask = maskOfPcrs(maskPcrs)
  return out
}

/** What the verifier checks for an agent besides its static `tpm_policy`. */
export interface EnrolledChecks {
  /** A runtime (IMA) policy is enrolled: PCR 10 carries the IMA list. */
  runtimePolicy: boolean
  /** A measured-boot policy is enrolled: the event log is replayed against PCRs 0-9 and 11-15. */
  measuredBootPolicy: boolean
  /** The payload key is bound into PCR 16 (pull mode). */
  bindsPubkey: boolean
}

/**
 * PCRs a quote must cover, derived from everything enrolled rather than trusted from the client's mask: a client
 * that enrols a runtime policy with mask 0x0 must not turn the IMA check off. Sorted ascending.
 */
export function requiredPcrs(tpmPolicy: TpmPolicy, checks: EnrolledChecks): number[] {
  const pcrs = new Set<number>(pcrsOfMask(tpmPolicy.mask))
  for (const p of tpmPolicy.pcrs.keys()) pcrs.add(p)
  if (checks.runtimePolicy) pcrs.add(IMA_PCR)
  if (checks.measuredBootPolicy) for (const p of MEASURED_BOOT_PCRS) pcrs.add(p)
  if (checks.bindsPubkey) pcrs.add(DATA_PCR)
  return [...pcrs].sort((a, b) => a - b)
}

/**
 * Refuses a stored `tpm_policy` that cannot be checked as written: PCR 10 belongs to the IMA replay and PCR 16 to
 * the key binding, so static values for them would be ignored (upstream's tenant refuses them too).
 */
export function assertCheckableTpmPolicy(tpmPolicy: TpmPolicy): void {
  if (tpmPolicy.pcrs.has(IMA_PCR))
    throw new TpmPolicyError('tpm_policy lists PCR 10, which only a runtime policy (IMA) can check')
  if (tpmPolicy.pcrs.has(DATA_PCR))
    throw new TpmPolicyError('tpm_policy lists PCR 16, which is reserved for the agent key binding')
}

/** Expected PCR 16 after binding the agent's key: `H(0^n || H(pubkey_pem_utf8))`. */
export function expectedDataPcr(pubkeyPem: string, hashAlg: QuoteHashAlg): Uint8Array {
  const inner = createHash(hashAlg).update(pubkeyPem, 'utf8').digest()
  return new Uint8Array(
    createHash(hashAlg).update(Buffer.alloc(HASH_ALG_SIZES[hashAlg])).update(inner).digest(),
  )
}

/**
 * Agents keep their key for a long time: remember recent bindings (bounded, so it cannot grow without limit). Keyed
 * by the PEM string itself, per hash algorithm: the loop passes the same string object on every attestation, whose
 * hash V8 keeps, where a key concatenated per call was copied and hashed anew each time.
 */
const DATA_PCR_CACHE = new Map<QuoteHashAlg, Map<string, string>>()
const DATA_PCR_CACHE_MAX = 8192

function expectedDataPcrHex(pubkeyPem: string, hashAlg: QuoteHashAlg): string {
  let byPem = DATA_PCR_CACHE.get(hashAlg)
  if (byPem === undefined) {
    byPem = new Map()
    DATA_PCR_CACHE.set(hashAlg, byPem)
  }
  let value = byPem.get(pubkeyPem)
  if (value === undefined) {
    value = hex(expectedDataPcr(pubkeyPem, hashAlg))
    if (byPem.size >= DATA_PCR_CACHE_MAX) byPem.clear()
    byPem.set(pubkeyPem, value)
  }
  return value
}

export interface CheckPcrPolicyInput {
  /** Quoted PCR values of the signature bank (from verifyQuote). */
  pcrs: ReadonlyMap<number, Uint8Array>
  tpmPolicy: TpmPolicy | null
  /** Pull mode: the agent's `pubkey` PEM exactly as received; enforces the PCR 16 binding. */
  boundPubkeyPem?: string
  hashAlg: QuoteHashAlg
  /** PCRs the quote must cover whatever tpm_policy lists (`requiredPcrs`); absent ones are `missing_pcrs`. */
  required?: readonly number[]
}

/**
 * Events (component `pcr_validation`, recoverable): `missing_pcr_16` / `invalid_pcr_16` for the key binding,
 * `invalid_pcr_N` for a quoted PCR whose value the policy does not allow, `missing_pcrs` for policy or required PCRs
 * not quoted. PCR 10 is the IMA check's unless a (legacy, now refused at enrolment) tpm_policy lists a value for it:
 * then that value is enforced rather than ignored. Measured-boot PCRs are compared here like any other listed PCR
 * (the event-log replay itself belongs to the measured-boot check).
 */
export function checkPcrPolicy(input: CheckPcrPolicyInput): Verdict {
  const { pcrs, tpmPolicy, boundPubkeyPem, hashAlg } = input
  if (!isQuoteHashAlg(hashAlg)) throw new TpmPolicyError(`unsupported hash algorithm ${String(hashAlg)}`)
  const events: FailureEvent[] = []
  if (boundPubkeyPem !== undefined) {
    const got = pcrs.get(DATA_PCR)
    if (got === undefined) {
      events.push(
        failure(
          `pcr_validation.missing_pcr_${DATA_PCR}`,
          `Data PCR ${DATA_PCR} is missing in quote, but is required`,
        ),
      )
    } else {
      const expected = expectedDataPcrHex(boundPubkeyPem, hashAlg)
      if (hex(got) !== expected) {
        events.push(failure(`pcr_validation.invalid_pcr_${DATA_PCR}`, { got: hex(got), expected }))
      }
    }
  }
  const allow = tpmPolicy?.pcrs ?? new Map<number, ReadonlySet<string>>()
  const quoted = [...pcrs.keys()].sort((a, b) => a - b)
  for (const pcr of quoted) {
    if (pcr === DATA_PCR && boundPubkeyPem !== undefined) continue
    const allowed = allow.get(pcr)
    if (allowed === undefined) continue
    const got = hex(pcrs.get(pcr) as Uint8Array)
    if (!allowed.has(got)) {
      events.push(
        failure(`pcr_validation.invalid_pcr_${pcr}`, {
          context: 'PCR value is not in allowlist',
          got,
          expected: [...allowed],
        }),
      )
    }
  }
  const expected = new Set<number>([...allow.keys(), ...(input.required ?? [])])
  if (boundPubkeyPem !== undefined) expected.delete(DATA_PCR) // reported above as missing_pcr_16
  const missing = [...expected].filter((p) => !pcrs.has(p)).sort((a, b) => a - b)
  if (missing.length > 0) {
    events.push(
      failure('pcr_validation.missing_pcrs', { context: 'PCRs are missing in quote', data: missing }),
    )
  }
  return events.length === 0 ? PASS : { ok: false, events }
}
