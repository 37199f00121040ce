/**
 * Shortcut for the entry that makes up nearly every real list: an ima-ng line (or an ima-sig line without a
 * signature) for PCR 10 whose template hash is right and whose file passes the policy. It parses the line in place (no entry object, template data written into
 * one reused buffer) and keeps digests as latin1 strings, because node's `hash()` returns strings about three times
 * faster than Buffers. It only ever answers "this entry is fine, here is its measurement"; anything else (another
 * template, a violation, odd hex, a policy miss, boot_aggregate) returns false and takes the general path, which
 * produces the failure events. Equivalence with the general path is a property test.
 */
import { digestHex, digestLatin1, KERNEL_HASHES, type PcrBank } from './hash-algs.ts'
import { type CompiledRuntimePolicy, lookupDigest } from './policy.ts'

const SPACE = 32

/**
 * True for a template-hash column the general parser accepts as a non-violation: even-length hex of at least 16
 * bytes, not all zeros (the kernel logs a violation as zeros of whatever width the column has).
 */
function isPlainHashColumn(line: string, start: number, end: number): boolean {
  const length = end - start
  if (length < 32 || (length & 1) !== 0) return false
  let nonZero = false
  for (let i = start; i < end; i++) {
    const c = line.charCodeAt(i)
    if (c === 48) continue
    if (!((c > 48 && c <= 57) || (c >= 97 && c <= 102) || (c >= 65 && c <= 70))) return false
    nonZero = true
  }
  return nonZero
}

export class ImaNgFastPath {
  readonly #bank: PcrBank
  /** Algorithm of the template-hash column (the policy's `log_hash_alg`). */
  readonly #columnAlg: PcrBank
  readonly #policy: CompiledRuntimePolicy | null
  #scratch = Buffer.allocUnsafe(1024)
  /** `#scratch.subarray(0, n)` per length n, made once: a view per entry would be most of the garbage. */
  #views: Buffer[] = []
  #alg = ''
  #algDigestLength = 0

  constructor(bank: PcrBank, columnAlg: PcrBank, policy: CompiledRuntimePolicy | null) {
    this.#bank = bank
    this.#columnAlg = columnAlg
    this.#policy = policy
  }

  /**
   * Writes the entry's measurement for the replayed bank into `out` at `offset` and returns true, or returns false
   * (with `out` untouched) when the general path must decide.
   */
  measureInto(line: string, out: Buffer, offset: number): boolean {
    // "10 <template hash> ima-ng <alg>:<hex> <name>"
    if (line.charCodeAt(0) !== 49 || line.charCodeAt(1) !== 48 || line.charCodeAt(2) !== SPACE) return false
    const s2 = line.indexOf(' ', 3)
    if (s2 < 0) return false
    // ima-sig without a signature (files the kernel measured but nobody signed) checks exactly like ima-ng, except
    // that without a policy the general path reports it as unsigned.
    const unsignedImaSig = line.startsWith('ima-sig ', s2 + 1)
    if (!unsignedImaSig && !line.startsWith('ima-ng ', s2 + 1)) return false
    if (unsignedImaSig && this.#policy === null) return false
    const fieldsAt = s2 + (unsignedImaSig ? 9 : 8)
    const s4 = line.indexOf(' ', fieldsAt)
    if (s4 < 0 || s4 + 1 >= line.length) return false
    const colon = line.lastIndexOf(':', s4 - 1)
    if (colon <= fieldsAt) return false
    const templateHashLength = s2 - 3
    if (!isPlainHashColumn(line, 3, s2)) return false
    const algLength = colon - fieldsAt
    // Lists use one file-hash algorithm almost always: remember the last one instead of looking it up per line.
    if (algLength !== this.#alg.length || !line.startsWith(this.#alg, fieldsAt)) {
      const alg = line.slice(fieldsAt, colon)
      if (!Object.hasOwn(KERNEL_HASHES, alg)) return false
      const known = KERNEL_HASHES[alg] as { size: number }
      this.#alg = alg
      this.#algDigestLength = known.size
    }
    const hexLength = s4 - colon - 1
    const digestLength = this.#algDigestLength
    if (hexLength !== digestLength * 2) return false
    let name: string
    if (unsignedImaSig) {
      // "<digest> <name> <sig hex>": the name ends at the next space, and an empty sig leaves only that space
      const s5 = line.indexOf(' ', s4 + 1)
      if (s5 !== line.length - 1 || s5 === s4 + 1) return false
      name = line.slice(s4 + 1, s5)
    } else name = line.slice(s4 + 1)
    if (name === 'boot_aggregate') return false

    const fieldLength = algLength + 2 + digestLength
    const maxSize = 12 + fieldLength + name.length * 3 + 1
    if (this.#scratch.length < maxSize) {
      this.#scratch = Buffer.allocUnsafe(maxSize * 2)
      this.#views = []
    }
    const data = this.#scratch
    data.writeUInt32LE(fieldLength, 0)
    data.write(this.#alg, 4, 'latin1')
    data[4 + algLength] = 58 // ':'
    data[5 + algLength] = 0
    const digestHexText = line.slice(colon + 1, s4)
    if (data.write(digestHexText, 6 + algLength, 'hex') !== digestLength) return false
    const nameAt = 4 + fieldLength
    const nameBytes = data.write(name, nameAt + 4, 'utf8')
    data.writeUInt32LE(nameBytes + 1, nameAt)
    data[nameAt + 4 + nameBytes] = 0
    let length = nameAt + 5 + nameBytes
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
    // The digest lookup comes first: nearly every entry passes it, and excludes are only needed for the rest.
    if (policy !== null && lookupDigest(policy.digests, name, digestHexText) !== 'ok') {
      if (!policy.excludes?.test(name)) return false
    }
    const columnAlg = this.#columnAlg
    if (columnAlg === this.#bank) {
      const measurement = digestHex(columnAlg, templateData)
      if (measurement.length !== templateHashLength || !line.startsWith(measurement, 3)) return false
      out.write(measurement, offset, 'hex')
      return true
    }
    const templateHash = digestHex(columnAlg, templateData)
    if (templateHash.length !== templateHashLength || !line.startsWith(templateHash, 3)) return false
    out.write(digestLatin1(this.#bank, templateData), offset, 'latin1')
    return true
  }
}
