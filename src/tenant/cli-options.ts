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
  runtimePolicyChecksum?: string
  runtimePolicySigKey?: string
  runtimePolicyName?: string
  mbPolicy?: string
  mbPolicyName?: string
  tpmPolicy?: string
  verify?: boolean
  agentApiVersion?: string
  config?: string
  tlsDir?: string
  json?: boolean
}
