/**
 * The verifier's effective settings (keylime-config-and-cli.md §2.1), already resolved from files, env and flags.
 * `verifierOptionsFrom` turns the flat `[verifier]`/`[revocations]` option maps into this typed object with
 * upstream's defaults, and rejects values the loop cannot run with.
 */
import { KeylimeError } from '../common/errors.ts'
import type { VerifierConfig } from '../config/verifier.ts'
import { MB_POLICY_ENGINES, type MbPolicyEngine } from '../evidence/mb/index.ts'
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
  /** Body limit of policy uploads (enrolment, allowlists, mbpolicies). */
  maxUploadSize: number
  /** Body limit of every other request. */
  maxBodySize: number
  /** Body limit of the public `/verify/evidence`. */
  maxEvidenceSize: number
  severityLabels: readonly string[]
  severityRules: readonly SeverityRule[]
  measuredBootEvaluate: 'once' | 'always'
  /** `measured_boot_policy_name`: accept-all, reject-all or example. */
  mbPolicyEngine: MbPolicyEngine
  /** Upstream's option, taken by its name: true = ToMToU/violation entries are not failures. */
  ignoreTomtouErrors: boolean
  /** Runtime policies must be DSSE envelopes signed by the supplied `runtime_policy_key`. */
  requireAllowListSignatures: boolean
  revocationChannels: readonly ('agent' | 'webhook' | 'zeromq')[]
  webhookUrl: string
  /** Attestations in flight at once (our own; bounds sockets and memory). */
  maxConcurrency: number
  /** Lease of an agent in the shared database; renewed every third of it. */
  leaseMs: number
  shutdownDrainTimeoutMs: number
  /** `POST /verify/evidence` calls per source address per window (0 = unlimited) and the window in ms. */
  evidenceRateLimit: { limit: number; windowMs: number }
  /** Largest agent reply read (`max_agent_response_size`); a larger one fails the attestation. */
  maxAgentResponseBytes: number
  /** Agent reply bytes buffered at once over the whole fleet (`agent_response_memory_limit`). */
  agentResponseMemoryLimit: number
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
  maxBodySize: 65_536,
  maxEvidenceSize: 8_388_608,
  severityLabels: DEFAULT_SEVERITY_LABELS,
  severityRules: [{ eventId: /.*/, label: 'emergency' }],
  measuredBootEvaluate: 'once',
  mbPolicyEngine: 'accept-all',
  ignoreTomtouErrors: true,
  requireAllowListSignatures: false,
  revocationChannels: ['agent'],
  webhookUrl: '',
  maxConcurrency: 512,
  leaseMs: 30_000,
  shutdownDrainTimeoutMs: 10_000,
  evidenceRateLimit: { limit: 60, windowMs: 60_000 },
  maxAgentResponseBytes: 64 * 1024 * 1024,
  agentResponseMemoryLimit: 1024 * 1024 * 1024,
}

/** Builds the loop's options from the loaded `[verifier]` + `[revocations]` config; rejects unusable values. */
export function verifierOptionsFromConfig(c: VerifierConfig): VerifierOptions {
  if (c.measured_boot_evaluate !== 'once' && c.measured_boot_evaluate !== 'always')
    throw new VerifierConfigError('measured_boot_evaluate must be once or always')
  if (c.severity_labels.length === 0) throw new VerifierConfigError('severity_labels must not be empty')
  let rules: unknown
  try {
    rules = JSON.parse(c.severity_policy.replace(/'/g, '"'))
  } catch {
    throw new VerifierConfigError('severity_policy is not a JSON list')
  }
  if (!Array.isArray(rules)) throw new VerifierConfigError('severity_policy is not a JSON list')
  const severityRules = rules.map((r, i) => {
    const rule = r as { event_id?: unknown; severity_label?: unknown }
    if (typeof rule?.event_id !== 'string' || typeof rule.severity_label !== 'string')
      throw new VerifierConfigError(`severity_policy[${i}] needs event_id and severity_label`)
    if (!c.severity_labels.includes(rule.severity_label))
      throw new VerifierConfigError(`severity_policy[${i}]: unknown label ${rule.severity_label}`)
    try {
      return { eventId: new RegExp(rule.event_id), label: rule.severity_label }
    } catch {
      throw new VerifierConfigError(`severity_policy[${i}]: bad regex ${rule.event_id}`)
    }
  })
  const channels = c.enabled_revocation_notifications
  for (const ch of channels)
    if (ch !== 'agent' && ch !== 'webhook' && ch !== 'zeromq')
      throw new VerifierConfigError(`enabled_revocation_notifications: unknown channel ${ch}`)
  if (c.quote_interval < 0 || c.retry_interval < 0 || c.max_retries < 0 || c.request_timeout <= 0)
    throw new VerifierConfigError(
      'quote_interval, retry_interval, max_retries must be >= 0, request_timeout > 0',
    )
  if (!(MB_POLICY_ENGINES as readonly string[]).includes(c.measured_boot_policy_name))
    throw new VerifierConfigError(
      `measured_boot_policy_name ${c.measured_boot_policy_name} is not one of ${MB_POLICY_ENGINES.join(', ')}`,
    )
  for (const [name, v] of [
    ['max_upload_size', c.max_upload_size],
    ['max_body_size', c.max_body_size],
    ['max_evidence_size', c.max_evidence_size],
  ] as const)
    if (!Number.isSafeInteger(v) || v < 1024)
      throw new VerifierConfigError(`${name} must be at least 1024 bytes`)
  if (!['', 'accept', 'fail'].includes(c.tomtou_violations))
    throw new VerifierConfigError(
      `tomtou_violations ${JSON.stringify(c.tomtou_violations)} is not accept or fail (or empty: as ignore_tomtou_errors)`,
    )
  if (c.max_concurrency < 1) throw new VerifierConfigError('max_concurrency must be >= 1')
  if (c.lease_seconds <= 0) throw new VerifierConfigError('lease_seconds must be > 0')
  if (c.evidence_rate_limit_per_ip < 0 || c.evidence_rate_limit_window_ip <= 0)
    throw new VerifierConfigError(
      'evidence_rate_limit_per_ip must be >= 0 and evidence_rate_limit_window_ip > 0',
    )
  if (c.max_agent_response_size < 1024 || c.agent_response_memory_limit < c.max_agent_response_size)
    throw new VerifierConfigError(
      'max_agent_response_size must be >= 1024 and agent_response_memory_limit >= max_agent_response_size',
    )
  return {
    verifierId: c.uuid,
    ip: c.ip,
    port: c.port,
    enableAgentMtls: c.enable_agent_mtls,
    tlsDir: c.tls_dir,
    databaseUrl: c.database_url,
    quoteIntervalMs: c.quote_interval * 1000,
    retryInterval: c.retry_interval,
    maxRetries: c.max_retries,
    exponentialBackoff: c.exponential_backoff,
    requestTimeoutMs: c.request_timeout * 1000,
    maxUploadSize: c.max_upload_size,
    maxBodySize: c.max_body_size,
    maxEvidenceSize: c.max_evidence_size,
    severityLabels: c.severity_labels,
    severityRules,
    measuredBootEvaluate: c.measured_boot_evaluate,
    mbPolicyEngine: c.measured_boot_policy_name as MbPolicyEngine,
    ignoreTomtouErrors: tomtouViolationsAccepted(c),
    requireAllowListSignatures: c.require_allow_list_signatures,
    revocationChannels: channels as VerifierOptions['revocationChannels'],
    webhookUrl: c.webhook_url,
    maxConcurrency: c.max_concurrency,
    leaseMs: c.lease_seconds * 1000,
    shutdownDrainTimeoutMs: c.shutdown_drain_timeout * 1000,
    evidenceRateLimit: {
      limit: c.evidence_rate_limit_per_ip,
      windowMs: c.evidence_rate_limit_window_ip * 1000,
    },
    maxAgentResponseBytes: c.max_agent_response_size,
    agentResponseMemoryLimit: c.agent_response_memory_limit,
  }
}

/**
 * Whether ToMToU / open-writers violations pass. `tomtou_violations` says it plainly; without it
 * `ignore_tomtou_errors` is read as upstream Keylime 7.x reads it, inverted: its shipped value False accepts them and
 * True fails them, so a fleet moved over with its configuration is judged as before (docs/upgrade-from-upstream.md).
 */
export function tomtouViolationsAccepted(
  c: Pick<VerifierConfig, 'tomtou_violations' | 'ignore_tomtou_errors'>,
): boolean {
  if (c.tomtou_violations === 'accept') return true
  if (c.tomtou_violations === 'fail') return false
  return !c.ignore_tomtou_errors
}

/** The start-up warning for a configuration that relies on upstream's inverted reading, or null. */
export function tomtouWarning(
  c: Pick<VerifierConfig, 'tomtou_violations' | 'ignore_tomtou_errors'>,
): string | null {
  if (c.tomtou_violations !== '') return null
  return c.ignore_tomtou_errors
    ? 'ignore_tomtou_errors = True: ToMToU/open-writers violations FAIL attestation, as upstream Keylime 7.x reads ' +
        'this option (inverted). Set tomtou_violations = fail (or accept) to say what you mean.'
    : 'ignore_tomtou_errors = False: ToMToU/open-writers violations are ACCEPTED, as upstream Keylime 7.x reads ' +
        'this option (inverted). Set tomtou_violations = accept to keep this, or fail to report them.'
}
