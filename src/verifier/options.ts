/**
 * The verifier's effective settings (keylime-config-and-cli.md §2.1), already resolved from files, env and flags.
 * `verifierOptionsFrom` turns the flat `[verifier]`/`[revocations]` option maps into this typed object with
 * upstream's defaults, and rejects values the loop cannot run with.
 */
import { KeylimeError } from '../common/errors.ts'
import { DEFAULT_SEVERITY_LABELS, type SeverityRule } from '../evidence/verdict.ts'

export class VerifierConfigError extends KeylimeError {
  constructor(message: string) {
    super('ERR_VERIFIER_CONFIG', message)
  }
}

export interface VerifierOptions {
  verifierId: string
  ip: string
  port: number
  enableAgentMtls: boolean
  tlsDir: string
  databaseUrl: string
  quoteIntervalMs: number
  retryInterval: number
  maxRetries: number
  exponentialBackoff: boolean
  requestTimeoutMs: number
  maxUploadSize: number
  severityLabels: readonly string[]
  severityRules: readonly SeverityRule[]
  measuredBootEvaluate: 'once' | 'always'
  revocationChannels: readonly ('agent' | 'webhook' | 'zeromq')[]
  webhookUrl: string
  /** Attestations in flight at once (our own; bounds sockets and memory). */
  maxConcurrency: number
  /** Lease of an agent in the shared database; renewed every third of it. */
  leaseMs: number
  shutdownDrainTimeoutMs: number
}

export const DEFAULT_VERIFIER_OPTIONS: VerifierOptions = {
  verifierId: 'default',
  ip: '127.0.0.1',
  port: 8881,
  enableAgentMtls: true,
  tlsDir: 'generate',
  databaseUrl: 'sqlite',
  quoteIntervalMs: 2000,
  retryInterval: 2,
  maxRetries: 5,
  exponentialBackoff: true,
  requestTimeoutMs: 60_000,
  maxUploadSize: 104_857_600,
  severityLabels: DEFAULT_SEVERITY_LABELS,
  severityRules: [{ eventId: /.*/, label: 'emergency' }],
  measuredBootEvaluate: 'once',
  revocationChannels: ['agent'],
  webhookUrl: '',
  maxConcurrency: 512,
  leaseMs: 30_000,
  shutdownDrainTimeoutMs: 10_000,
}

function bool(name: string, v: string): boolean {
  const s = v.trim().toLowerCase()
  if (['true', 'yes', 'on', '1'].includes(s)) return true
  if (['false', 'no', 'off', '0'].includes(s)) return false
  throw new VerifierConfigError(`${name}: "${v}" is not a boolean`)
}

function num(name: string, v: string, min = 0): number {
  const n = Number(v.trim())
  if (!Number.isFinite(n) || n < min)
    throw new VerifierConfigError(`${name}: "${v}" is not a number >= ${min}`)
  return n
}

/** Python-literal or JSON list (`['a', 'b']`). */
export function parseListLiteral(name: string, v: string): unknown[] {
  const text = v.trim()
  if (text === '') return []
  try {
    const parsed = JSON.parse(
      text
        .replace(/'/g, '"')
        .replace(/\bTrue\b/g, 'true')
        .replace(/\bFalse\b/g, 'false'),
    )
    if (Array.isArray(parsed)) return parsed
  } catch {
    // fall through to the comma form
  }
  if (!text.startsWith('['))
    return text
      .split(',')
      .map((s) => s.trim())
      .filter((s) => s.length > 0)
  throw new VerifierConfigError(`${name}: "${v}" is not a list`)
}

const strip = (v: string) =>
  v
    .trim()
    .replace(/^"(.*)"$/, '$1')
    .trim()

/** Builds options from the `[verifier]` and `[revocations]` key/value maps (strings, as read from INI/env). */
export function verifierOptionsFrom(
  verifier: Readonly<Record<string, string>>,
  revocations: Readonly<Record<string, string>> = {},
): VerifierOptions {
  const o: VerifierOptions = { ...DEFAULT_VERIFIER_OPTIONS }
  const get = (k: string) => (verifier[k] === undefined ? undefined : strip(verifier[k] as string))
  const s = (k: string) => get(k)
  if (s('uuid')) o.verifierId = s('uuid') as string
  if (s('ip')) o.ip = s('ip') as string
  if (s('port')) o.port = num('port', s('port') as string, 1)
  if (s('enable_agent_mtls')) o.enableAgentMtls = bool('enable_agent_mtls', s('enable_agent_mtls') as string)
  if (s('tls_dir')) o.tlsDir = s('tls_dir') as string
  if (s('database_url')) o.databaseUrl = s('database_url') as string
  if (s('quote_interval')) o.quoteIntervalMs = num('quote_interval', s('quote_interval') as string) * 1000
  if (s('retry_interval')) o.retryInterval = num('retry_interval', s('retry_interval') as string)
  if (s('max_retries')) o.maxRetries = num('max_retries', s('max_retries') as string)
  if (s('exponential_backoff'))
    o.exponentialBackoff = bool('exponential_backoff', s('exponential_backoff') as string)
  if (s('request_timeout')) o.requestTimeoutMs = num('request_timeout', s('request_timeout') as string) * 1000
  if (s('max_upload_size')) o.maxUploadSize = num('max_upload_size', s('max_upload_size') as string, 1)
  if (s('measured_boot_evaluate')) {
    const v = s('measured_boot_evaluate')
    if (v !== 'once' && v !== 'always')
      throw new VerifierConfigError('measured_boot_evaluate: once or always')
    o.measuredBootEvaluate = v
  }
  if (s('severity_labels')) {
    const labels = parseListLiteral('severity_labels', s('severity_labels') as string)
    if (labels.length === 0 || !labels.every((l) => typeof l === 'string'))
      throw new VerifierConfigError('severity_labels: a non-empty list of strings')
    o.severityLabels = labels as string[]
  }
  if (s('severity_policy')) {
    const rules = parseListLiteral('severity_policy', s('severity_policy') as string)
    o.severityRules = rules.map((r, i) => {
      const rule = r as { event_id?: unknown; severity_label?: unknown }
      if (typeof rule?.event_id !== 'string' || typeof rule.severity_label !== 'string')
        throw new VerifierConfigError(`severity_policy[${i}]: needs event_id and severity_label`)
      if (!o.severityLabels.includes(rule.severity_label))
        throw new VerifierConfigError(`severity_policy[${i}]: unknown label ${rule.severity_label}`)
      try {
        return { eventId: new RegExp(rule.event_id), label: rule.severity_label }
      } catch {
        throw new VerifierConfigError(`severity_policy[${i}]: bad regex`)
      }
    })
  }
  if (s('max_concurrency')) o.maxConcurrency = num('max_concurrency', s('max_concurrency') as string, 1)
  if (s('lease_seconds')) o.leaseMs = num('lease_seconds', s('lease_seconds') as string, 1) * 1000
  if (s('shutdown_drain_timeout'))
    o.shutdownDrainTimeoutMs = num('shutdown_drain_timeout', s('shutdown_drain_timeout') as string) * 1000
  const chan = revocations.enabled_revocation_notifications
  if (chan !== undefined) {
    const list = parseListLiteral('enabled_revocation_notifications', strip(chan))
    for (const c of list)
      if (c !== 'agent' && c !== 'webhook' && c !== 'zeromq')
        throw new VerifierConfigError(`enabled_revocation_notifications: unknown channel ${String(c)}`)
    o.revocationChannels = list as VerifierOptions['revocationChannels']
  }
  if (revocations.webhook_url !== undefined) o.webhookUrl = strip(revocations.webhook_url)
  return o
}
