/**
 * The `POST /sessions` limits (keylime-api.md §4.1): at most `limit` requests per key (client address or agent id)
 * in a fixed window; a key that goes over is blocked for 60 s, doubling with each further violation, at most an
 * hour. Kept per process: in a group of verifiers each counts what it sees (a client spread over N verifiers gets
 * at most N times the limit). Bounded: idle keys are forgotten, and beyond `maxKeys` the oldest are dropped.
 */
import { rateLimitKey } from '../../api/rate-limit.ts'

interface Entry {
  windowStart: number
  count: number
  violations: number
  blockedUntil: number
}

const BLOCK_BASE_MS = 60_000
const BLOCK_MAX_MS = 3_600_000

export class EscalatingRateLimiter {
  private readonly entries = new Map<string, Entry>()

  constructor(
    private readonly limit: number,
    private readonly windowMs: number,
    private readonly maxKeys = 100_000,
  ) {}

  /** null when admitted; otherwise the seconds to wait. `limit = 0` admits everything. */
  check(key: string, now: number): number | null {
    if (this.limit <= 0) return null
    let e = this.entries.get(key)
    if (e === undefined) {
      if (this.entries.size >= this.maxKeys) this.evict(now)
      e = { windowStart: now, count: 0, violations: 0, blockedUntil: 0 }
      this.entries.set(key, e)
    }
    if (e.blockedUntil > now) return Math.ceil((e.blockedUntil - now) / 1000)
    if (now - e.windowStart >= this.windowMs) {
      e.windowStart = now
      e.count = 0
    }
    e.count++
    if (e.count <= this.limit) return null
    e.violations++
    const block = Math.min(BLOCK_MAX_MS, BLOCK_BASE_MS * 2 ** (e.violations - 1))
    e.blockedUntil = now + block
    return Math.ceil(block / 1000)
  }

  private evict(now: number): void {
    for (const [k, e] of this.entries)
      if (e.blockedUntil <= now && now - e.windowStart >= this.windowMs) this.entries.delete(k)
    while (this.entries.size >= this.maxKeys) this.entries.delete(this.entries.keys().next().value as string)
  }
}

/** The per-address key: IPv6 sources count per /64 (as the other public routes). */
export const addressKey = (address: string) => `ip:${rateLimitKey(address)}`
