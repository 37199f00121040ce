import { describe, expect, it } from 'vitest'
import { randomNonce } from '../../../src/verifier/nonce.ts'

describe('randomNonce', () => {
  it('gives alphanumeric nonces of the asked length, all different', () => {
    const seen = new Set<string>()
    for (let i = 0; i < 5000; i++) {
      const n = randomNonce(i % 2 === 0 ? 20 : 32)
      expect(n).toMatch(i % 2 === 0 ? /^[A-Za-z0-9]{20}$/ : /^[A-Za-z0-9]{32}$/)
      seen.add(n)
    }
    expect(seen.size).toBe(5000)
  })

  it('uses every character about equally often (no modulo bias towards the first ones)', () => {
    const counts = new Map<string, number>()
    const total = 62 * 2000
    let text = ''
    while (text.length < total) text += randomNonce(62)
    for (const c of text) counts.set(c, (counts.get(c) ?? 0) + 1)
    expect(counts.size).toBe(62)
    // Expected 2,000 each; with a plain `byte % 62` the first 8 characters would get ~2,420. The mean of 8 counts
    // has a standard deviation of ~16, so 100 is over 6 sigma.
    const first8 = [...'ABCDEFGH'].reduce((sum, c) => sum + (counts.get(c) ?? 0), 0) / 8
    const rest = [...counts.values()].reduce((a, b) => a + b, 0) / 62
    expect(Math.abs(first8 - rest)).toBeLessThan(100)
  })
})
