import { describe, expect, it } from 'vitest'
import { iso } from '../../../src/verifier/push/json-api.ts'

describe('iso (push timestamps)', () => {
  it('is toISOString for every millisecond of a second, across second, day and year boundaries', () => {
    const starts = [
      0,
      999,
      Date.parse('2026-12-31T23:59:59.000Z'),
      Date.parse('2024-02-29T12:00:00.000Z'),
      8.64e15 - 2000,
    ]
    for (const start of starts)
      for (let ms = start; ms < start + 2001; ms++) expect(iso(ms)).toBe(new Date(ms).toISOString())
  })
  it('is toISOString for times it does not cache: before 1970, fractional, past year 9999', () => {
    for (const ms of [-1, -1001, 1.5, 253402300800000, Date.now() + 0.25])
      expect(iso(ms)).toBe(new Date(ms).toISOString())
  })
  it('a call for another second in between does not leak into the next one', () => {
    const a = Date.parse('2026-12-07T10:00:00.007Z')
    const b = Date.parse('2026-12-07T10:00:01.070Z')
    expect([iso(a), iso(b), iso(a + 100)]).toEqual([
      '2026-12-07T10:00:00.007Z',
      '2026-12-07T10:00:01.070Z',
      '2026-12-07T10:00:00.107Z',
    ])
  })
})
