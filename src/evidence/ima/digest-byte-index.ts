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
  /** Open addressing: entry number + 1 per slot, 0 for an empty slot. */
  readonly #slots: Int32Array
  readonly #mask: number
  readonly #hash: Int32Array
  /** Where an entry's name bytes start in `#bytes`; its digests follow, each as one length byte and the digest. */
  readonly #at: Int32Array
  readonly #nameLength: Int32Array
  readonly #digestCount: Int32Array
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
      if (!ASCII.test(name)) continue
      const usable = (typeof allowed === 'string' ? [allowed] : allowed).filter(
        (d) => d.length <= 510 && LOWER_HEX_DIGIT.test(d),
      )
      names.push(name)
      lists.push(usable)
      size += name.length
      for (const d of usable) size += 1 + d.length / 2
    }
    const count = names.length
    let capacity = 16
    while (capacity < count * 2) capacity *= 2
    this.#slots = new Int32Array(capacity)
    this.#mask = capacity - 1
    this.#hash = new Int32Array(count)
    this.#at = new Int32Array(count)
    this.#nameLength = new Int32Array(count)
    this.#digestCount = new Int32Array(count)
    const bytes = new Uint8Array(size)
    this.#bytes = bytes
    let at = 0
    for (let e = 0; e < count; e++) {
      const name = names[e] as string
      let hash = NAME_HASH_SEED
      this.#at[e] = at
      for (let i = 0; i < name.length; i++) {
        const c = name.charCodeAt(i)
        bytes[at++] = c
        hash = nameHashStep(hash, c)
      }
      this.#hash[e] = hash
      this.#nameLength[e] = name.length
      const usable = lists[e] as string[]
      this.#digestCount[e] = usable.length
      for (const d of usable) {
        bytes[at++] = d.length / 2
        for (let i = 0; i < d.length; i += 2) bytes[at++] = Number.parseInt(d.slice(i, i + 2), 16)
      }
      let slot = hash & this.#mask
      while (this.#slots[slot] !== 0) slot = (slot + 1) & this.#mask
      this.#slots[slot] = e + 1
    }
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
    const bytes = this.#bytes
    const mask = this.#mask
    for (let slot = hash & mask; ; slot = (slot + 1) & mask) {
      const e = (this.#slots[slot] as number) - 1
      if (e < 0) return false
      if (this.#hash[e] !== hash || this.#nameLength[e] !== nameLength) continue
      let p = this.#at[e] as number
      let same = true
      for (let i = 0; i < nameLength; i++) {
        if (bytes[p + i] !== data[nameAt + i]) {
          same = false
          break
        }
      }
      if (!same) continue
      p += nameLength
      for (let n = this.#digestCount[e] as number; n > 0; n--) {
        const length = bytes[p] as number
        p++
        if (length === digestLength) {
          let i = 0
          while (i < length && bytes[p + i] === data[digestAt + i]) i++
          if (i === length) return true
        }
        p += length
      }
      return false
    }
  }
}
