/**
 * Per-source token buckets for public routes (the registrar's registration and activation, the verifier's
 * `/verify/evidence`): each source gets `limit` requests, refilled evenly over `windowMs`. IPv6 sources count per
 * /64, the smallest block one host is usually given, so an attacker cannot mint a fresh bucket per address. Idle
 * buckets are forgotten, and the table is bounded so a flood of sources cannot grow it without limit.
 */
import { isIPv4, isIPv6 } from 'node:net'

export interface RateLimitOptions {
  /** Requests a source may make per window (also the burst size). */
  limit: number
  windowMs: number
  /** Most sources tracked at once. */
  maxSources?: number
}

export type Admission =
  | { admitted: true }
  | { admitted: false; retryAfterSeconds: number; firstRefusal: boolean }

interface Bucket {
  tokens: number
  at: number
  refused: boolean
}

/** Expands an IPv6 address into its eight 16-bit groups (embedded IPv4 included); null when malformed. */
function ipv6Groups(address: string): number[] | null {
  let text = address.split('%')[0] ?? ''
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text)
  if (v4?.[1]) {
    const bytes = v4[1].split('.').map(Number)
    const [a = 0, b = 0, c = 0, d = 0] = bytes
    text = `${text.slice(0, -v4[1].length)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`
  }
  const halves = text.split('::')
  if (halves.length > 2) return null
  const parse = (s: string) => (s === '' ? [] : s.split(':').map((g) => Number.parseInt(g, 16)))
  const head = parse(halves[0] ?? '')
  const tail = halves.length === 2 ? parse(halves[1] ?? '') : []
  const fill = 8 - head.length - tail.length
  if (fill < 0 || (halves.length === 1 && fill !== 0)) return null
  const groups = [...head, ...Array(halves.length === 2 ? fill : 0).fill(0), ...tail]
  return groups.every((g) => Number.isInteger(g) && g >= 0 && g <= 0xffff) ? groups : null
}

/** The bucket a source address counts against: the IPv4 address (also when IPv4-mapped), else the IPv6 /64. */
export function rateLimitKey(address: string): string {
  if (isIPv4(address)) return address
  if (!isIPv6(address)) return address
  const groups = ipv6Groups(address)
  if (groups === null) return address
  const mapped = groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff
  if (mapped) {
    const [hi = 0, lo = 0] = groups.slice(6)
    return [hi >> 8, hi & 0xff, lo >> 8, lo & 0xff].join('.')
  }
  return `${groups
    .slice(0, 4)
    .map((g) => g.toString(16))
    .join(':')}::/64`
}

export class SourceRateLimiter {
  private readonly buckets = new Map<string, Bucket>()
  private readonly perMs: number
  private readonly maxSources: number

  constructor(private readonly opts: RateLimitOptions) {
    if (!(opts.limit >= 1) || !(opts.windowMs > 0))
      throw new RangeError('rate limit needs limit >= 1 and a window')
    this.perMs = opts.limit / opts.windowMs
    this.maxSources = opts.maxSources ?? 100_000
  }

  /** Takes one token from the source's bucket, or says how long until one is available. */
  admit(address: string, now: number): Admission {
    const key = rateLimitKey(address)
    let bucket = this.buckets.get(key)
    if (bucket === undefined) {
      if (this.buckets.size >= this.maxSources) this.forgetIdle(now)
      bucket = { tokens: this.opts.limit, at: now, refused: false }
      this.buckets.set(key, bucket)
    } else {
      bucket.tokens = Math.min(this.opts.limit, bucket.tokens + Math.max(0, now - bucket.at) * this.perMs)
      bucket.at = now
    }
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1
      bucket.refused = false
      return { admitted: true }
    }
    const firstRefusal = !bucket.refused
    bucket.refused = true
    return {
      admitted: false,
      retryAfterSeconds: Math.max(1, Math.ceil((1 - bucket.tokens) / this.perMs / 1000)),
      firstRefusal,
    }
  }

  get trackedSources(): number {
    return this.buckets.size
  }

  /**
   * Drops buckets that have refilled completely (they hold nothing a new bucket would not), then the oldest until a
   * tenth of the table is free, so a flood of sources pays for this scan once per many requests, not on each.
   */
  private forgetIdle(now: number): void {
    for (const [key, b] of this.buckets) {
      if (b.tokens + (now - b.at) * this.perMs >= this.opts.limit) this.buckets.delete(key)
    }
    while (this.buckets.size > this.maxSources * 0.9) {
      const oldest = this.buckets.keys().next().value
      if (oldest === undefined) break
      this.buckets.delete(oldest)
    }
  }
}
