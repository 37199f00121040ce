/**
 * The verifier's effective settings (keylime-config-and-cli.md §2.1), already resolved from files, env and flags.
 * `verifierOptionsFrom` turns the flat `[verifier]`/`[revocations]` option maps into this typed object with
 * upstream's defaults, and rejects values the loop cannot run with.
 */
import { availableParallelism } from 'node:os'
import { KeylimeError } from '../common/errors.ts'
import type { VerifierConfig } from '../config/verifier.ts'
import { MB_POLICY_ENGINES, type MbPolicyEngine } from '../evidence/mb/index.ts'
import { DEFAULT_SEVERITY_LABELS, type SeverityRule } from '../evidence/verdict.ts'

/**
 * `evidence_workers = auto`: one thread per core where there are more than two. On two cores, 10,000 agents at a
 * 2 s interval went 4,432 attestations/s at 242 µs each on the event loop against 4,120/s at 317 µs with two workers
 * (bench/fleet.ts): handing evidence to a thread and back costs more than the second core returns.
 */
export function autoEvidenceWorkers(cores = availableParallelism()): number {
  return cores > 2 ? cores : 0
}

export class VerifierConfigError extends KeylimeError {
  constructor(message: string) {
    super('ERR_VERIFIER_CONFIG', message)
  }
}

/** Push mode (API 3.0) settings (keylime-config-and-cli.md §2.1); read only when `mode = push`. */
export interface PushOptions {
  /** `challenge_lifetime`: how long evidence may be submitted after the capabilities. */
  challengeLifetimeMs: number
  /** `verification_timeout`: minimum time after evidence before a new attestation may start (0 = none). */
  verificationTimeoutMs: number
  /** `nonce_lifetime`: how long a PoP challenge may be answered. */
  nonceLifetimeMs: number
  /** `session_lifetime`: bearer token lifetime. */
  sessionLifetimeMs: number
  extendTokenOnAttestation: boolean
  autoRecoverAttestationFailures: boolean
  /** `POST /sessions` limits: per source address and per agent id, each a count per window (0 = none). */
  sessionRateLimit: { perIp: number; windowIpMs: number; perAgent: number; windowAgentMs: number }
  /** Without evidence for this long a push agent is failed as overdue (`push_evidence_timeout`). */
  evidenceTimeoutMs: number
  /** Revocation notifications for failed push agents (`push_revocation_notifications`). */
  revocationNotifications: boolean
}

export interface VerifierOptions {
  verifierId: string
  /** `pull`: the verifier polls agents; `push`: agents submit evidence over API 3.0 (the whole verifier). */
  mode: 'pull' | 'push'
  push: PushOptions
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
  /** Worker threads evaluating evidence; 0 = on the event loop. */
  evidenceWorkers: number
  /** Connections to agents kept open at most (`max_open_agent_connections`). */
  maxOpenAgentConnections: number
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

export const DEFAULT_PUSH_OPTIONS: PushOptions = {
  challengeLifetimeMs: 1_800_000,
  verificationTimeoutMs: 0,
  nonceLifetimeMs: 60_000,
  sessionLifetimeMs: 180_000,
  extendTokenOnAttestation: true,
  autoRecoverAttestationFailures: false,
  sessionRateLimit: { perIp: 50, windowIpMs: 60_000, perAgent: 15, windowAgentMs: 60_000 },
  evidenceTimeoutMs: 10_000,
  revocationNotifications: true,
}

export const DEFAULT_VERIFIER_OPTIONS: VerifierOptions = {
  verifierId: 'default',
  mode: 'pull',
  push: DEFAULT_PUSH_OPTIONS,
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
  evidenceWorkers: autoEvidenceWorkers(),
  maxOpenAgentConnections: 20_000,
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
  const evidenceWorkers =
    c.evidence_workers === 'auto'
      ? autoEvidenceWorkers()
      : /^\d+$/.test(c.evidence_workers)
        ? Number(c.evidence_workers)
        : -1
  if (evidenceWorkers < 0 || evidenceWorkers > 256)
    throw new VerifierConfigError('evidence_workers must be auto or a number of threads from 0 to 256')
  if (c.max_open_agent_connections < 0)
    throw new VerifierConfigError('max_open_agent_connections must be >= 0')
  if (c.lease_seconds <= 0) throw new VerifierConfigError('lease_seconds must be > 0')
  if (c.evidence_rate_limit_per_ip < 0 || c.evidence_rate_limit_window_ip <= 0)
    throw new VerifierConfigError(
      'evidence_rate_limit_per_ip must be >= 0 and evidence_rate_limit_window_ip > 0',
    )
  if (c.max_agent_response_size < 1024 || c.agent_response_memory_limit < c.max_agent_response_size)
    throw new VerifierConfigError(
      'max_agent_response_size must be >= 1024 and agent_response_memory_limit >= max_agent_response_size',
    )
  const mode = c.mode === '' ? 'pull' : c.mode
  if (mode !== 'pull' && mode !== 'push')
    throw new VerifierConfigError(`mode must be pull or push, not ${c.mode}`)
  for (const [name, v] of [
    ['challenge_lifetime', c.challenge_lifetime],
    ['nonce_lifetime', c.nonce_lifetime],
    ['session_lifetime', c.session_lifetime],
    ['session_create_rate_limit_window_ip', c.session_create_rate_limit_window_ip],
    ['session_create_rate_limit_window_agent', c.session_create_rate_limit_window_agent],
  ] as const)
    if (!(v > 0)) throw new VerifierConfigError(`${name} must be > 0`)
  if (
    c.verification_timeout < 0 ||
    c.push_evidence_timeout < 0 ||
    c.session_create_rate_limit_per_ip < 0 ||
    c.session_create_rate_limit_per_agent < 0
  )
    throw new VerifierConfigError(
      'verification_timeout, push_evidence_timeout and the session rate limits must be >= 0',
    )
  if (mode === 'push' && !Number.isInteger(c.quote_interval))
    throw new VerifierConfigError('quote_interval must be a whole number of seconds in push mode')
  return {
    verifierId: c.uuid,
    mode,
    push: {
      challengeLifetimeMs: c.challenge_lifetime * 1000,
      verificationTimeoutMs: c.verification_timeout * 1000,
      nonceLifetimeMs: c.nonce_lifetime * 1000,
      sessionLifetimeMs: c.session_lifetime * 1000,
      extendTokenOnAttestation: c.extend_token_on_attestation,
      autoRecoverAttestationFailures: c.auto_recover_attestation_failures,
      sessionRateLimit: {
        perIp: c.session_create_rate_limit_per_ip,
        windowIpMs: c.session_create_rate_limit_window_ip * 1000,
        perAgent: c.session_create_rate_limit_per_agent,
        windowAgentMs: c.session_create_rate_limit_window_agent * 1000,
      },
      // upstream's timeout of a push agent: five quote intervals
      evidenceTimeoutMs: (c.push_evidence_timeout || c.quote_interval * 5) * 1000,
      revocationNotifications: c.push_revocation_notifications,
    },
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
    evidenceWorkers,
    maxOpenAgentConnections: c.max_open_agent_connections,
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
