/**
 * Verdicts of evidence checks, shared by quote, PCR, IMA and measured-boot verification (pull and push).
 * Policy failures are values, never thrown: a check returns `Verdict`; only malformed input raises a format error.
 * Event ids follow upstream Keylime's `keylime/failure.py` (`<component>[.<sub>…].<event>`), including the
 * upstream spelling `qoute_validation`.
 */
export type FailureComponent =
  | 'qoute_validation'
  | 'pcr_validation'
  | 'measured_boot'
  | 'ima'
  | 'internal'
  | 'tee_attestation'
  | 'default'

export interface FailureEvent {
  /** e.g. `ima.validation.ima-ng.not_in_allowlist` */
  eventId: string
  /** JSON-serialisable context; a plain message is `{ message }`. */
  context: Record<string, unknown>
  /** An irrecoverable event stops polling and is forced to the highest severity. */
  recoverable: boolean
}

export type Verdict = { ok: true } | { ok: false; events: FailureEvent[] }

export const PASS: Verdict = Object.freeze({ ok: true })

export function failure(
  eventId: string,
  context: string | Record<string, unknown>,
  recoverable = true,
): FailureEvent {
  return { eventId, context: typeof context === 'string' ? { message: context } : context, recoverable }
}

/** Combines verdicts of independent checks into one. */
export function combineVerdicts(verdicts: Iterable<Verdict>): Verdict {
  const events: FailureEvent[] = []
  for (const v of verdicts) if (!v.ok) events.push(...v.events)
  return events.length === 0 ? PASS : { ok: false, events }
}

export const DEFAULT_SEVERITY_LABELS = [
  'info',
  'notice',
  'warning',
  'error',
  'critical',
  'alert',
  'emergency',
] as const

export interface SeverityRule {
  eventId: RegExp
  label: string
}

/** Severity of one event under an ordered rule list (first full match wins; unmatched or irrecoverable → highest). */
export function severityOf(
  event: FailureEvent,
  rules: readonly SeverityRule[],
  labels: readonly string[],
): number {
  const highest = labels.length - 1
  if (!event.recoverable) return highest
  for (const rule of rules) {
    const m = rule.eventId.exec(event.eventId)
    if (m && m[0] === event.eventId) {
      const idx = labels.indexOf(rule.label)
      return idx < 0 ? highest : idx
    }
  }
  return highest
}
