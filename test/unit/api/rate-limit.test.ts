import { describe, expect, it } from 'vitest'
import { rateLimitKey, SourceRateLimiter } from '../../../src/api/rate-limit.ts'

describe('rateLimitKey', () => {
  it('keys IPv4 by address, IPv4-mapped IPv6 as IPv4, IPv6 by its /64', () => {
    expect(rateLimitKey('192.0.2.1')).toBe('192.0.2.1')
    expect(rateLimitKey('::ffff:192.0.2.1')).toBe('192.0.2.1')
    expect(rateLimitKey('::ffff:c000:201')).toBe('192.0.2.1')
    expect(rateLimitKey('2001:db8:1:2::1')).toBe('2001:db8:1:2::/64')
    expect(rateLimitKey('2001:0db8:0001:0002:ffff:ffff:ffff:ffff')).toBe('2001:db8:1:2::/64')
    expect(rateLimitKey('2001:db8::1')).toBe('2001:db8:0:0::/64')
    expect(rateLimitKey('fe80::1%eth0')).toBe('fe80:0:0:0::/64')
    expect(rateLimitKey('::1')).toBe('0:0:0:0::/64')
    expect(rateLimitKey('::')).toBe('0:0:0:0::/64')
    // anything else (a Unix socket peer, a test transport) is its own bucket
    expect(rateLimitKey('')).toBe('')
    expect(rateLimitKey('not an address')).toBe('not an address')
  })
})

describe('SourceRateLimiter', () => {
  it('admits the burst, refuses beyond it with the wait until the next token, and refills', () => {
    const limiter = new SourceRateLimiter({ limit: 3, windowMs: 30_000 })
    const t = 1_000_000
    expect([1, 2, 3].map(() => limiter.admit('192.0.2.1', t).admitted)).toEqual([true, true, true])
    expect(limiter.admit('192.0.2.1', t)).toEqual({
      admitted: false,
      retryAfterSeconds: 10,
      firstRefusal: true,
    })
    expect(limiter.admit('192.0.2.1', t + 4_000)).toEqual({
      admitted: false,
      retryAfterSeconds: 6,
      firstRefusal: false,
    })
    expect(limiter.admit('198.51.100.1', t).admitted).toBe(true)
    expect(limiter.admit('192.0.2.1', t + 10_000).admitted).toBe(true)
    expect(limiter.admit('192.0.2.1', t + 10_000)).toMatchObject({ admitted: false, firstRefusal: true })
    // a long pause refills to the burst size, never beyond
    const later = t + 10 * 30_000
    expect([1, 2, 3, 4].map(() => limiter.admit('192.0.2.1', later).admitted)).toEqual([
      true,
      true,
      true,
      false,
    ])
  })

  it('tracks a bounded number of sources', () => {
    const limiter = new SourceRateLimiter({ limit: 2, windowMs: 60_000, maxSources: 100 })
    for (let i = 0; i < 10_000; i++) {
      limiter.admit(`10.0.${i >> 8}.${i & 255}`, 5_000 + i)
      limiter.admit(`10.0.${i >> 8}.${i & 255}`, 5_000 + i)
    }
    expect(limiter.trackedSources).toBeLessThanOrEqual(100)
    // the most recent sources are still held to their budget
    expect(limiter.admit('10.0.39.15', 15_000).admitted).toBe(false)
  })

  it('refuses a meaningless configuration', () => {
    expect(() => new SourceRateLimiter({ limit: 0, windowMs: 1000 })).toThrow(RangeError)
    expect(() => new SourceRateLimiter({ limit: 5, windowMs: 0 })).toThrow(RangeError)
  })
})
