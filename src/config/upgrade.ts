/**
 * Upstream configuration files as Keylime TS reads them: which options of a file it does not know (reported by
 * name, at load and by `keylime config upgrade`), and the values of an older file in today's option names. Upstream's
 * `keylime_upgrade_config` handles the single `keylime.conf` of Keylime 6.x (version 1.0, sections
 * `[cloud_verifier]`, `[registrar]`, `[tenant]`, `[ca]`, `[general]`) and the per-component files of template
 * versions 2.0 to 2.6; from 2.0 on options were only added (a file of an older 2.x version lacks some and they take
 * their defaults), so only the 1.0 file needs its options renamed and moved.
 */
import { parseIni, type RawSections } from './loader.ts'
import { type Schema, unknownOptions } from './schema.ts'

/** The template version of upstream's current files, written into an upgraded file. */
export const CURRENT_CONFIG_VERSION = '2.6'

export type UpgradableComponent = 'verifier' | 'registrar' | 'tenant' | 'ca'

/** Where a 2.x option was in the 1.0 `keylime.conf`: `[new section] option` → `[old section] option`. */
const RENAMED_FROM_1_0: Record<UpgradableComponent, Record<string, readonly [string, string]>> = {
  verifier: {
    '[verifier] uuid': ['cloud_verifier', 'cloudverifier_id'],
    '[verifier] ip': ['cloud_verifier', 'cloudverifier_ip'],
    '[verifier] port': ['cloud_verifier', 'cloudverifier_port'],
    '[verifier] trusted_client_ca': ['cloud_verifier', 'ca_cert'],
    '[verifier] server_cert': ['cloud_verifier', 'my_cert'],
    '[verifier] server_key': ['cloud_verifier', 'private_key'],
    '[verifier] server_key_password': ['cloud_verifier', 'private_key_pw'],
    '[verifier] enable_agent_mtls': ['cloud_verifier', 'agent_mtls_cert_enabled'],
    '[verifier] client_cert': ['cloud_verifier', 'agent_mtls_cert'],
    '[verifier] client_key': ['cloud_verifier', 'agent_mtls_private_key'],
    '[verifier] client_key_password': ['cloud_verifier', 'agent_mtls_private_key_pw'],
    '[verifier] trusted_server_ca': ['cloud_verifier', 'agent_mtls_cert'],
    '[verifier] num_workers': ['cloud_verifier', 'multiprocessing_pool_num_workers'],
    '[verifier] ignore_tomtou_errors': ['cloud_verifier', 'tomtou_errors'],
    '[revocations] enabled_revocation_notifications': ['cloud_verifier', 'revocation_notifiers'],
    '[revocations] zmq_ip': ['cloud_verifier', 'revocation_notifier_ip'],
    '[revocations] zmq_port': ['cloud_verifier', 'revocation_notifier_port'],
    '[revocations] webhook_url': ['cloud_verifier', 'webhook_url'],
  },
  registrar: {
    '[registrar] ip': ['registrar', 'registrar_ip'],
    '[registrar] port': ['registrar', 'registrar_port'],
    '[registrar] tls_port': ['registrar', 'registrar_tls_port'],
    '[registrar] server_key': ['registrar', 'private_key'],
    '[registrar] server_key_password': ['registrar', 'private_key_pw'],
    '[registrar] server_cert': ['registrar', 'my_cert'],
  },
  tenant: {
    '[tenant] verifier_ip': ['tenant', 'cloudverifier_ip'],
    '[tenant] verifier_port': ['tenant', 'cloudverifier_port'],
    '[tenant] enable_agent_mtls': ['tenant', 'agent_mtls_cert_enabled'],
    '[tenant] client_key': ['tenant', 'private_key'],
    '[tenant] client_key_password': ['tenant', 'private_key_pw'],
    '[tenant] client_cert': ['tenant', 'my_cert'],
  },
  ca: {},
}

/** The 1.0 section the rest of a component's options kept their names in. */
const SECTION_1_0: Record<UpgradableComponent, string> = {
  verifier: 'cloud_verifier',
  registrar: 'registrar',
  tenant: 'tenant',
  ca: 'ca',
}

/** List options 1.0 wrote as comma-separated words (`a, b`), written as lists (`['a', 'b']`) since 2.0. */
const LIST_OPTIONS = new Set([
  '[verifier] trusted_server_ca',
  '[verifier] severity_labels',
  '[verifier] measured_boot_imports',
  '[revocations] enabled_revocation_notifications',
  '[tenant] trusted_server_ca',
  '[tenant] accept_tpm_hash_algs',
  '[tenant] accept_tpm_encryption_algs',
  '[tenant] accept_tpm_signing_algs',
  '[registrar] trusted_client_ca',
])

function asList(value: string): string {
  const v = value.trim()
  if (v === 'default' || v.startsWith('[')) return value
  const items = v
    .split(',')
    .map((x) => x.trim().replace(/^["']|["']$/g, ''))
    .filter((x) => x !== '')
  return `[${items.map((x) => `'${x}'`).join(', ')}]`
}

export interface ConfigUpgrade {
  /** Template version of the input (`1.0` for the single keylime.conf of Keylime 6.x). */
  fromVersion: string
  /** The input's values under today's names, by section. */
  sections: RawSections
  /** `[old section] old → [section] option` for every option that moved or was renamed. */
  renamed: string[]
  /** Options of the input that Keylime TS does not read, by name (not carried over). */
  unknown: string[]
}

/** Reads an upstream configuration file of `component` (any version `keylime_upgrade_config` handles). */
export function upgradeConfigText(
  component: UpgradableComponent,
  schema: Schema,
  text: string,
  source: string,
): ConfigUpgrade {
  const input = parseIni(text, source)
  // the 1.0 file is one keylime.conf for every component; its [cloud_verifier] and [general] sections went away
  const legacy =
    input.cloud_verifier !== undefined ||
    input.general !== undefined ||
    /^1\./.test(input[component]?.version ?? '')
  const fromVersion = legacy ? '1.0' : (input[component]?.version ?? 'unknown')
  if (!legacy) {
    const sections: RawSections = {}
    for (const [name, options] of Object.entries(input)) sections[name] = { ...options }
    return { fromVersion, sections, renamed: [], unknown: unknownOptions(schema, component, sections) }
  }
  const sections: RawSections = {}
  const renamed: string[] = []
  const consumed = new Set<string>()
  const put = (section: string, option: string, value: string) => {
    sections[section] ??= {}
    ;(sections[section] as Record<string, string>)[option] = value
  }
  for (const [key, spec] of Object.entries(schema)) {
    const section = spec.section ?? component
    const option = spec.option ?? key
    const name = `[${section}] ${option}`
    const from = RENAMED_FROM_1_0[component][name] ?? [SECTION_1_0[component], option]
    const value = input[from[0]]?.[from[1]]
    if (value === undefined) continue
    consumed.add(`[${from[0]}] ${from[1]}`)
    if (from[1] !== option) renamed.push(`[${from[0]}] ${from[1]} → ${name}`)
    put(section, option, LIST_OPTIONS.has(name) ? asList(value) : value)
  }
  // what upstream's 2.0 upgrade settles on: the verifier's old `CV` placeholders, an empty database_url
  const v = sections.verifier
  if (v?.client_cert === 'CV') v.client_cert = 'default'
  if (v?.trusted_server_ca === 'CV' || v?.trusted_server_ca === "['CV']") v.trusted_server_ca = 'default'
  if (v?.database_url === '') v.database_url = 'sqlite'
  const r = sections.registrar
  if (r?.tls_dir === 'CV') r.tls_dir = 'default'
  if (r?.database_url === '') r.database_url = 'sqlite'
  const unknown = Object.entries(input[SECTION_1_0[component]] ?? {})
    .map(([option]) => `[${SECTION_1_0[component]}] ${option}`)
    .filter((n) => !consumed.has(n) && !n.endsWith('] version'))
  return { fromVersion, sections, renamed, unknown }
}
