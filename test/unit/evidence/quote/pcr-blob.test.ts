import { createHash } from 'node:crypto'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { QuoteFormatError } from '../../../../src/evidence/quote/errors.ts'
import { HASH_ALG_SIZES, type QuoteHashAlg } from '../../../../src/evidence/quote/hash-alg.ts'
import {
  encodePcrBlob,
  type PcrBlob,
  parsePcrBlob,
  pcrBank,
} from '../../../../src/evidence/quote/pcr-blob.ts'

const digest = (alg: 'sha1' | 'sha256', s: string) => new Uint8Array(createHash(alg).update(s).digest())

const algs: QuoteHashAlg[] = ['sha1', 'sha256', 'sha384', 'sha512']
const blobArb: fc.Arbitrary<PcrBlob> = fc
  .uniqueArray(fc.constantFrom(...algs), { minLength: 0, maxLength: 4 })
  .chain((bankAlgs) =>
    fc.tuple(
      ...bankAlgs.map((hashAlg) =>
        fc.uniqueArray(fc.integer({ min: 0, max: 23 }), { maxLength: 24 }).chain((pcrs) =>
          fc
            .tuple(
              ...pcrs.map(() =>
                fc.uint8Array({ minLength: HASH_ALG_SIZES[hashAlg], maxLength: HASH_ALG_SIZES[hashAlg] }),
              ),
            )
            .map((values) => ({
              hashAlg,
              values: new Map(pcrs.sort((a, b) => a - b).map((p, i) => [p, values[i] as Uint8Array])),
            })),
        ),
      ),
    ),
  )
  .map((banks) => ({ banks }))

describe('PCR blob', () => {
  it('has the tpm2-tools layout: LE header, 16 selection slots, 532-byte digest lists', () => {
    const values = new Map<number, Uint8Array>()
    for (let pcr = 0; pcr < 10; pcr++) values.set(pcr, digest('sha256', `pcr${pcr}`))
    const blob = encodePcrBlob({ banks: [{ hashAlg: 'sha256', values }] })
    expect(blob.length).toBe(4 + 16 * 8 + 4 + 2 * 532)
    expect([...blob.subarray(0, 4)]).toEqual([1, 0, 0, 0])
    // selection slot 0: alg 0x000b LE, sizeofSelect 3, bitmap PCR0-9 = ff 03 00
    expect([...blob.subarray(4, 12)]).toEqual([0x0b, 0, 3, 0xff, 0x03, 0, 0, 0])
    expect([...blob.subarray(132, 136)]).toEqual([2, 0, 0, 0])
    expect([...blob.subarray(136, 140)]).toEqual([8, 0, 0, 0])
    expect([...blob.subarray(140, 142)]).toEqual([32, 0])
    expect(Buffer.from(blob.subarray(142, 174)).equals(Buffer.from(values.get(0) as Uint8Array))).toBe(true)
    expect([...blob.subarray(136 + 532, 136 + 536)]).toEqual([2, 0, 0, 0])
    const parsed = parsePcrBlob(blob)
    expect([...(pcrBank(parsed, 'sha256')?.keys() ?? [])]).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    expect(pcrBank(parsed, 'sha1')).toBeUndefined()
  })

  it('round-trips any set of banks', () => {
    fc.assert(
      fc.property(blobArb, (blob) => {
        const parsed = parsePcrBlob(encodePcrBlob(blob))
        expect(parsed.banks.map((b) => [b.hashAlg, [...b.values.entries()]])).toEqual(
          blob.banks.map((b) => [b.hashAlg, [...b.values.entries()]]),
        )
      }),
      { numRuns: 200 },
    )
  })

  it('rejects truncated, extended and inconsistent blobs with QuoteFormatError', () => {
    const values = new Map([[16, digest('sha1', 'x')]])
    const good = encodePcrBlob({ banks: [{ hashAlg: 'sha1', values }] })
    const expectFormat = (b: Uint8Array, msg: RegExp) => {
      const err = (() => {
        try {
          parsePcrBlob(b)
        } catch (e) {
          return e
        }
      })()
      expect(err).toBeInstanceOf(QuoteFormatError)
      expect((err as QuoteFormatError).code).toBe('ERR_QUOTE_FORMAT')
      expect((err as Error).message).toMatch(msg)
    }
    expectFormat(good.subarray(0, good.length - 1), /exactly/)
    expectFormat(new Uint8Array([...good, 0]), /exactly/)
    expectFormat(good.subarray(0, 100), /too short/)
    const badSize = good.slice()
    badSize[6] = 4 // sizeofSelect
    expectFormat(badSize, /sizeofSelect/)
    const badAlg = good.slice()
    badAlg[4] = 0x99
    expectFormat(badAlg, /unknown hash/)
    const badDigestLen = good.slice()
    badDigestLen[140] = 32
    expectFormat(badDigestLen, /expected 20/)
    const tooManyDigests = good.slice()
    tooManyDigests[136] = 2
    expectFormat(tooManyDigests, /more digests/)
    const tooFew = good.slice()
    tooFew[136] = 0
    expectFormat(tooFew, /0 digests for 1/)
  })

  it('only ever throws QuoteFormatError on random or mutated input', () => {
    const seed = encodePcrBlob({
      banks: [
        { hashAlg: 'sha1', values: new Map([[0, digest('sha1', 'a')]]) },
        { hashAlg: 'sha256', values: new Map([[10, digest('sha256', 'b')]]) },
      ],
    })
    const mutated = fc
      .array(fc.tuple(fc.nat(seed.length - 1), fc.integer({ min: 0, max: 255 })), { maxLength: 6 })
      .map((edits) => {
        const b = seed.slice()
        for (const [i, v] of edits) b[i] = v
        return b
      })
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 1300 }), mutated), (bytes) => {
        try {
          parsePcrBlob(bytes)
        } catch (e) {
          expect(e).toBeInstanceOf(QuoteFormatError)
        }
      }),
      { numRuns: 2000 },
    )
  })

  it('refuses to encode values of the wrong size', () => {
    expect(() =>
      encodePcrBlob({ banks: [{ hashAlg: 'sha256', values: new Map([[1, new Uint8Array(20)]]) }] }),
    ).toThrow(QuoteFormatError)
  })
})
