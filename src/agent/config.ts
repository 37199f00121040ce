/**
 * Agent configuration (keylime-config-and-cli.md §1.2, §2.6), read by the pull agent (`keylime agent`) and the push
 * agent (`keylime push-agent`) from the same agent.conf: upstream option names and defaults, layered as
 * defaults < TOML files (`[agent]` table) < conf.d snippets < `KEYLIME_AGENT_<OPTION>` env < flags.
 * `KEYLIME_AGENT_CONFIG=<file>` (or an explicit `--config`) replaces the file set.
 */
import { isAbsolute, join } from 'node:path'
import { KeylimeError } from '../common/errors.ts'
import { loadAgentRaw } from '../config/loader.ts'
import { configuredDeviceIdTemplate, type DeviceIdOptions, parseSecureSize } from './option-checks.ts'

export class AgentConfigError extends KeylimeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_AGENT_CONFIG', message, options)
  }
}

/** The `[agent]` options (the device identity ones, `iak_*`/`idevid_*`, are declared in option-checks.ts). */
export interface AgentConfig extends DeviceIdOptions {
  api_versions: string
  uuid: string
  ip: string
  port: number
  contact_ip: string
  contact_port: number
  registrar_ip: string
  registrar_port: number
  enable_agent_mtls: boolean
  keylime_dir: string
  server_key: string
  server_cert: string
  server_key_password: string
  payload_key: string
  payload_key_password: string
  trusted_client_ca: string
  enc_keyname: string
  dec_payload_file: string
  /** tmpfs size of `keylime_dir/secure` (mounted when started as root). */
  secure_size: string
  /**
   * Keylime TS extension, development only: accept a disk-backed secure directory when no tmpfs can be mounted or
   * found there (not root). Secrets may then persist on disk.
   */
  secure_dir_allow_disk: boolean
  /** Keylime TS extension: wipe the secure directory after a verified revocation has run its actions. */
  secure_dir_wipe_on_revocation: boolean
  extract_payload_zip: boolean
  payload_script: string
  payload_script_timeout_seconds: number
  enable_insecure_payload: boolean
  revocation_cert: string
  revocation_actions: string
  revocation_actions_dir: string
  revocation_action_timeout_seconds: number
  allow_payload_revocation_actions: boolean
  /**
   * Keylime TS extension: a revocation whose `event_time` is further than this from the agent's clock is ignored,
   * and one already acted on is ignored within it (upstream has no replay protection).
   */
  revocation_max_age_seconds: number
  tpm: string
  tpm_hash_alg: string
  tpm_encryption_alg: string
  tpm_signing_alg: string
  ek_handle: string
  tpm_ownerpassword: string
  agent_data_path: string
  ima_ml_path: string
  measuredboot_ml_path: string
  exponential_backoff_initial_delay: number
  exponential_backoff_max_retries: number
  exponential_backoff_max_delay: number
  /** Accepted for compatibility; not supported (ZeroMQ revocations): a warning at start. */
  enable_revocation_notifications: boolean
  /** Register with the IAK/IDevID too (TCG device identity), the AK certified by the IAK. */
  enable_iak_idevid: boolean
  /** `user:group` to switch to once start-up needing root is done (root only); empty keeps the current user. */
  run_as: string
  /** Keylime TS extension: files the agent measures into its IMA list itself (IMA emulator), comma list. */
  ima_emulator_paths: string
  /** Keylime TS extension: plain-HTTP listener with only /healthz, /readyz and /metrics; 0 = off. */
  metrics_port: number
  metrics_ip: string
  /** Push agent (`keylime push-agent`) only, from here on. */
  verifier_url: string
  /** CA certificate(s) the verifier's server certificate must chain to. */
  verifier_tls_ca_cert: string
  /** Sleep between attestations when the verifier does not say (`seconds_to_next_attestation`). */
  attestation_interval_seconds: number
  certification_keys_server_identifier: string
  uefi_logs_evidence_version: string
  registrar_tls_enabled: boolean
  registrar_tls_port: number
  registrar_tls_ca_cert: string
  /** Registrar API versions to try (`default` = all this agent speaks). */
  registrar_api_versions: string
  /** Testing only: accept any verifier/registrar certificate. */
  tls_accept_invalid_certs: boolean
  /** Accepted for compatibility: Keylime never checks hostnames (identity is the CA chain). */
  tls_accept_invalid_hostnames: boolean
}

export const AGENT_CONFIG_DEFAULTS: Readonly<AgentConfig> = Object.freeze({
  api_versions: 'default',
  uuid: 'd432fbb3-d2f1-4a97-9ef7-75bd81c00000',
  ip: '127.0.0.1',
  port: 9002,
  contact_ip: '127.0.0.1',
  contact_port: 9002,
  registrar_ip: '127.0.0.1',
  registrar_port: 8890,
  enable_agent_mtls: true,
  keylime_dir: '/var/lib/keylime',
  server_key: 'default',
  server_cert: 'default',
  server_key_password: '',
  payload_key: 'default',
  payload_key_password: '',
  trusted_client_ca: 'default',
  enc_keyname: 'derived_tci_key',
  dec_payload_file: 'decrypted_payload',
  secure_size: '1m',
  secure_dir_allow_disk: false,
  secure_dir_wipe_on_revocation: false,
  extract_payload_zip: true,
  payload_script: 'autorun.sh',
  payload_script_timeout_seconds: 60,
  enable_insecure_payload: false,
  revocation_cert: 'default',
  revocation_actions: '',
  revocation_actions_dir: '/usr/libexec/keylime',
  revocation_action_timeout_seconds: 60,
  allow_payload_revocation_actions: true,
  revocation_max_age_seconds: 3600,
  tpm: '/dev/tpmrm0',
  tpm_hash_alg: 'sha256',
  tpm_encryption_alg: 'rsa',
  tpm_signing_alg: 'rsassa',
  ek_handle: 'generate',
  tpm_ownerpassword: '',
  agent_data_path: 'default',
  ima_ml_path: '/sys/kernel/security/ima/ascii_runtime_measurements',
  measuredboot_ml_path: '/sys/kernel/security/tpm0/binary_bios_measurements',
  exponential_backoff_initial_delay: 10_000,
  exponential_backoff_max_retries: 5,
  exponential_backoff_max_delay: 300_000,
  enable_revocation_notifications: false,
  enable_iak_idevid: false,
  iak_idevid_template: 'detect',
  iak_idevid_asymmetric_alg: 'rsa',
  iak_idevid_name_alg: 'sha256',
  iak_handle: '',
  iak_password: '',
  idevid_handle: '',
  idevid_password: '',
  iak_cert: 'default',
  idevid_cert: 'default',
  run_as: 'keylime:tss',
  ima_emulator_paths: '',
  metrics_port: 0,
  metrics_ip: '127.0.0.1',
  verifier_url: 'https://localhost:8881',
  verifier_tls_ca_cert: 'default',
  attestation_interval_seconds: 60,
  certification_keys_server_identifier: 'ak',
  uefi_logs_evidence_version: '2.1',
  registrar_tls_enabled: false,
  registrar_tls_port: 8891,
  registrar_tls_ca_cert: 'default',
  registrar_api_versions: 'default',
  tls_accept_invalid_certs: false,
  tls_accept_invalid_hostnames: false,
})

type OptionName = keyof AgentConfig
const OPTION_NAMES = Object.keys(AGENT_CONFIG_DEFAULTS) as OptionName[]

/** Built-in file name for each path option whose value may be `default` (relative to keylime_dir). */
const DEFAULT_PATHS: Partial<Record<OptionName, string>> = {
  server_key: 'server-private.pem',
  server_cert: 'server-cert.crt',
  payload_key: 'payload-private.pem',
  trusted_client_ca: 'cv_ca/cacert.crt',
  revocation_cert: 'secure/unzipped/RevocationNotifier-cert.crt',
  agent_data_path: 'agent_data.json',
  iak_cert: 'iak-cert.crt',
  idevid_cert: 'idevid-cert.crt',
  verifier_tls_ca_cert: 'cv_ca/cacert.crt',
  registrar_tls_ca_cert: 'cv_ca/cacert.crt',
}

/** Options that name files under keylime_dir when relative. */
const RELATIVE_PATH_OPTIONS: OptionName[] = [
  'server_key',
  'server_cert',
  'payload_key',
  'revocation_cert',
  'agent_data_path',
  'verifier_tls_ca_cert',
  'registrar_tls_ca_cert',
]

export interface LoadAgentConfigOptions {
  /** Explicit file: replaces the standard file set, like KEYLIME_AGENT_CONFIG. */
  configPath?: string
  env?: NodeJS.ProcessEnv
  /** Highest-precedence values (CLI flags); strings are coerced like env values. */
  overrides?: Partial<Record<OptionName, string | number | boolean>>
  /** Directories holding agent.conf and agent.conf.d (default /usr/etc/keylime, /etc/keylime); tests pass []. */
  configDirs?: readonly string[]
}

function coerce(name: OptionName, raw: unknown, source: string): AgentConfig[OptionName] {
  const kind = typeof AGENT_CONFIG_DEFAULTS[name]
  if (kind === 'number') {
    const n = typeof raw === 'number' ? raw : typeof raw === 'string' ? Number(raw.trim()) : Number.NaN
    if (!Number.isFinite(n)) throw new AgentConfigError(`${source}: option '${name}' must be a number`)
    return n
  }
  if (kind === 'boolean') {
    if (typeof raw === 'boolean') return raw
    const s = String(raw).trim().toLowerCase()
    if (['true', 'yes', 'on', '1'].includes(s)) return true
    if (['false', 'no', 'off', '0'].includes(s)) return false
    throw new AgentConfigError(`${source}: option '${name}' must be a boolean`)
  }
  if (typeof raw === 'string') return raw.trim().replace(/^"(.*)"$/, '$1')
  if (typeof raw === 'number' || typeof raw === 'boolean') return String(raw)
  throw new AgentConfigError(`${source}: option '${name}' must be a string`)
}

/** Loads the agent configuration with upstream precedence and resolves `default` paths. */
export function loadAgentConfig(options: LoadAgentConfigOptions = {}): AgentConfig {
  const env = options.env ?? process.env
  const cfg: AgentConfig = { ...AGENT_CONFIG_DEFAULTS }
  const rec = cfg as unknown as Record<string, unknown>
  // Files (explicit / KEYLIME_AGENT_CONFIG, or base + conf.d) and KEYLIME_AGENT_<OPTION> env: the shared loader.
  let raw: Record<string, string>
  try {
    raw =
      loadAgentRaw({
        ...(options.configPath ? { configFile: options.configPath } : {}),
        env,
        ...(options.configDirs ? { configDirs: options.configDirs } : {}),
      }).sections.agent ?? {}
  } catch (err) {
    throw new AgentConfigError((err as Error).message, { cause: err })
  }
  for (const name of OPTION_NAMES) {
    const value = raw[name]
    if (value !== undefined) rec[name] = coerce(name, value, `[agent] ${name}`)
  }
  // KEYLIME_DIR beats the files; only KEYLIME_AGENT_KEYLIME_DIR and flags beat it.
  if (env.KEYLIME_DIR && env.KEYLIME_AGENT_KEYLIME_DIR === undefined) cfg.keylime_dir = env.KEYLIME_DIR
  for (const [key, value] of Object.entries(options.overrides ?? {})) {
    if (value === undefined) continue
    if (!(OPTION_NAMES as string[]).includes(key)) throw new AgentConfigError(`unknown agent option '${key}'`)
    rec[key] = coerce(key as OptionName, value, `flag --${key}`)
  }
  return resolvePaths(cfg)
}

function resolvePaths(cfg: AgentConfig): AgentConfig {
  const out = { ...cfg }
  const rec = out as unknown as Record<string, unknown>
  for (const [name, file] of Object.entries(DEFAULT_PATHS) as [OptionName, string][]) {
    if (rec[name] === 'default' || rec[name] === '') rec[name] = join(out.keylime_dir, file)
  }
  for (const name of RELATIVE_PATH_OPTIONS) {
    const v = rec[name] as string
    if (v && !isAbsolute(v)) rec[name] = join(out.keylime_dir, v)
  }
  for (const name of ['iak_cert', 'idevid_cert'] as const) {
    const v = out[name]
    if (v && !v.startsWith('nv:') && !isAbsolute(v)) out[name] = join(out.keylime_dir, v)
  }
  out.trusted_client_ca = out.trusted_client_ca
    .split(',')
    .map((p) =>
      p
        .trim()
        .replace(/^\[|\]$/g, '')
        .replace(/^['"]|['"]$/g, ''),
    )
    .filter((p) => p.length > 0)
    .map((p) => (isAbsolute(p) ? p : join(out.keylime_dir, p)))
    .join(',')
  validate(out)
  return out
}

const HASH_ALGS = ['sha1', 'sha256', 'sha384', 'sha512']
function validate(cfg: AgentConfig): void {
  if (!HASH_ALGS.includes(cfg.tpm_hash_alg)) {
    throw new AgentConfigError(`tpm_hash_alg must be one of ${HASH_ALGS.join(', ')}`)
  }
  if (!['rsa', 'ecc'].includes(cfg.tpm_encryption_alg))
    throw new AgentConfigError('tpm_encryption_alg must be rsa or ecc')
  if (!['rsassa', 'ecdsa'].includes(cfg.tpm_signing_alg)) {
    throw new AgentConfigError('tpm_signing_alg must be rsassa or ecdsa')
  }
  if (cfg.enable_iak_idevid) {
    try {
      configuredDeviceIdTemplate(cfg)
    } catch (err) {
      throw new AgentConfigError((err as Error).message, { cause: err })
    }
  }
  try {
    parseSecureSize(cfg.secure_size)
  } catch (err) {
    throw new AgentConfigError((err as Error).message, { cause: err })
  }
  for (const p of ['port', 'contact_port', 'registrar_port', 'registrar_tls_port', 'metrics_port'] as const) {
    if (!Number.isInteger(cfg[p]) || cfg[p] < 0 || cfg[p] > 65535)
      throw new AgentConfigError(`${p} out of range`)
  }
  const maxAge = cfg.revocation_max_age_seconds
  // Bounded so the list of revocations already acted on, kept for that long, stays small.
  if (!Number.isInteger(maxAge) || maxAge < 1 || maxAge > 30 * 24 * 3600)
    throw new AgentConfigError(
      'revocation_max_age_seconds must be a whole number of seconds from 1 to 2592000 (30 days)',
    )
  if (!cfg.enable_agent_mtls && !cfg.enable_insecure_payload && cfg.payload_script !== '') {
    // Upstream refuses to start in this combination: a payload script would run without an authenticated sender.
    throw new AgentConfigError(
      'payload_script is set but mTLS is disabled: set enable_insecure_payload = true or payload_script = ""',
    )
  }
}

/** The API versions this agent serves, from `api_versions` (`default`, `latest`, or a list). */
export function servedApiVersions(
  cfg: Pick<AgentConfig, 'api_versions'>,
  known: readonly string[],
): string[] {
  const v = cfg.api_versions.trim()
  if (v === 'default' || v === '') return [...known]
  if (v === 'latest') return [known[known.length - 1] as string]
  const wanted = v
    .replace(/[[\]'"]/g, '')
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0)
  const served = known.filter((k) => wanted.includes(k))
  if (served.length === 0) throw new AgentConfigError(`api_versions '${v}' names no supported version`)
  return served
}

/** `trusted_client_ca` as a list of files. */
export function trustedClientCaFiles(cfg: Pick<AgentConfig, 'trusted_client_ca'>): string[] {
  return cfg.trusted_client_ca.split(',').filter((p) => p.length > 0)
}
