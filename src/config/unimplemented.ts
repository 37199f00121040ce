/**
 * Options that upstream Keylime has and Keylime TS reads but does not implement. Set to a value that would turn the
 * feature on, each one stops start-up with a message naming it: an operator must never believe a feature is on when
 * it is not. The defaults (feature off) start as usual.
 */
import { KeylimeError } from '../common/errors.ts'
import type { LoadOptions } from './loader.ts'
import { type Flags, type Loaded, loadIniConfig, type Schema } from './schema.ts'

export class OptionNotImplementedError extends KeylimeError {
  constructor(message: string) {
    super('ERR_OPTION_NOT_IMPLEMENTED', message)
  }
}

interface Unimplemented {
  /** `[section] option` as the operator writes it. */
  name: string
  /** Whether the configured value turns the feature on. */
  enabled: (config: Record<string, unknown>) => boolean
  feature: string
  /** What works instead, if anything. */
  instead?: string
}

const nonEmpty = (key: string) => (c: Record<string, unknown>) => {
  const v = c[key]
  return Array.isArray(v) ? v.length > 0 : typeof v === 'string' && v.trim() !== ''
}

/** Durable attestation (upstream's persistent store, transparency log and time-stamp authority). */
const durableAttestation = (section: string): Unimplemented[] =>
  [
    'durable_attestation_import',
    'persistent_store_url',
    'transparency_log_url',
    'time_stamp_authority_url',
  ].map((key) => ({
    name: `[${section}] ${key}`,
    enabled: nonEmpty(key),
    feature: 'durable attestation (persistent store, transparency log, time-stamp authority)',
  }))

const authorizationProvider = (section: string): Unimplemented => ({
  name: `[${section}] authorization_provider`,
  enabled: (c) => c.authorization_provider !== 'simple',
  feature: 'authorization providers other than "simple"',
})

export const UNIMPLEMENTED_OPTIONS: Readonly<
  Record<'verifier' | 'registrar' | 'tenant' | 'ca', readonly Unimplemented[]>
> = {
  verifier: [
    {
      name: '[revocations] enabled_revocation_notifications',
      enabled: (c) => (c.enabled_revocation_notifications as string[]).includes('zeromq'),
      feature: 'ZeroMQ revocation notifications',
      instead: 'the "agent" and "webhook" channels are',
    },
    {
      name: '[verifier] measured_boot_imports',
      enabled: nonEmpty('measured_boot_imports'),
      feature: 'importing measured-boot policy modules',
      instead: 'the built-in engines accept-all, reject-all and example are',
    },
    {
      name: '[verifier] auto_recover_attestation_failures',
      enabled: (c) => c.auto_recover_attestation_failures === true,
      feature: 'automatic recovery from attestation failures',
      instead: '`keylime tenant -c reactivate` is',
    },
    authorizationProvider('verifier'),
    ...durableAttestation('verifier'),
  ],
  registrar: [
    {
      name: '[registrar] server_key_password',
      enabled: nonEmpty('server_key_password'),
      feature: 'password-protected TLS keys',
      instead: 'unencrypted keys readable only by the keylime user are',
    },
    authorizationProvider('registrar'),
    ...durableAttestation('registrar'),
  ],
  tenant: [
    {
      name: '[tenant] client_key_password',
      enabled: nonEmpty('client_key_password'),
      feature: 'password-protected TLS keys',
      instead: 'unencrypted keys readable only by the operator are',
    },
  ],
  ca: [
    {
      name: '[ca] password',
      enabled: (c) => c.password !== 'default' && c.password !== '',
      feature: "upstream's password-protected private.yml",
      instead: 'keys in 0600 PEM files are',
    },
  ],
}

/** Throws OptionNotImplementedError for the first option of `component` set to turn on a missing feature. */
export function refuseUnimplementedOptions(
  component: keyof typeof UNIMPLEMENTED_OPTIONS,
  config: Record<string, unknown>,
): void {
  for (const option of UNIMPLEMENTED_OPTIONS[component]) {
    if (option.enabled(config)) {
      const instead = option.instead === undefined ? '' : `; ${option.instead} implemented`
      throw new OptionNotImplementedError(
        `${option.name}: ${option.feature} not implemented by Keylime TS${instead}`,
      )
    }
  }
}

/** A component's INI configuration (files, `KEYLIME_*` environment, flags), refused if it turns on a missing feature. */
export function loadCheckedIniConfig<S extends Schema>(
  component: keyof typeof UNIMPLEMENTED_OPTIONS,
  schema: S,
  opts: LoadOptions & { flags?: Flags<S> } = {},
): Loaded<S> {
  const loaded = loadIniConfig(component, schema, opts)
  refuseUnimplementedOptions(component, loaded.config)
  return loaded
}
