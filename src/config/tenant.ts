/** `tenant.conf` `[tenant]` (keylime-config-and-cli.md §2.3); options Keylime TS does not implement are refused. */
import type { LoadOptions } from './loader.ts'
import { type ConfigOf, type Flags, opt } from './schema.ts'
import { loadCheckedIniConfig } from './unimplemented.ts'

export const tenantSchema = {
  verifier_ip: opt.string('127.0.0.1'),
  verifier_port: opt.port(8881),
  registrar_ip: opt.string('127.0.0.1'),
  registrar_port: opt.port(8891),
  tls_dir: opt.string('default'),
  enable_agent_mtls: opt.bool(true),
  client_key: opt.string('default'),
  client_cert: opt.string('default'),
  client_key_password: opt.string(''),
  trusted_server_ca: opt.list(['default']),
  tpm_cert_store: opt.string('/var/lib/keylime/tpm_cert_store'),
  max_payload_size: opt.int(1048576),
  accept_tpm_hash_algs: opt.list(['sha512', 'sha384', 'sha256']),
  accept_tpm_encryption_algs: opt.list(['ecc', 'rsa']),
  accept_tpm_signing_algs: opt.list(['ecschnorr', 'rsassa']),
  exponential_backoff: opt.bool(true),
  retry_interval: opt.float(2),
  max_retries: opt.int(5),
  request_timeout: opt.float(60),
  require_ek_cert: opt.bool(true),
  ek_check_script: opt.string(''),
  mb_refstate: opt.string(''),
}
export type TenantConfig = ConfigOf<typeof tenantSchema>

export const loadTenantConfig = (opts: LoadOptions & { flags?: Flags<typeof tenantSchema> } = {}) =>
  loadCheckedIniConfig('tenant', tenantSchema, opts)
