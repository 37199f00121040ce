/**
 * PCRBLOB codec: tpm2-tools' in-memory dump of TPML_PCR_SELECTION followed by its list of TPML_DIGESTs, written by
 * `tpm2_quote -o` and carried as the third part of a quote string (spec A.1). Everything is LITTLE-endian:
 *   u32 count, 16 x {u16 hashAlg, u8 sizeofSelect, u8 pcrSelect[4], u8 pad}
 *   u32 nDigestLists, nDigestLists x {u32 count, 8 x {u16 size, u8 buffer[64]}}
 * Digests follow the selections in order (ascending PCR index per selection), 8 per TPML_DIGEST.
 */
import { QuoteFormatError } from './errors.ts'
import { HASH_ALG_SIZES, hashAlgId, hashAlgName, type QuoteHashAlg } from './hash-alg.ts'

export interface PcrBank {
  hashAlg: QuoteHashAlg
  /** PCR index -> value, in blob order (ascending index). */
  values: Map<number, Uint8Array>
}

export interface PcrBlob {
  banks: PcrBank[]
  /** Every value in blob order (selection order, ascending PCR), as the TPM hashes them into pcrDigest. */
  ordered?: Uint8Array[]
}

const SELECTION_SLOTS = 16
const SLOT_SIZE = 8
const DIGESTS_PER_LIST = 8
const DIGEST_SLOT_SIZE = 2 + 64
const DIGEST_LIST_SIZE = 4 + DIGESTS_PER_LIST * DIGEST_SLOT_SIZE // 532
const HEADER_SIZE = 4 + SELECTION_SLOTS * SLOT_SIZE + 4 // 136
const PCR_COUNT = 24
/** 16 banks x 24 PCRs / 8 per list: anything larger cannot come from a TPM. */
const MAX_DIGEST_LISTS = (SELECTION_SLOTS * PCR_COUNT) / DIGESTS_PER_LIST

export function parsePcrBlob(input: Uint8Array): PcrBlob {
  if (!(input instanceof Uint8Array)) throw new QuoteFormatError('PCR blob must be bytes')
  if (input.length < HEADER_SIZE) {
    throw new QuoteFormatError(`PCR blob too short: ${input.length} bytes, header needs ${HEADER_SIZE}`)
  }
  const view = new DataView(input.buffer, input.byteOffset, input.byteLength)
  const selectionCount = view.getUint32(0, true)
  if (selectionCount > SELECTION_SLOTS) {
    throw new QuoteFormatError(`PCR blob selection count ${selectionCount} exceeds ${SELECTION_SLOTS}`, {
      offset: 0,
    })
  }

  const order: { bank: PcrBank; pcr: number }[] = []
  const banks = new Map<QuoteHashAlg, PcrBank>()
  const selectedMasks = new Map<PcrBank, number>()
  for (let slot = 0; slot < selectionCount; slot++) {
    const at = 4 + slot * SLOT_SIZE
    const algId = view.getUint16(at, true)
    const hashAlg = hashAlgName(algId)
    if (hashAlg === undefined) {
      throw new QuoteFormatError(`PCR blob selects unknown hash algorithm 0x${algId.toString(16)}`, {
        offset: at,
      })
    }
    const sizeofSelect = view.getUint8(at + 2)
    if (sizeofSelect !== 0 && sizeofSelect !== 3) {
      throw new QuoteFormatError(`PCR blob sizeofSelect ${sizeofSelect} is not 0 or 3`, { offset: at + 2 })
    }
    let bank = banks.get(hashAlg)
    if (bank === undefined) {
      bank = { hashAlg, values: new Map() }
      banks.set(hashAlg, bank)
    }
    for (let pcr = 0; pcr < sizeofSelect * 8; pcr++) {
      if ((view.getUint8(at + 3 + (pcr >> 3)) & (1 << (pcr & 7))) === 0) continue
      const mask = selectedMasks.get(bank) ?? 0
      if (mask & (1 << pcr))
        throw new QuoteFormatError(`PCR blob selects ${hashAlg} PCR ${pcr} twice`, { offset: at })
      selectedMasks.set(bank, mask | (1 << pcr))
      order.push({ bank, pcr })
    }
  }

  const listCount = view.getUint32(HEADER_SIZE - 4, true)
  if (listCount > MAX_DIGEST_LISTS) {
    throw new QuoteFormatError(`PCR blob digest list count ${listCount} is too large`, {
      offset: HEADER_SIZE - 4,
    })
  }
  const expectedLength = HEADER_SIZE + listCount * DIGEST_LIST_SIZE
  if (input.length !== expectedLength) {
    throw new QuoteFormatError(
      `PCR blob is ${input.length} bytes, but ${listCount} digest lists need exactly ${expectedLength}`,
    )
  }

  let next = 0
  const ordered: Uint8Array[] = []
  for (let list = 0; list < listCount; list++) {
    const at = HEADER_SIZE + list * DIGEST_LIST_SIZE
    const count = view.getUint32(at, true)
    if (count > DIGESTS_PER_LIST) {
      throw new QuoteFormatError(`PCR blob digest list holds ${count} digests, at most 8`, { offset: at })
    }
    for (let i = 0; i < count; i++) {
      const slotAt = at + 4 + i * DIGEST_SLOT_SIZE
      const target = order[next]
      if (target === undefined) {
        throw new QuoteFormatError(`PCR blob has more digests than selected PCRs (${order.length})`, {
          offset: slotAt,
        })
      }
      const size = view.getUint16(slotAt, true)
      const expected = HASH_ALG_SIZES[target.bank.hashAlg]
      if (size !== expected) {
        throw new QuoteFormatError(
          `PCR blob digest for ${target.bank.hashAlg} PCR ${target.pcr} is ${size} bytes, expected ${expected}`,
          { offset: slotAt },
        )
      }
      const value = input.slice(slotAt + 2, slotAt + 2 + size)
      target.bank.values.set(target.pcr, value)
      ordered.push(value)
      next++
    }
  }
  if (next !== order.length) {
    throw new QuoteFormatError(`PCR blob has ${next} digests for ${order.length} selected PCRs`)
  }
  return { banks: [...banks.values()], ordered }
}

/** Values of one bank of a parsed blob, or undefined when the blob has no such bank. */
export function pcrBank(blob: PcrBlob, hashAlg: QuoteHashAlg): Map<number, Uint8Array> | undefined {
  return blob.banks.find((b) => b.hashAlg === hashAlg)?.values
}

/** Encodes banks into a PCR blob as tpm2-tools writes it (PCRs ascending per bank, 8 digests per list). */
export function encodePcrBlob(blob: PcrBlob): Uint8Array {
  if (blob.banks.length > SELECTION_SLOTS) throw new QuoteFormatError(`at most ${SELECTION_SLOTS} PCR banks`)
  const digests: Uint8Array[] = []
  const header = new Uint8Array(HEADER_SIZE)
  const hv = new DataView(header.buffer)
  hv.setUint32(0, blob.banks.length, true)
  const seen = new Set<QuoteHashAlg>()
  blob.banks.forEach((bank, slot) => {
    if (seen.has(bank.hashAlg)) throw new QuoteFormatError(`PCR bank ${bank.hashAlg} given twice`)
    seen.add(bank.hashAlg)
    const at = 4 + slot * SLOT_SIZE
    hv.setUint16(at, hashAlgId(bank.hashAlg), true)
    hv.setUint8(at + 2, 3)
    const size = HASH_ALG_SIZES[bank.hashAlg]
    for (const pcr of [...bank.values.keys()].sort((a, b) => a - b)) {
      if (!Number.isInteger(pcr) || pcr < 0 || pcr >= PCR_COUNT)
        throw new QuoteFormatError(`invalid PCR ${pcr}`)
      const value = bank.values.get(pcr) as Uint8Array
      if (value.length !== size) {
        throw new QuoteFormatError(
          `${bank.hashAlg} PCR ${pcr} value is ${value.length} bytes, expected ${size}`,
        )
      }
      header[at + 3 + (pcr >> 3)] = (header[at + 3 + (pcr >> 3)] as number) | (1 << (pcr & 7))
      digests.push(value)
    }
  })
  const listCount = Math.ceil(digests.length / DIGESTS_PER_LIST)
  hv.setUint32(HEADER_SIZE - 4, listCount, true)
  const out = new Uint8Array(HEADER_SIZE + listCount * DIGEST_LIST_SIZE)
  out.set(header)
  const ov = new DataView(out.buffer)
  for (let list = 0; list < listCount; list++) {
    const at = HEADER_SIZE + list * DIGEST_LIST_SIZE
    const chunk = digests.slice(list * DIGESTS_PER_LIST, (list + 1) * DIGESTS_PER_LIST)
    ov.setUint32(at, chunk.length, true)
    chunk.forEach((d, i) => {
      const slotAt = at + 4 + i * DIGEST_SLOT_SIZE
      ov.setUint16(slotAt, d.length, true)
      out.set(d, slotAt + 2)
    })
  }
  return out
}
