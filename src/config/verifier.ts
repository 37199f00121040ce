/**
 * `verifier.conf` `[verifier]` + `[revocations]` (keylime-config-and-cli.md §2.1). Options of features Keylime TS does
 * not implement are read so that turning one on is refused at start-up (`unimplemented.ts`).
 */
import type { LoadOptions } from './loader.ts'
import { type ConfigOf, type Flags, opt } from './schema.ts'
import { DURABLE_ATTESTATION_OPTIONS, PROBE_LISTENER_OPTIONS, SERVER_TLS_OPTIONS } from './shared-options.ts'
import { loadCheckedIniConfig } from './unimplemented.ts'

export const verifierSchema = {
  uuid: opt.string('default'),
  ip: opt.string('127.0.0.1'),
  port: opt.port(8881),
  ...PROBE_LISTENER_OPTIONS,
  registrar_ip: opt.string('127.0.0.1'),
  registrar_port: opt.port(8891),
  enable_agent_mtls: opt.bool(true),
  tls_dir: opt.string('generate'),
  ...SERVER_TLS_OPTIONS,
  client_key: opt.string('default'),
  client_cert: opt.string('default'),
  client_key_password: opt.string(''),
  trusted_server_ca: opt.list(['default']),
  authorization_provider: opt.string('simple'),
  database_url: opt.string('sqlite'),
  database_pool_sz_ovfl: opt.string('5,10'),
  auto_migrate_db: opt.bool(true),
  num_workers: opt.int(0),
  max_workers: opt.int(16),
  quote_interval: opt.float(2),
  retry_interval: opt.float(2),
  max_retries: opt.int(5),
  exponential_backoff: opt.bool(true),
  request_timeout: opt.float(60),
  /** Body limit of uploads that carry a policy: enrolment, runtime and measured-boot policies (upstream's). */
  max_upload_size: opt.int(104857600),
  /** Keylime TS: body limit of every other request (bytes). */
  max_body_size: opt.int(65536),
  /** Keylime TS: body limit of the public `POST /verify/evidence` (quote, logs and policies; bytes). */
  max_evidence_size: opt.int(8388608),
  /** Keylime TS: `POST /verify/evidence` calls one source address (IPv6: one /64) may make per window; 0 = no limit. */
  evidence_rate_limit_per_ip: opt.int(60),
  /** Keylime TS: that rate limit's window in seconds. */
  evidence_rate_limit_window_ip: opt.int(60),
  measured_boot_policy_name: opt.string('accept-all'),
  measured_boot_imports: opt.list([]),
  measured_boot_evaluate: opt.string('once'),
  severity_labels: opt.list(['info', 'notice', 'warning', 'error', 'critical', 'alert', 'emergency']),
  /** JSON list of `{event_id, severity_label}` rules. */
  severity_policy: opt.string('[{"event_id": ".*", "severity_label": "emergency"}]'),
  /** Read as upstream Keylime 7.x reads it, inverted (see `tomtou_violations`): False accepts, True fails. */
  ignore_tomtou_errors: opt.bool(false),
  /**
   * Keylime TS: what a ToMToU / open-writers violation in an IMA list does: `accept` (no event) or `fail`
   * (`ima.validation.tomtou`); wins over `ignore_tomtou_errors`. Empty: as upstream reads `ignore_tomtou_errors`.
   */
  tomtou_violations: opt.string(''),
  require_allow_list_signatures: opt.bool(false),
  ...DURABLE_ATTESTATION_OPTIONS,
  signed_attributes: opt.string(''),
  mode: opt.string('pull'),
  challenge_lifetime: opt.int(1800),
  verification_timeout: opt.int(0),
  nonce_lifetime: opt.int(60),
  session_create_rate_limit_per_ip: opt.int(50),
  session_create_rate_limit_window_ip: opt.int(60),
  session_create_rate_limit_per_agent: opt.int(15),
  session_create_rate_limit_window_agent: opt.int(60),
  session_lifetime: opt.int(180),
  extend_token_on_attestation: opt.bool(true),
  auto_recover_attestation_failures: opt.bool(false),
  /** Keylime TS: seconds without evidence before a push agent is failed as overdue; 0 = 5 x quote_interval. */
  push_evidence_timeout: opt.float(0),
  /** Keylime TS: send revocation notifications for failed push agents too (upstream sends none in push mode). */
  push_revocation_notifications: opt.bool(true),
  shutdown_drain_timeout: opt.float(10),
  /** Keylime TS: attestations in flight at once (bounds sockets and memory). */
  max_concurrency: opt.int(512),
  /**
   * Keylime TS: worker threads that evaluate evidence (quote signatures, boot-log and IMA replay, policies), so
   * every core attests; `auto` = one per core on machines with more than two cores, none on one or two (measured:
   * there the threads' hand-over costs more than the second core gives, docs/performance.md); 0 = on the event loop.
   */
  evidence_workers: opt.string('auto'),
  /**
   * Keylime TS: connections to agents kept open at most. Connections stay open between attestations when
   * quote_interval is 10 s or less and are closed after each reply (then resumed from the TLS session) above it;
   * past this many open ones, replies close their connection whatever the interval (docs/performance.md).
   */
  max_open_agent_connections: opt.int(20000),
  /** Keylime TS: seconds an agent's lease lasts in a shared database; renewed every third of it. */
  lease_seconds: opt.float(30),
  /**
   * Keylime TS: largest reply read from an agent, bytes. A whole ima-ng list of ~300,000 entries (a busy server's
   * first attestation after boot) is ~60 MB; UEFI logs are under 1 MB. Beyond it the attestation fails.
   */
  max_agent_response_size: opt.int(64 * 1024 * 1024),
  /** Keylime TS: bytes of agent replies buffered at once over all agents; beyond it a reply is retried later. */
  agent_response_memory_limit: opt.int(1024 * 1024 * 1024),
  enabled_revocation_notifications: opt.list(['agent'], { section: 'revocations' }),
  zmq_ip: opt.string('127.0.0.1', { section: 'revocations' }),
  zmq_port: opt.port(8992, { section: 'revocations' }),
  webhook_url: opt.string('', { section: 'revocations' }),
}
export type VerifierConfig = ConfigOf<typeof verifierSchema>

export const loadVerifierConfig = (opts: LoadOptions & { flags?: Flags<typeof verifierSchema> } = {}) =>
  loadCheckedIniConfig('verifier', verifierSchema, opts)
