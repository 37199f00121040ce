/** Commands of `keylime tenant -c`, upstream's names. */
export const TENANT_COMMANDS = [
  'add',
  'update',
  'delete',
  'status',
  'cvstatus',
  'cvlist',
  'bulkinfo',
  'reactivate',
  'regstatus',
  'reglist',
  'regdelete',
  'addruntimepolicy',
  'updateruntimepolicy',
  'showruntimepolicy',
  'deleteruntimepolicy',
  'listruntimepolicy',
  'addmbpolicy',
  'updatembpolicy',
  'showmbpolicy',
  'deletembpolicy',
  'listmbpolicy',
  'addallowlist',
  'showallowlist',
  'deleteallowlist',
] as const

/** Options of `keylime tenant`, as commander hands them over (upstream flag names, camelCased). */
export interface TenantCliOptions {
  command?: string
  uuid?: string
  targethost?: string
  targetport?: number
  cvTargethost?: string
  cv?: string
  cvport?: number
  cvid?: string
  registrarhost?: string
  registrarport?: number
  verifierCheck?: boolean
  pushModel?: boolean
  file?: string
  key?: string
  payload?: string
  cert?: string
  include?: string
  runtimePolicy?: string
  /** Downloaded (needs `runtimePolicyChecksum`). */
  runtimePolicyUrl?: string
  runtimePolicyChecksum?: string
  runtimePolicySigKey?: string
  runtimePolicyName?: string
  /** Deprecated legacy allowlist (file or URL) and exclude list, converted to a runtime policy. */
  allowlist?: string
  allowlistUrl?: string
  allowlistName?: string
  exclude?: string
  /** Deprecated per-agent IMA keyring: key files / URLs, each optionally with a GPG signature and its key. */
  signatureVerificationKey?: string[]
  signatureVerificationKeySig?: string[]
  signatureVerificationKeySigKey?: string[]
  signatureVerificationKeyUrl?: string[]
  signatureVerificationKeySigUrl?: string[]
  signatureVerificationKeySigUrlKey?: string[]
  /** A file, or `default` for tenant.conf `mb_refstate`. */
  mbPolicy?: string
  mbPolicyName?: string
  tpmPolicy?: string
  verify?: boolean
  agentApiVersion?: string
  config?: string
  tlsDir?: string
  json?: boolean
}
