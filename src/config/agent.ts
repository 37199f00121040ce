/** `agent.conf` `[agent]` TOML (keylime-config-and-cli.md §2.6). The agent team extends it. */
import type { LoadOptions } from './loader.ts'
import {
  type ConfigOf,
  type Flags,
  type Loaded,
  loadAgentTomlConfig as loadAgentToml,
  opt,
} from './schema.ts'

export const agentSchema = {
  api_versions: opt.string('default'),
  uuid: opt.string('d432fbb3-d2f1-4a97-9ef7-75bd81c00000'),
  ip: opt.string('127.0.0.1'),
  port: opt.int(9002),
  contact_ip: opt.string('127.0.0.1'),
  contact_port: opt.int(9002),
  registrar_ip: opt.string('127.0.0.1'),
  registrar_port: opt.int(8890),
  registrar_tls_port: opt.int(8891),
  registrar_tls_enabled: opt.bool(false),
  registrar_tls_ca_cert: opt.string('cv_ca/cacert.crt'),
  registrar_api_versions: opt.string('default'),
  enable_agent_mtls: opt.bool(true),
  keylime_dir: opt.string('/var/lib/keylime'),
  server_key: opt.string('server-private.pem'),
  server_cert: opt.string('server-cert.crt'),
  server_key_password: opt.string(''),
  payload_key: opt.string('payload-private.pem'),
  payload_key_password: opt.string(''),
  trusted_client_ca: opt.list(['cv_ca/cacert.crt']),
  enc_keyname: opt.string('derived_tci_key'),
  dec_payload_file: opt.string('decrypted_payload'),
  secure_size: opt.string('1m'),
  extract_payload_zip: opt.bool(true),
  payload_script: opt.string('autorun.sh'),
  enable_insecure_payload: opt.bool(false),
  enable_revocation_notifications: opt.bool(false),
  revocation_notification_ip: opt.string('127.0.0.1'),
  revocation_notification_port: opt.int(8992),
  revocation_cert: opt.string('secure/unzipped/RevocationNotifier-cert.crt'),
  revocation_actions: opt.string(''),
  revocation_actions_dir: opt.string('/usr/libexec/keylime'),
  allow_payload_revocation_actions: opt.bool(true),
  tpm_hash_alg: opt.string('sha256'),
  tpm_encryption_alg: opt.string('rsa'),
  tpm_signing_alg: opt.string('rsassa'),
  ek_handle: opt.string('generate'),
  tpm_ownerpassword: opt.string(''),
  enable_iak_idevid: opt.bool(false),
  iak_idevid_template: opt.string('detect'),
  run_as: opt.string('keylime:tss'),
  agent_data_path: opt.string('agent_data.json'),
  ima_ml_path: opt.string('/sys/kernel/security/ima/ascii_runtime_measurements'),
  measuredboot_ml_path: opt.string('/sys/kernel/security/tpm0/binary_bios_measurements'),
  verifier_url: opt.string('https://localhost:8881'),
  verifier_tls_ca_cert: opt.string('cv_ca/cacert.crt'),
  attestation_interval_seconds: opt.int(60),
  exponential_backoff_initial_delay: opt.int(10000),
  exponential_backoff_max_retries: opt.int(5),
  exponential_backoff_max_delay: opt.int(300000),
  // Keylime TS agent additions (src/agent/config.ts is the agent's typed loader over the same files):
  tpm: opt.string('/dev/tpmrm0'),
  payload_script_timeout_seconds: opt.int(60),
  revocation_action_timeout_seconds: opt.int(60),
  ima_emulator_paths: opt.string(''),
}
export type AgentConfigValues = ConfigOf<typeof agentSchema>

export function loadAgentConfig(
  opts: LoadOptions & { flags?: Flags<typeof agentSchema> } = {},
): Loaded<typeof agentSchema> {
  return loadAgentToml(agentSchema, opts)
}
