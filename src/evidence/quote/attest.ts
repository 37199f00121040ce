/**
 * Decoders for the two signed quote structures the verifier reads: TPMS_ATTEST (Part 2, 10.12.12) and TPMT_SIGNATURE
 * (Part 2, 11.3.4). Exact consumption, bounds-checked, only QuoteFormatError escapes.
 *
 * Kept small and local because team TPM's `decodeTpmsAttest` / `decodeTpmtSignature` were not available when this
 * was written; switching to them later does not change verifyQuote's API.
 */
import { QuoteFormatError } from './errors.ts'

export const TPM_GENERATED_VALUE = 0xff544347
export const TPM_ST_ATTEST_QUOTE = 0x8018
export const TPM_ST_ATTEST_CERTIFY = 0x8017

export const SIG_ALG = Object.freeze({
  RSASSA: 0x0014,
  RSAPSS: 0x0016,
  ECDSA: 0x0018,
  ECDAA: 0x001a,
  SM2: 0x001b,
  ECSCHNORR: 0x001c,
  NULL: 0x0010,
})

export interface TpmClockInfo {
  /** ms the TPM has been powered since the last TPM2_Clear (u64; exact below 2^53). */
  clock: number
  resetCount: number
  restartCount: number
  /** 1 = yes */
  safe: number
}

export interface PcrSelection {
  hashAlg: number
  pcrs: number[]
}

export interface QuoteAttest {
  magic: number
  type: number
  qualifiedSigner: Uint8Array
  extraData: Uint8Array
  clockInfo: TpmClockInfo
  firmwareVersion: bigint
  /** Present when type is TPM_ST_ATTEST_QUOTE. */
  quoted?: { pcrSelect: PcrSelection[]; pcrDigest: Uint8Array }
}

export type QuoteSignature =
  | { sigAlg: number; hashAlg: number; kind: 'rsa'; signature: Uint8Array }
  | { sigAlg: number; hashAlg: number; kind: 'ecc'; r: Uint8Array; s: Uint8Array }

class Reader {
  offset = 0
  constructor(
    private readonly buf: Uint8Array,
    private readonly what: string,
  ) {}
  private need(n: number): void {
    if (this.offset + n > this.buf.length) {
      throw new QuoteFormatError(`${this.what} truncated (needs ${n} more bytes)`, { offset: this.offset })
    }
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
    const hi = this.u16()
    return hi * 0x10000 + this.u16()
  }
  u64(): bigint {
    const hi = this.u32()
    return (BigInt(hi) << 32n) | BigInt(this.u32())
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
  end(): void {
    if (this.offset !== this.buf.length) {
      throw new QuoteFormatError(`${this.what} has ${this.buf.length - this.offset} trailing bytes`, {
        offset: this.offset,
      })
    }
  }
}

export function decodeQuoteAttest(bytes: Uint8Array): QuoteAttest {
  if (!(bytes instanceof Uint8Array)) throw new QuoteFormatError('TPMS_ATTEST must be bytes')
  const r = new Reader(bytes, 'TPMS_ATTEST')
  const magic = r.u32()
  if (magic !== TPM_GENERATED_VALUE)
    throw new QuoteFormatError('TPMS_ATTEST magic is not TPM_GENERATED', { offset: 0 })
  const type = r.u16()
  const qualifiedSigner = r.tpm2b()
  const extraData = r.tpm2b()
  const clock = r.u64()
  const clockInfo: TpmClockInfo = {
    clock: Number(clock),
    resetCount: r.u32(),
    restartCount: r.u32(),
    safe: r.u8(),
  }
  const firmwareVersion = r.u64()
  const attest: QuoteAttest = { magic, type, qualifiedSigner, extraData, clockInfo, firmwareVersion }
  if (type === TPM_ST_ATTEST_QUOTE) {
    const count = r.u32()
    if (count > 16)
      throw new QuoteFormatError(`TPML_PCR_SELECTION count ${count} exceeds 16`, { offset: r.offset - 4 })
    const pcrSelect: PcrSelection[] = []
    for (let i = 0; i < count; i++) {
      const hashAlg = r.u16()
      const size = r.u8()
      if (size > 4) throw new QuoteFormatError(`sizeofSelect ${size} exceeds 4`, { offset: r.offset - 1 })
      const bitmap = r.bytes(size)
      const pcrs: number[] = []
      for (let pcr = 0; pcr < size * 8; pcr++)
        if (((bitmap[pcr >> 3] as number) >> (pcr & 7)) & 1) pcrs.push(pcr)
      pcrSelect.push({ hashAlg, pcrs })
    }
    attest.quoted = { pcrSelect, pcrDigest: r.tpm2b() }
    r.end()
  }
  // Other attestation types are returned without their body; the verifier rejects them by type.
  return attest
}

export function decodeQuoteSignature(bytes: Uint8Array): QuoteSignature {
  if (!(bytes instanceof Uint8Array)) throw new QuoteFormatError('TPMT_SIGNATURE must be bytes')
  const r = new Reader(bytes, 'TPMT_SIGNATURE')
  const sigAlg = r.u16()
  let sig: QuoteSignature
  switch (sigAlg) {
    case SIG_ALG.RSASSA:
    case SIG_ALG.RSAPSS:
      sig = { sigAlg, hashAlg: r.u16(), kind: 'rsa', signature: r.tpm2b() }
      break
    case SIG_ALG.ECDSA:
    case SIG_ALG.ECDAA:
    case SIG_ALG.SM2:
    case SIG_ALG.ECSCHNORR:
      sig = { sigAlg, hashAlg: r.u16(), kind: 'ecc', r: r.tpm2b(), s: r.tpm2b() }
      break
    default:
      throw new QuoteFormatError(
        `unsupported signature algorithm 0x${sigAlg.toString(16).padStart(4, '0')}`,
        {
          offset: 0,
        },
      )
  }
  r.end()
  return sig
}
