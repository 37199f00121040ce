/** Push challenges cut from blocks of CSPRNG output: each distinct, and never changed once handed out. */
import { describe, expect, it } from 'vitest'
import { newChallenge } from '../../../src/verifier/push/tokens.ts'

describe('push challenges', () => {
  it('are 16 bytes, all distinct, and keep their value across refills of the block', () => {
    const first = newChallenge()
    const copy = Buffer.from(first)
    const seen = new Set<string>([first.toString('hex')])
    for (let i = 0; i < 2000; i++) {
      const c = newChallenge()
      expect(c.length).toBe(16)
      seen.add(c.toString('hex'))
    }
    expect(seen.size).toBe(2001)
    expect(first.equals(copy)).toBe(true)
    expect(first.equals(Buffer.alloc(16))).toBe(false)
  })
})
