import { Limits } from '../constants.ts'
import type { TpmReader } from '../marshal/reader.ts'
import type { TpmWriter } from '../marshal/writer.ts'
import type { Codec } from './codec.ts'

/** TPMS_PCR_SELECTION (Part 2, 10.6.2): one bank and the PCR indices selected in it. */
export interface TpmsPcrSelection {
  hash: number
  /** Selected PCR indices, ascending. */
  pcrs: number[]
  /** Bitmap length on the wire (3 for 24 PCRs); kept so a re-encoding is byte-identical. */
  sizeofSelect: number
}

export const TpmsPcrSelection: Codec<TpmsPcrSelection> = {
  name: 'TPMS_PCR_SELECTION',
  decode(r) {
    const hash = r.u16('hash')
    const sizeofSelect = r.u8('sizeofSelect')
    if (sizeofSelect > Limits.pcrSelectMax) r.fail(`sizeofSelect ${sizeofSelect} too large`, r.offset - 1)
    const bitmap = r.raw(sizeofSelect, 'pcrSelect')
    const pcrs: number[] = []
    for (let i = 0; i < sizeofSelect; i++) {
      const byte = bitmap[i] ?? 0
      if (byte === 0) continue
      for (let bit = 0; bit < 8; bit++) if (byte & (1 << bit)) pcrs.push(i * 8 + bit)
    }
    return { hash, pcrs, sizeofSelect }
  },
  encode(w, v) {
    const bitmap = new Uint8Array(v.sizeofSelect)
    for (const pcr of v.pcrs) {
      const byteIndex = pcr >> 3
      if (!Number.isInteger(pcr) || pcr < 0 || byteIndex >= v.sizeofSelect) {
        throw new RangeError(`PCR ${pcr} does not fit a ${v.sizeofSelect}-byte selection`)
      }
      bitmap[byteIndex] = (bitmap[byteIndex] ?? 0) | (1 << (pcr & 7))
    }
    w.u16(v.hash).u8(v.sizeofSelect).raw(bitmap)
  },
}

/** A selection of `pcrs` in bank `hash`, with the usual 3-byte bitmap (or larger when a PCR needs it). */
export function pcrSelection(hash: number, pcrs: readonly number[]): TpmsPcrSelection {
  const sorted = [...new Set(pcrs)].sort((a, b) => a - b)
  const highest = sorted.at(-1) ?? 0
  return { hash, pcrs: sorted, sizeofSelect: Math.max(3, (highest >> 3) + 1) }
}

/** TPML_PCR_SELECTION (Part 2, 10.9.7). */
export type TpmlPcrSelection = TpmsPcrSelection[]

export const TpmlPcrSelection: Codec<TpmlPcrSelection> = {
  name: 'TPML_PCR_SELECTION',
  decode(r) {
    const count = r.u32('count')
    if (count > Limits.hashCount) r.fail(`count ${count} exceeds ${Limits.hashCount}`, r.offset - 4)
    const list: TpmsPcrSelection[] = []
    for (let i = 0; i < count; i++)
      list.push(r.scope(`pcrSelections[${i}]`, () => TpmsPcrSelection.decode(r)))
    return list
  },
  encode(w, v) {
    w.u32(v.length)
    for (const s of v) TpmsPcrSelection.encode(w, s)
  },
}

/** TPML_DIGEST (Part 2, 10.9.3): up to 8 digests (PCR_Read returns at most 8 values per call). */
export type TpmlDigest = Uint8Array[]

export const TpmlDigest: Codec<TpmlDigest> = {
  name: 'TPML_DIGEST',
  decode(r) {
    const count = r.u32('count')
    if (count > Limits.digestListMax) r.fail(`count ${count} exceeds ${Limits.digestListMax}`, r.offset - 4)
    const list: Uint8Array[] = []
    for (let i = 0; i < count; i++) list.push(r.tpm2b(`digests[${i}]`, 64))
    return list
  },
  encode(w, v) {
    w.u32(v.length)
    for (const d of v) w.tpm2b(d)
  },
}

/** TPMT_HA (Part 2, 10.3.2): a digest tagged with its algorithm (sizes fixed by the algorithm). */
export interface TpmtHa {
  hashAlg: number
  digest: Uint8Array
}

/** TPML_DIGEST_VALUES (Part 2, 10.9.6), as PCR_Extend takes it. Encode only: the sizes come from the algs. */
export type TpmlDigestValues = TpmtHa[]

export function encodeTpmlDigestValues(w: TpmWriter, values: TpmlDigestValues): void {
  w.u32(values.length)
  for (const v of values) w.u16(v.hashAlg).raw(v.digest)
}

export function decodeTpmlDigestValues(
  r: TpmReader,
  sizeOf: (alg: number) => number | undefined,
): TpmlDigestValues {
  const count = r.u32('count')
  if (count > Limits.hashCount) r.fail(`count ${count} exceeds ${Limits.hashCount}`, r.offset - 4)
  const list: TpmtHa[] = []
  for (let i = 0; i < count; i++) {
    const hashAlg = r.u16('hashAlg')
    const size = sizeOf(hashAlg)
    if (size === undefined) r.fail(`unknown hash algorithm 0x${hashAlg.toString(16)}`, r.offset - 2)
    list.push({ hashAlg, digest: r.raw(size, 'digest') })
  }
  return list
}
