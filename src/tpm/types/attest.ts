import { TPM_GENERATED_VALUE, TpmSt } from '../constants.ts'
import { decodeExact } from '../marshal/reader.ts'
import { encodeWith } from '../marshal/writer.ts'
import type { Codec } from './codec.ts'
import { TpmlPcrSelection } from './pcr.ts'

/** TPMS_CLOCK_INFO (Part 2, 10.11.1): 17 bytes. */
export interface TpmsClockInfo {
  clock: bigint
  resetCount: number
  restartCount: number
  safe: boolean
}

export const TpmsClockInfo: Codec<TpmsClockInfo> = {
  name: 'TPMS_CLOCK_INFO',
  decode(r) {
    const clock = r.u64('clock')
    const resetCount = r.u32('resetCount')
    const restartCount = r.u32('restartCount')
    const safeByte = r.u8('safe')
    if (safeByte > 1) r.fail(`safe must be 0 or 1, got ${safeByte}`, r.offset - 1)
    return { clock, resetCount, restartCount, safe: safeByte === 1 }
  },
  encode(w, v) {
    w.u64(v.clock)
      .u32(v.resetCount)
      .u32(v.restartCount)
      .u8(v.safe ? 1 : 0)
  },
}

/** TPMS_QUOTE_INFO (Part 2, 10.12.4). */
export interface TpmsQuoteInfo {
  kind: 'quote'
  pcrSelect: TpmlPcrSelection
  pcrDigest: Uint8Array
}

/** TPMS_CERTIFY_INFO (Part 2, 10.12.3). */
export interface TpmsCertifyInfo {
  kind: 'certify'
  name: Uint8Array
  qualifiedName: Uint8Array
}

/** TPMU_ATTEST for the two kinds Keylime uses, selected by `TpmsAttest.type`. */
export type TpmuAttest = TpmsQuoteInfo | TpmsCertifyInfo

/** TPMS_ATTEST (Part 2, 10.12.12). `raw` holds the exact bytes decoded, which are what the TPM signed. */
export interface TpmsAttest {
  magic: number
  type: number
  qualifiedSigner: Uint8Array
  extraData: Uint8Array
  clockInfo: TpmsClockInfo
  firmwareVersion: bigint
  attested: TpmuAttest
  raw: Uint8Array
}

export const TpmsAttest: Codec<TpmsAttest> = {
  name: 'TPMS_ATTEST',
  decode(r) {
    const start = r.offset
    const magic = r.u32('magic')
    if (magic !== TPM_GENERATED_VALUE)
      r.fail(`magic 0x${magic.toString(16)} is not TPM_GENERATED_VALUE`, start)
    const type = r.u16('type')
    if (type !== TpmSt.AttestQuote && type !== TpmSt.AttestCertify) {
      r.fail(`unsupported attestation type 0x${type.toString(16)}`, r.offset - 2)
    }
    const qualifiedSigner = r.tpm2b('qualifiedSigner')
    const extraData = r.tpm2b('extraData', 64)
    const clockInfo = r.scope('clockInfo', () => TpmsClockInfo.decode(r))
    const firmwareVersion = r.u64('firmwareVersion')
    const attested: TpmuAttest = r.scope('attested', () =>
      type === TpmSt.AttestQuote
        ? { kind: 'quote', pcrSelect: TpmlPcrSelection.decode(r), pcrDigest: r.tpm2b('pcrDigest', 64) }
        : { kind: 'certify', name: r.tpm2b('name'), qualifiedName: r.tpm2b('qualifiedName') },
    )
    return {
      magic,
      type,
      qualifiedSigner,
      extraData,
      clockInfo,
      firmwareVersion,
      attested,
      raw: r.bytes.subarray(start, r.offset),
    }
  },
  encode(w, v) {
    w.u32(v.magic).u16(v.type).tpm2b(v.qualifiedSigner).tpm2b(v.extraData)
    TpmsClockInfo.encode(w, v.clockInfo)
    w.u64(v.firmwareVersion)
    if (v.attested.kind === 'quote') {
      TpmlPcrSelection.encode(w, v.attested.pcrSelect)
      w.tpm2b(v.attested.pcrDigest)
    } else {
      w.tpm2b(v.attested.name).tpm2b(v.attested.qualifiedName)
    }
  },
}

/** Decodes TPMS_ATTEST bytes as the TPM signed them (not TPM2B-wrapped); exact consumption. */
export function decodeTpmsAttest(bytes: Uint8Array): TpmsAttest {
  return decodeExact(bytes, 'TPMS_ATTEST', (r) => TpmsAttest.decode(r))
}

/** Decodes a TPM2B_ATTEST (as TPM2_Quote returns it). */
export function decodeTpm2bAttest(bytes: Uint8Array): TpmsAttest {
  return decodeExact(
    bytes,
    'TPM2B_ATTEST',
    (r) => r.sized('attestationData', (inner) => TpmsAttest.decode(inner)).value,
  )
}

export function encodeTpmsAttest(v: Omit<TpmsAttest, 'raw'> & { raw?: Uint8Array }): Uint8Array {
  return encodeWith((w) => TpmsAttest.encode(w, v as TpmsAttest))
}
