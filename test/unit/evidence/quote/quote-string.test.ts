import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { QuoteFormatError } from '../../../../src/evidence/quote/errors.ts'
import { formatQuoteString, parseQuoteString } from '../../../../src/evidence/quote/quote-string.ts'

describe('quote string', () => {
  it('round-trips r<b64>:<b64>:<b64>', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 1, maxLength: 300 }),
        fc.uint8Array({ minLength: 1, maxLength: 600 }),
        fc.uint8Array({ maxLength: 700 }),
        (attest, signature, pcrBlob) => {
          const s = formatQuoteString({ attest, signature, pcrBlob })
          expect(s[0]).toBe('r')
          expect(parseQuoteString(s)).toEqual({ attest, signature, pcrBlob })
        },
      ),
    )
  })

  it('decodes a known string', () => {
    expect(parseQuoteString('rAAE=:AgM=:BA==')).toEqual({
      attest: new Uint8Array([0, 1]),
      signature: new Uint8Array([2, 3]),
      pcrBlob: new Uint8Array([4]),
    })
  })

  it.each([
    ['wrong prefix', 'xAAE=:AgM=:BA==', /start with 'r'/],
    ['two parts', 'rAAE=:AgM=', /3 ':'-separated parts, got 2/],
    ['four parts', 'rAAE=:AgM=:BA==:BA==', /got 4/],
    ['bad base64', 'rAA*E:AgM=:BA==', /TPMS_ATTEST is not valid base64/],
    ['unpadded base64', 'rAAE:AgM=:BA==', /not valid base64/],
    ['empty attest', 'r:AgM=:BA==', /empty/],
    ['empty string', '', /start with 'r'/],
  ])('rejects %s', (_name, input, msg) => {
    expect(() => parseQuoteString(input)).toThrow(QuoteFormatError)
    expect(() => parseQuoteString(input)).toThrow(msg)
  })

  it('only throws QuoteFormatError on arbitrary strings', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 200 }), (s) => {
        try {
          parseQuoteString(`r${s}`)
        } catch (e) {
          expect(e).toBeInstanceOf(QuoteFormatError)
        }
      }),
    )
  })
})
