/**
 * The agent options that are checked when the configuration loads (secure directory size, device identity
 * template), kept apart from the code that uses them so that reading the agent's configuration (and `keylime agent
 * --help`) loads no TPM or mount code.
 */
import { KeylimeError } from '../common/errors.ts'
import type { DeviceIdTemplateName } from './agent-tpm.ts'

export class DeviceIdError extends KeylimeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_AGENT_DEVICE_ID', message, options)
  }
}

export class SecureDirError extends KeylimeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_AGENT_SECURE_DIR', message, options)
  }
}

/** `secure_size` as tmpfs takes it: a number of bytes with an optional k/m/g suffix (upstream default `1m`). */
export function parseSecureSize(size: string): string {
  const s = size.trim().toLowerCase()
  if (!/^[1-9][0-9]*[kmg]?$/.test(s)) {
    throw new SecureDirError(`secure_size '${size}' is not a size (bytes with an optional k, m or g suffix)`)
  }
  return s
}

const TEMPLATES: readonly DeviceIdTemplateName[] = ['H-1', 'H-2', 'H-3', 'H-4']
const MANUAL: Record<string, DeviceIdTemplateName> = {
  'rsa/sha256': 'H-1',
  'ecc/sha256': 'H-2',
  'ecc/sha384': 'H-3',
  'ecc/sha512': 'H-4',
}

/** The `[agent]` options of the device identity (part of `AgentConfig`). */
export interface DeviceIdOptions {
  /** `detect` (from the IAK certificate), `H-1`..`H-4`, or `manual` (the two options below). */
  iak_idevid_template: string
  iak_idevid_asymmetric_alg: string
  iak_idevid_name_alg: string
  /** Persistent handles (hex) of provisioned keys instead of creating them from the template; auth values. */
  iak_handle: string
  iak_password: string
  idevid_handle: string
  idevid_password: string
  /** Certificate files (PEM or DER, relative to keylime_dir), or `nv:0x…` for an NV index (Keylime TS extension). */
  iak_cert: string
  idevid_cert: string
}

/** The configured template, or null for `detect` (taken from the IAK certificate's key). */
export function configuredDeviceIdTemplate(cfg: DeviceIdOptions): DeviceIdTemplateName | null {
  const t = cfg.iak_idevid_template.trim()
  if (t === '' || t === 'detect' || t === 'default') return null
  if ((TEMPLATES as readonly string[]).includes(t)) return t as DeviceIdTemplateName
  if (t === 'manual') {
    const pair = `${cfg.iak_idevid_asymmetric_alg.trim().toLowerCase()}/${cfg.iak_idevid_name_alg.trim().toLowerCase()}`
    const found = MANUAL[pair]
    if (!found) {
      throw new DeviceIdError(
        `iak_idevid_asymmetric_alg/iak_idevid_name_alg '${pair}' is not supported: ${Object.keys(MANUAL).join(', ')}`,
      )
    }
    return found
  }
  if (t === 'H-5') throw new DeviceIdError('iak_idevid_template H-5 (SM2/SM3) is not supported')
  throw new DeviceIdError(
    `iak_idevid_template '${t}' must be detect, manual or one of ${TEMPLATES.join(', ')}`,
  )
}
