/**
 * Shortcut for the entry that makes up nearly every real list: an ima-ng line (or an ima-sig line without a
 * signature) for PCR 10 whose template hash is right and whose file passes the policy. It reads the line in place
 * in the list's UTF-8 bytes (no string for the line, its hashes or its digest; a byte read costs about half a
 * `charCodeAt`, and bytes can be shared between threads), writes the template data into one reused buffer with plain
 * loops (each `Buffer.write` is a native call costing more than the loop), and keeps digests as latin1 strings,
 * because node's `hash()` returns strings about three times faster than Buffers. It only ever
 * answers "this entry is fine, here is its measurement"; anything else (another template, a violation, odd hex, a
 * policy miss, boot_aggregate) returns false and takes the general path, which produces the failure events.
 * Equivalence with the general path is a property test.
 *
 * With `checkColumn: false` it does not compare the logged template hash with one it computes when the column's
 * algorithm differs from the bank's (where the comparison would cost a hash of its own): for a replay anchored to a
 * quote that comparison decides nothing (see `ImaIncrementVerification`). The column must still be hex of its width
 * and not all zeros, since zeros mark a violation, which extends differently.
 */

import { DigestByteIndex, NAME_HASH_SEED, nameHashStep } from './digest-byte-index.ts'
import { BANK_SIZE, digestLatin1, KERNEL_HASHES, type PcrBank } from './hash-algs.ts'
import { type CompiledRuntimePolicy, lookupDigest } from './policy.ts'

const SPACE = 32
const COLON = 58

/** Nibble of a byte that is a hex digit, else -1; `LOWER_HEX` accepts lowercase digits only. */
const ANY_HEX = new Int8Array(256).fill(-1)
const LOWER_HEX = new Int8Array(256).fill(-1)
for (let c = 0; c < 10; c++) {
  ANY_HEX[48 + c] = c
  LOWER_HEX[48 + c] = c
}
for (let c = 0; c < 6; c++) {
  ANY_HEX[97 + c] = 10 + c
  ANY_HEX[65 + c] = 10 + c
  LOWER_HEX[97 + c] = 10 + c
}

/** Lines whose policy lookups `prefetch` starts together. */
export const PREFETCH_LINES = 16

export class ImaNgFastPath {
  readonly #bank: PcrBank
  readonly #bankSize: number
  /** Algorithm of the template-hash column (the policy's `log_hash_alg`). */
  readonly #columnAlg: PcrBank
  readonly #columnSize: number
  /** Compare the logged template hash with the computed one (always when the column's algorithm is the bank's). */
  readonly #checkColumn: boolean
  readonly #policy: CompiledRuntimePolicy | null
  readonly #index: DigestByteIndex | null
  /** The logged template hash, decoded. */
  readonly #column = new Uint8Array(64)
  #scratch = Buffer.allocUnsafe(1024)
  /** `#scratch.subarray(0, n)` per length n, made once: a view per entry would be most of the garbage. */
  #views: Buffer[] = []
  /** The last file-hash algorithm seen, its name's bytes, and its digest size. */
  #alg = new Uint8Array(0)
  #algDigestLength = 0
  /** `prefetch` scratch, and what it read (kept so that the reads are not optimised away). */
  readonly #hashes = new Int32Array(PREFETCH_LINES)
  readonly #records = new Int32Array(PREFETCH_LINES)
  #sink = 0

  constructor(
    bank: PcrBank,
    columnAlg: PcrBank,
    policy: CompiledRuntimePolicy | null,
    { checkColumn = true }: { checkColumn?: boolean } = {},
  ) {
    this.#bank = bank
    this.#bankSize = BANK_SIZE[bank]
    this.#columnAlg = columnAlg
    this.#columnSize = BANK_SIZE[columnAlg]
    this.#checkColumn = checkColumn || columnAlg === bank
    this.#policy = policy
    this.#index = policy === null ? null : DigestByteIndex.of(policy)
  }

  /**
   * Brings the policy-index entries of the next lines (`list[starts[j], ends[j])`, j < `count` ≤ `PREFETCH_LINES`)
   * into the cache together before `measureInto` checks them one by one. Takes the usual line layout for granted
   * and skips any line that does not have it: it only affects speed.
   */
  prefetch(list: Buffer, starts: Int32Array, ends: Int32Array, count: number): void {
    const index = this.#index
    const algLength = this.#alg.length
    if (index === null || algLength === 0) return
    const hashes = this.#hashes
    const head = 3 + this.#columnSize * 2
    const tail = algLength + 2 + this.#algDigestLength * 2
    let n = 0
    for (let j = 0; j < count; j++) {
      const start = starts[j] as number
      let end = ends[j] as number
      const template = start + head + 5
      let nameAt: number
      if (list[template] === 110) nameAt = template + 3 + tail
      else {
        nameAt = template + 4 + tail
        end--
      }
      if (nameAt >= end) continue
      let hash = NAME_HASH_SEED
      for (let p = nameAt; p < end; p++) hash = nameHashStep(hash, list[p] as number)
      hashes[n++] = hash
    }
    this.#sink = (this.#sink + index.touch(hashes, n, this.#records)) | 0
  }

  /**
   * Checks the line `list[start, end)` (UTF-8, without its newline). Writes the entry's measurement for the replayed bank
   * into `out` at `offset` and returns true, or returns false (with `out` untouched) when the general path must
   * decide.
   */
  measureInto(list: Buffer, start: number, end: number, out: Uint8Array, offset: number): boolean {
    // "10 <template hash> ima-ng <alg>:<hex> <name>"
    if (end - start < 8 || list[start] !== 49 || list[start + 1] !== 48 || list[start + 2] !== SPACE)
      return false
    // The template-hash column: hex (either case, as the general parser reads it) of the column's size, not all
    // zeros (the kernel logs a violation as zeros of whatever width the column has). Its hex digits are checked
    // below, so the space after them is the first one of the line.
    const hashAt = start + 3
    const columnSize = this.#columnSize
    const s2 = hashAt + columnSize * 2
    if (s2 + 10 >= end || list[s2] !== SPACE) return false
    // ima-sig without a signature (files the kernel measured but nobody signed) checks exactly like ima-ng, except
    // that without a policy the general path reports it as unsigned.
    if (
      list[s2 + 1] !== 105 || // i
      list[s2 + 2] !== 109 || // m
      list[s2 + 3] !== 97 || // a
      list[s2 + 4] !== 45 // -
    )
      return false
    let fieldsAt: number
    const unsignedImaSig = list[s2 + 5] === 115 // s
    if (unsignedImaSig) {
      if (list[s2 + 6] !== 105 || list[s2 + 7] !== 103 || list[s2 + 8] !== SPACE) return false
      if (this.#policy === null) return false
      fieldsAt = s2 + 9
    } else {
      if (list[s2 + 5] !== 110 || list[s2 + 6] !== 103 || list[s2 + 7] !== SPACE) return false
      fieldsAt = s2 + 8
    }
    const column = this.#column
    let nonZero = 0
    for (let i = 0, p = hashAt; i < columnSize; i++, p += 2) {
      const hi = ANY_HEX[list[p] as number] as number
      const lo = ANY_HEX[list[p + 1] as number] as number
      if ((hi | lo) < 0) return false
      const byte = (hi << 4) | lo
      column[i] = byte
      nonZero |= byte
    }
    if (nonZero === 0) return false

    // Lists use one file-hash algorithm almost always: remember the last one instead of looking it up per line.
    // Its name and the hex digits checked below hold no space, so the one after them is the first of the fields.
    const cachedAlg = this.#alg
    let algLength = cachedAlg.length
    let sameAlg = algLength > 0 && list[fieldsAt + algLength] === COLON
    for (let i = 0; sameAlg && i < algLength; i++) sameAlg = list[fieldsAt + i] === cachedAlg[i]
    if (!sameAlg) {
      const space = list.indexOf(SPACE, fieldsAt)
      if (space < 0 || space >= end) return false
      const colon = list.lastIndexOf(COLON, space - 1)
      if (colon <= fieldsAt) return false
      // latin1: a name with any byte above 0x7f is no key of the (ASCII) table
      const alg = list.toString('latin1', fieldsAt, colon)
      if (!Object.hasOwn(KERNEL_HASHES, alg)) return false
      this.#alg = list.subarray(fieldsAt, colon).slice()
      this.#algDigestLength = (KERNEL_HASHES[alg] as { size: number }).size
      algLength = alg.length
    }
    const colon = fieldsAt + algLength
    const digestLength = this.#algDigestLength
    const s4 = colon + 1 + digestLength * 2
    if (s4 + 1 >= end || list[s4] !== SPACE) return false

    let nameEnd = end
    if (unsignedImaSig) {
      // "<digest> <name> <sig hex>": the name ends at the next space, and an empty sig leaves only that space
      const s5 = list.indexOf(SPACE, s4 + 1)
      if (s5 !== end - 1 || s5 === s4 + 1) return false
      nameEnd = s5
    }
    const nameAt = s4 + 1
    const nameLength = nameEnd - nameAt
    if (nameLength === 14 && list.toString('latin1', nameAt, nameEnd) === 'boot_aggregate') return false

    const fieldLength = algLength + 2 + digestLength
    const maxSize = 12 + fieldLength + nameLength * 3 + 1
    if (this.#scratch.length < maxSize) {
      this.#scratch = Buffer.allocUnsafe(maxSize * 2)
      this.#views = []
    }
    const data = this.#scratch
    data.writeUInt32LE(fieldLength, 0)
    for (let i = 0; i < algLength; i++) data[4 + i] = list[fieldsAt + i] as number
    data[4 + algLength] = COLON
    data[5 + algLength] = 0
    // The file digest; `lowercase` stays true while it is the lowercase hex the policy is written in.
    const digestAt = 6 + algLength
    let lowercase = true
    for (let i = 0, p = colon + 1; i < digestLength; i++, p += 2) {
      const c1 = list[p] as number
      const c2 = list[p + 1] as number
      const hi = ANY_HEX[c1] as number
      const lo = ANY_HEX[c2] as number
      if ((hi | lo) < 0) return false
      if (((LOWER_HEX[c1] as number) | (LOWER_HEX[c2] as number)) < 0) lowercase = false
      data[digestAt + i] = (hi << 4) | lo
    }
    // The name: ASCII is copied (and hashed for the policy lookup) here; anything else goes through a string, as in
    // the general path (bytes that are not UTF-8 come out as U+FFFD there), and is looked up as a string.
    const nameFieldAt = 4 + fieldLength
    const nameBytesAt = nameFieldAt + 4
    let nameHash = NAME_HASH_SEED
    let ascii = true
    for (let i = 0; i < nameLength; i++) {
      const c = list[nameAt + i] as number
      if (c >= 0x80) {
        ascii = false
        break
      }
      data[nameBytesAt + i] = c
      nameHash = nameHashStep(nameHash, c)
    }
    const name = ascii ? '' : list.toString('utf8', nameAt, nameEnd)
    const nameBytes = ascii ? nameLength : data.write(name, nameBytesAt, 'utf8')
    data.writeUInt32LE(nameBytes + 1, nameFieldAt)
    data[nameBytesAt + nameBytes] = 0
    let length = nameBytesAt + nameBytes + 1
    if (unsignedImaSig) {
      data.writeUInt32LE(0, length) // the empty sig field
      length += 4
    }
    let templateData = this.#views[length]
    if (templateData === undefined) {
      templateData = data.subarray(0, length)
      this.#views[length] = templateData
    }

    const policy = this.#policy
    const index = this.#index
    // The digest lookup comes first: nearly every entry passes it, and excludes are only needed for the rest.
    if (policy !== null && index !== null) {
      const allowed =
        lowercase &&
        (ascii
          ? index.allows(data, nameBytesAt, nameLength, nameHash | 0, digestAt, digestLength)
          : lookupDigest(policy.digests, name, list.toString('latin1', colon + 1, s4)) === 'ok')
      if (!allowed && !policy.excludes?.test(ascii ? list.toString('latin1', nameAt, nameEnd) : name))
        return false
    }

    let measurement: string
    if (this.#checkColumn) {
      const computed = digestLatin1(this.#columnAlg, templateData)
      for (let i = 0; i < columnSize; i++) if (computed.charCodeAt(i) !== column[i]) return false
      measurement = this.#columnAlg === this.#bank ? computed : digestLatin1(this.#bank, templateData)
    } else measurement = digestLatin1(this.#bank, templateData)
    for (let i = 0, n = this.#bankSize; i < n; i++) out[offset + i] = measurement.charCodeAt(i)
    return true
  }
}
