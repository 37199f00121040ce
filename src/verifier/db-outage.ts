/**
 * Database outages as the loop sees them: the first failed operation logs the real cause once (driver code and
 * message, the inner errors of an AggregateError such as ECONNREFUSED on every address), later failures only count,
 * and the first success afterwards logs how long it lasted and how many operations were retried.
 */
import type { Logger } from '../common/log.ts'

/** The driver's own words: message, code and nested causes (pg's AggregateError has an empty message). */
export function describeDbError(err: unknown): Record<string, unknown> {
  const e = err as { message?: string; code?: string; errors?: unknown[]; cause?: unknown }
  const out: Record<string, unknown> = { message: e?.message || String(err) }
  if (e?.code) out.code = e.code
  if (Array.isArray(e?.errors) && e.errors.length > 0)
    out.errors = e.errors.map((x) => (x as Error)?.message ?? String(x))
  if (e?.cause !== undefined) out.cause = (e.cause as Error)?.message ?? String(e.cause)
  return out
}

export class DbOutage {
  private since: number | null = null
  private failures = 0

  constructor(
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  get down(): boolean {
    return this.since !== null
  }

  /** Operations that failed during the current outage. */
  get failedOperations(): number {
    return this.failures
  }

  failed(err: unknown, operation: string): void {
    this.failures++
    if (this.since !== null) return
    this.since = this.now()
    this.log.error(
      { err: describeDbError(err), operation },
      'database unavailable: state changes are kept and retried until written',
    )
  }

  succeeded(): void {
    if (this.since === null) return
    this.log.warn(
      { outageMs: this.now() - this.since, failedOperations: this.failures },
      'database reachable again',
    )
    this.since = null
    this.failures = 0
  }
}
