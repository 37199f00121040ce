/** Option groups the registrar and the verifier both have, declared once (keylime-config-and-cli.md §2.1, §2.2). */
import { opt } from './schema.ts'

/** The HTTPS listener's own certificate and who may call it. */
export const SERVER_TLS_OPTIONS = {
  server_key: opt.string('default'),
  server_cert: opt.string('default'),
  server_key_password: opt.string(''),
  cert_subject_alternative_names: opt.list([]),
  trusted_client_ca: opt.list(['default']),
}

/** Upstream's durable attestation (not implemented: turning it on is refused, `unimplemented.ts`). */
export const DURABLE_ATTESTATION_OPTIONS = {
  durable_attestation_import: opt.string(''),
  persistent_store_url: opt.string(''),
  transparency_log_url: opt.string(''),
  time_stamp_authority_url: opt.string(''),
  time_stamp_authority_certs_path: opt.string(''),
  persistent_store_format: opt.string('json'),
  persistent_store_encoding: opt.string(''),
  transparency_log_sign_algo: opt.string('sha256'),
}

/** Keylime TS: plain-HTTP listener with only /healthz, /readyz and /metrics (docs/deploy.md); port 0 = off. */
export const PROBE_LISTENER_OPTIONS = {
  metrics_port: opt.int(0),
  metrics_ip: opt.string('127.0.0.1'),
}
