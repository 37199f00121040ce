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
