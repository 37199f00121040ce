/**
 * A policy's `digests` as bytes, for the fast path (`fast-path.ts`): it looks a file up by the name bytes it has
 * just written into the template data, with a hash it computed while copying them, and compares the digest bytes it
 * has just decoded. No string is made per entry, and a lookup touches two flat arrays instead of a Map entry, its key
 * string and its value string. Built once per compiled policy (lazily, kept beside it) and read-only after.
 *
 * Only what can match is indexed: names that are ASCII (the fast path hands other names to the Map) and digests
 * that are lowercase hex (a line's digest is compared as lowercase hex, so nothing else can ever equal it).
 */
import type { DigestIndex } from './policy.ts'

export const NAME_HASH_SEED = 0x811c9dc5 | 0

/** One FNV-1a step over a name's next byte. */
export function nameHashStep(hash: number, byte: number): number {
  return Math.imul(hash ^ byte, 0x01000193)
}

const LOWER_HEX_DIGIT = /^(?:[0-9a-f]{2})*$/
const ASCII = /^[\x00-\x7f]*$/

const built = new WeakMap<DigestIndex, DigestByteIndex>()

export class DigestByteIndex {
  /**
   * Open addressing, two numbers per slot: the name's hash and 1 + where its record starts in `#bytes` (0: empty).
   * A record is the name's length (two bytes), its number of digests, the name, then each digest as one length byte
   * and the digest: one lookup reads one slot and one record, mostly one cache line each.
   */
  readonly #slots: Int32Array
  readonly #mask: number
  readonly #bytes: Uint8Array

  /** The index of `digests`, built on first use. */
  static of(policy: { readonly digests: DigestIndex }): DigestByteIndex {
    let index = built.get(policy.digests)
    if (index === undefined) {
      index = new DigestByteIndex(policy.digests)
      built.set(policy.digests, index)
    }
    return index
  }

  private constructor(digests: DigestIndex) {
    const names: string[] = []
    const lists: string[][] = []
    let size = 0
    for (const [name, allowed] of digests) {
      if (name.length > 0xffff || !ASCII.test(name)) continue
      const usable = (typeof allowed === 'string' ? [allowed] : allowed)
        .filter((d) => d.length <= 510 && LOWER_HEX_DIGIT.test(d))
        .slice(0, 255) // a miss only sends the entry to the general path
      names.push(name)
      lists.push(usable)
      size += 3 + name.length
      for (const d of usable) size += 1 + d.length / 2
    }
    let capacity = 16
    while (capacity < names.length * 2) capacity *= 2
    const slots = new Int32Array(capacity * 2)
    const mask = capacity - 1
    const bytes = new Uint8Array(size)
    let at = 0
    for (let e = 0; e < names.length; e++) {
      const name = names[e] as string
      const usable = lists[e] as string[]
      const record = at
      bytes[at++] = name.length & 0xff
      bytes[at++] = name.length >>> 8
      bytes[at++] = usable.length
      let hash = NAME_HASH_SEED
      for (let i = 0; i < name.length; i++) {
        const c = name.charCodeAt(i)
        bytes[at++] = c
        hash = nameHashStep(hash, c)
      }
      for (const d of usable) {
        bytes[at++] = d.length / 2
        for (let i = 0; i < d.length; i += 2) bytes[at++] = Number.parseInt(d.slice(i, i + 2), 16)
      }
      let slot = hash & mask
      while (slots[slot * 2 + 1] !== 0) slot = (slot + 1) & mask
      slots[slot * 2] = hash
      slots[slot * 2 + 1] = record + 1
    }
    this.#slots = slots
    this.#mask = mask
    this.#bytes = bytes
  }

  /**
   * Reads the slots and records `hashes[0, count)` lead to, all at once, so that their cache misses overlap instead
   * of stalling one lookup after another (a 100,000-path index is far larger than the caches, and a real list
   * visits it in no useful order). Only a hint: returns a number made from what it read, for the caller to keep.
   */
  touch(hashes: Int32Array, count: number, records: Int32Array): number {
    const slots = this.#slots
    const bytes = this.#bytes
    const mask = this.#mask
    for (let j = 0; j < count; j++) records[j] = slots[((hashes[j] as number) & mask) * 2 + 1] as number
    let sink = 0
    for (let j = 0; j < count; j++) {
      const record = records[j] as number
      if (record > 0) sink += ((bytes[record - 1] as number) + (bytes[record + 63] as number)) | 0
    }
    return sink
  }

  /**
   * Whether the policy allows the digest `data[digestAt, +digestLength)` for the ASCII name
   * `data[nameAt, +nameLength)` whose hash (`nameHashStep` from `NAME_HASH_SEED`) is `hash`.
   */
  allows(
    data: Uint8Array,
    nameAt: number,
    nameLength: number,
    hash: number,
    digestAt: number,
    digestLength: number,
  ): boolean {
    const slots = this.#slots
    const bytes = this.#bytes
    const mask = this.#mask
    for (let slot = hash & mask; ; slot = (slot + 1) & mask) {
      const record = (slots[slot * 2 + 1] as number) - 1
      if (record < 0) return false
      if (slots[slot * 2] !== hash) continue
      if ((bytes[record] as number) + ((bytes[record + 1] as number) << 8) !== nameLength) continue
      const nameStart = record + 3
      let i = 0
      while (i < nameLength && bytes[nameStart + i] === data[nameAt + i]) i++
      if (i !== nameLength) continue
      let p = nameStart + nameLength
      for (let n = bytes[record + 2] as number; n > 0; n--) {
        const length = bytes[p] as number
        p++
        if (length === digestLength) {
          let k = 0
          while (k < length && bytes[p + k] === data[digestAt + k]) k++
          if (k === length) return true
        }
        p += length
      }
      return false
    }
  }
}
