import { describe, expect, it } from 'vitest'
import { b64decode } from '../../../src/verifier/policy-input.ts'

/** The definition b64decode implements without scanning every character itself. */
const STANDARD_BASE64 = /^[A-Za-z0-9+/]*={0,2}$/

function decodes(v: string): Buffer | null {
  try {
    return b64decode('field', v)
  } catch (err) {
    expect(err).toMatchObject({ statusCode: 400, message: 'field is not valid base64' })
    return null
  }
}

describe('b64decode', () => {
  it('decodes standard base64, padded or not', () => {
    expect(decodes('aGVsbG8=')?.toString()).toBe('hello')
    expect(decodes('aGVsbG8')?.toString()).toBe('hello')
    expect(decodes('')?.length).toBe(0)
    const big = Buffer.from(Array.from({ length: 100_000 }, (_, i) => (i * 7) & 255))
    expect(decodes(big.toString('base64'))?.equals(big)).toBe(true)
  })

  it('refuses what the decoder would skip or read as something else', () => {
    for (const v of [
      'aGVs bG8=', // whitespace
      'aGVs\nbG8=',
      'aGVsbG8*',
      'aGV-bG8_', // base64url
      'aG=sbG8=', // padding inside
      'aGVsbG8===',
      'aGVsŁG8=', // beyond latin1: the decoder would read the low byte
      'aGVsé G8',
      '*', // one character past a whole group
      'aGVs*',
    ])
      expect(decodes(v), v).toBeNull()
  })

  it('accepts exactly what the standard alphabet accepts, with the same bytes', () => {
    const alphabet = 'AZaz09+/=-_ *\n.éŁ\u0000'
    let seed = 7
    const random = () => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff
      return seed
    }
    for (let i = 0; i < 50_000; i++) {
      let v = ''
      for (let n = random() % 12; n > 0; n--) v += alphabet[random() % alphabet.length]
      const got = decodes(v)
      expect(got !== null, JSON.stringify(v)).toBe(STANDARD_BASE64.test(v))
      if (got) expect(got.equals(Buffer.from(v, 'base64'))).toBe(true)
    }
  })
})
