/**
 * Sample configuration files and the configuration reference, generated from the option schemas the services load
 * (`src/config/*`, and the agent's defaults), so the documentation cannot drift from the code:
 * `keylime config sample <component>` and `keylime config reference`; `docs/config-reference.md` and
 * `docs/samples/` are their checked-in output (a test regenerates and compares them).
 */
import { AGENT_CONFIG_DEFAULTS } from '../agent/config.ts'
import { caSchema } from '../config/ca.ts'
import { registrarSchema } from '../config/registrar.ts'
import type { OptionSpec, Schema } from '../config/schema.ts'
import { tenantSchema } from '../config/tenant.ts'
import { UNIMPLEMENTED_OPTIONS } from '../config/unimplemented.ts'
import { verifierSchema } from '../config/verifier.ts'

export const CONFIG_COMPONENTS = ['verifier', 'registrar', 'tenant', 'ca', 'agent'] as const
export type ConfigComponent = (typeof CONFIG_COMPONENTS)[number]

const INI_SCHEMAS: Record<Exclude<ConfigComponent, 'agent'>, Schema> = {
  verifier: verifierSchema,
  registrar: registrarSchema,
  tenant: tenantSchema,
  ca: caSchema,
}

const PUSH_ONLY = 'push mode only (`mode = push`); see docs/push.md'
const DURABLE_ONLY =
  'read only by durable attestation, which Keylime TS refuses at start-up (`durable_attestation_import`)'
const ZEROMQ_ONLY = 'read only by ZeroMQ revocations, which Keylime TS refuses at start-up (`zeromq` channel)'
const ONE_PROCESS = 'no effect: one process serves every request (see `max_concurrency` for the verifier)'

/** What an option does in Keylime TS where that is not what its name says. */
const NOTES: Record<string, string> = {
  '[verifier] num_workers': ONE_PROCESS,
  '[verifier] max_workers': ONE_PROCESS,
  '[registrar] max_workers': ONE_PROCESS,
  '[verifier] mode': 'the whole verifier: `pull` polls agents, `push` serves API 3.0 (docs/push.md)',
  '[verifier] push_evidence_timeout':
    'Keylime TS: push agent without evidence this long is failed (0: 5 x quote_interval)',
  '[verifier] push_revocation_notifications':
    'Keylime TS: revocation notifications for failed push agents (upstream sends none)',
  '[verifier] server_key_password': 'must be empty: encrypted TLS keys are refused at start-up',
  '[verifier] client_key_password': 'must be empty: encrypted TLS keys are refused at start-up',
  '[verifier] max_concurrency': 'Keylime TS: attestations in flight at once',
  '[verifier] lease_seconds': 'Keylime TS: how long a verifier holds an agent in a shared database',
  '[revocations] zmq_ip': ZEROMQ_ONLY,
  '[revocations] zmq_port': ZEROMQ_ONLY,
  '[registrar] max_upload_size': 'Keylime TS: largest request body in bytes',
  '[tenant] tpm_cert_store':
    'read by the registrar too (IAK/IDevID; as upstream, `KEYLIME_TENANT_TPM_CERT_STORE` sets it for the registrar unless `KEYLIME_REGISTRAR_TENANT_TPM_CERT_STORE` does); put TPM vendor EK root and intermediate certificates here',
}
for (const key of [
  'challenge_lifetime',
  'verification_timeout',
  'nonce_lifetime',
  'session_create_rate_limit_per_ip',
  'session_create_rate_limit_window_ip',
  'session_create_rate_limit_per_agent',
  'session_create_rate_limit_window_agent',
  'session_lifetime',
  'extend_token_on_attestation',
  'auto_recover_attestation_failures',
]) {
  NOTES[`[verifier] ${key}`] = PUSH_ONLY
}
for (const section of ['verifier', 'registrar']) {
  for (const key of [
    'time_stamp_authority_certs_path',
    'persistent_store_format',
    'persistent_store_encoding',
    'transparency_log_sign_algo',
    'signed_attributes',
  ]) {
    NOTES[`[${section}] ${key}`] = DURABLE_ONLY
  }
}
for (const options of Object.values(UNIMPLEMENTED_OPTIONS)) {
  for (const option of options) {
    NOTES[option.name] = `${option.feature}: not implemented; a value that turns it on is refused at start-up`
  }
}

interface Row {
  section: string
  option: string
  value: string
  kind: string
  env: string
  note: string | undefined
}

function iniValue(spec: OptionSpec<unknown>): string {
  const d = spec.default
  if (Array.isArray(d)) return `[${d.map((v) => `'${String(v)}'`).join(', ')}]`
  if (typeof d === 'boolean') return d ? 'True' : 'False'
  return String(d)
}

function iniRows(component: Exclude<ConfigComponent, 'agent'>): Row[] {
  return Object.entries(INI_SCHEMAS[component]).map(([key, spec]) => {
    const section = spec.section ?? component
    const option = spec.option ?? key
    const envName =
      section === component ? `KEYLIME_${component}_${option}` : `KEYLIME_${component}_${section}_${option}`
    return {
      section,
      option,
      value: iniValue(spec),
      kind: spec.range ? `${spec.kind} ${spec.range[0]}-${spec.range[1]}` : spec.kind,
      env: envName.toUpperCase(),
      note: NOTES[`[${section}] ${option}`],
    }
  })
}

/** agent.conf options only the push agent (`keylime push-agent`) reads. */
const PUSH_AGENT_ONLY = new Set([
  'verifier_url',
  'verifier_tls_ca_cert',
  'attestation_interval_seconds',
  'certification_keys_server_identifier',
  'uefi_logs_evidence_version',
  'registrar_tls_enabled',
  'registrar_tls_port',
  'registrar_tls_ca_cert',
  'registrar_api_versions',
  'tls_accept_invalid_certs',
  'tls_accept_invalid_hostnames',
])

function agentRows(): Row[] {
  return Object.entries(AGENT_CONFIG_DEFAULTS).map(([option, value]) => ({
    section: 'agent',
    option,
    value: typeof value === 'string' ? JSON.stringify(value) : String(value),
    kind: typeof value === 'boolean' ? 'bool' : typeof value === 'number' ? 'int' : 'string',
    env: `KEYLIME_AGENT_${option.toUpperCase()}`,
    note: PUSH_AGENT_ONLY.has(option) ? 'push agent only (keylime push-agent)' : undefined,
  }))
}

const rowsOf = (component: ConfigComponent): Row[] =>
  component === 'agent' ? agentRows() : iniRows(component)

/** A complete configuration file for `component` with every option at its default. */
export function renderSampleConfig(component: ConfigComponent): string {
  const file = component === 'agent' ? 'agent.conf (TOML)' : `${component}.conf`
  return renderConfigFile(component, [
    `# ${file}: every option Keylime TS reads, at its default. Generated by \`keylime config sample ${component}\`.`,
    `# Install as /etc/keylime/${component}.conf, or drop overrides into /etc/keylime/${component}.conf.d/*.conf;`,
    `# KEYLIME_${component.toUpperCase()}_<OPTION> environment variables override both.`,
  ])
}

/**
 * An upstream configuration file brought to today's template version: every option Keylime TS reads, with the
 * file's value where it had one (`values`, by section) and the default elsewhere, and `version` set.
 */
export function renderUpgradedConfig(
  component: Exclude<ConfigComponent, 'agent'>,
  values: Readonly<Record<string, Readonly<Record<string, string>>>>,
  header: readonly string[],
  version: string,
): string {
  return renderConfigFile(component, header, values, version)
}

function renderConfigFile(
  component: ConfigComponent,
  header: readonly string[],
  values: Readonly<Record<string, Readonly<Record<string, string>>>> = {},
  version?: string,
): string {
  const lines = [...header]
  let section: string | undefined
  for (const row of rowsOf(component)) {
    if (row.section !== section) {
      section = row.section
      lines.push('', `[${section}]`)
      if (version !== undefined && section === component) lines.push(`version = ${version}`)
    }
    if (row.note) lines.push(`# ${row.note}`)
    const value = values[row.section]?.[row.option] ?? row.value
    lines.push(value === '' ? `${row.option} =` : `${row.option} = ${value}`)
  }
  return `${lines.join('\n')}\n`
}

const cell = (text: string) => text.replaceAll('|', '\\|')

/** The configuration reference page (Markdown), one table per component. */
export function renderConfigReference(): string {
  const out = [
    '# Configuration reference',
    '',
    'Generated from the option schemas by `keylime config reference`; do not edit by hand (a test compares this page',
    'with the code). Complete sample files: `docs/samples/` or `keylime config sample <component>`.',
    '',
    'Files: `/etc/keylime/<component>.conf` (or `/usr/etc/keylime/`) plus `<component>.conf.d/*.conf`, or',
    'the one file given by `--config` / `KEYLIME_<COMPONENT>_CONFIG`; environment variables override files, and',
    'command-line flags override both. The verifier, registrar, tenant and CA read INI files; the agent reads TOML',
    "(table `[agent]`). Lists are written `['a', 'b']`, booleans `True`/`False`.",
  ]
  for (const component of CONFIG_COMPONENTS) {
    out.push(
      '',
      `## ${component}`,
      '',
      '| Section | Option | Default | Type | Environment | Notes |',
      '|---|---|---|---|---|---|',
    )
    for (const r of rowsOf(component)) {
      out.push(
        `| ${r.section} | \`${r.option}\` | \`${cell(r.value)}\` | ${r.kind} | \`${r.env}\` | ${cell(r.note ?? '')} |`,
      )
    }
  }
  return `${out.join('\n')}\n`
}
