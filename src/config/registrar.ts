/** `registrar.conf` `[registrar]` (keylime-config-and-cli.md §2.2) with upstream defaults. */
import type { LoadOptions } from './loader.ts'
import { type ConfigOf, type Flags, opt } from './schema.ts'
import { DURABLE_ATTESTATION_OPTIONS, PROBE_LISTENER_OPTIONS, SERVER_TLS_OPTIONS } from './shared-options.ts'
import { loadCheckedIniConfig } from './unimplemented.ts'

export const registrarSchema = {
  ip: opt.string('127.0.0.1'),
  port: opt.port(8890),
  tls_port: opt.port(8891),
  tls_dir: opt.string('default'),
  ...SERVER_TLS_OPTIONS,
  authorization_provider: opt.string('simple'),
  database_url: opt.string('sqlite'),
  database_pool_sz_ovfl: opt.string('5,10'),
  max_workers: opt.int(16),
  auto_migrate_db: opt.bool(true),
  ...DURABLE_ATTESTATION_OPTIONS,
  signed_attributes: opt.list(['ek_tpm', 'aik_tpm', 'ekcert']),
  tpm_identity: opt.string('default'),
  malformed_cert_action: opt.string('warn'),
  /** Max request body in bytes (not an upstream registrar option; registrations are a few KiB). */
  max_upload_size: opt.int(1048576),
  // Not upstream options (docs/registrar.md): the public port's protections.
  /** Registration/activation requests (POST, PUT) one source address (IPv6: one /64) may make per window; 0 = no limit. */
  registration_rate_limit_per_ip: opt.int(50),
  /** The rate-limit window in seconds. */
  registration_rate_limit_window_ip: opt.int(60),
  /** Seconds a registration may wait for its activation before it is dropped. */
  registration_challenge_lifetime: opt.int(300),
  /** Refuse registrations whose EK certificate is missing or does not chain to `tpm_cert_store`. */
  require_trusted_ek_cert: opt.bool(false),
  ...PROBE_LISTENER_OPTIONS,
  /** Read from tenant.conf upstream; carried here so the registrar can be given it directly. */
  tpm_cert_store: opt.string('/var/lib/keylime/tpm_cert_store', { section: 'tenant' }),
}
export type RegistrarConfig = ConfigOf<typeof registrarSchema>

/**
 * Upstream's registrar reads `tpm_cert_store` as the tenant's option (`config.get("tenant", "tpm_cert_store")`), so
 * `KEYLIME_TENANT_TPM_CERT_STORE` names its store too; the registrar's own `KEYLIME_REGISTRAR_TENANT_TPM_CERT_STORE`
 * wins over it, and both over `[tenant] tpm_cert_store` in the registrar's files.
 */
export function loadRegistrarConfig(opts: LoadOptions & { flags?: Flags<typeof registrarSchema> } = {}) {
  const env = opts.env ?? process.env
  const tenantStore = env.KEYLIME_TENANT_TPM_CERT_STORE
  const withStore =
    tenantStore === undefined || env.KEYLIME_REGISTRAR_TENANT_TPM_CERT_STORE !== undefined
      ? env
      : { ...env, KEYLIME_REGISTRAR_TENANT_TPM_CERT_STORE: tenantStore }
  return loadCheckedIniConfig('registrar', registrarSchema, { ...opts, env: withStore })
}
