/**
 * The verifier's `operational_state` values (keylime-api.md §5): numbers, the names upstream's tenant prints, and
 * the sets the loop, the repository and the API derive from them. Declared here once; everything else imports it.
 */
export const AgentState = {
  REGISTERED: 0,
  START: 1,
  SAVED: 2,
  GET_QUOTE: 3,
  GET_QUOTE_RETRY: 4,
  PROVIDE_V: 5,
  PROVIDE_V_RETRY: 6,
  FAILED: 7,
  TERMINATED: 8,
  INVALID_QUOTE: 9,
  TENANT_FAILED: 10,
} as const
export type AgentState = (typeof AgentState)[keyof typeof AgentState]

export const OPERATIONAL_STATE_NAMES: Readonly<Record<number, string>> = {
  [AgentState.REGISTERED]: 'Registered',
  [AgentState.START]: 'Start',
  [AgentState.SAVED]: 'Saved',
  [AgentState.GET_QUOTE]: 'Get Quote',
  [AgentState.GET_QUOTE_RETRY]: 'Get Quote (retry)',
  [AgentState.PROVIDE_V]: 'Provide V',
  [AgentState.PROVIDE_V_RETRY]: 'Provide V (retry)',
  [AgentState.FAILED]: 'Failed',
  [AgentState.TERMINATED]: 'Terminated',
  [AgentState.INVALID_QUOTE]: 'Invalid Quote',
  [AgentState.TENANT_FAILED]: 'Tenant Quote Failed',
} satisfies Record<AgentState, string>

export const ALL_AGENT_STATES: readonly AgentState[] = Object.values(AgentState)

export function isAgentState(n: number): n is AgentState {
  return (ALL_AGENT_STATES as readonly number[]).includes(n)
}

/** States a (re)started verifier resumes: reset to START and polled again (§D.8). */
export const RESUMABLE_STATES: readonly AgentState[] = [
  AgentState.START,
  AgentState.GET_QUOTE,
  AgentState.GET_QUOTE_RETRY,
  AgentState.PROVIDE_V,
  AgentState.PROVIDE_V_RETRY,
]

/** States set by an operator (delete pending, stop) that no write of the loop may overwrite (§D.7). */
export const OPERATOR_HELD_STATES: readonly AgentState[] = [AgentState.TERMINATED, AgentState.TENANT_FAILED]

/** States in which an agent is not attested and may be deleted at once. */
export const IDLE_STATES: readonly AgentState[] = [
  AgentState.SAVED,
  AgentState.FAILED,
  AgentState.TENANT_FAILED,
  AgentState.INVALID_QUOTE,
]

/** Pull-mode `attestation_status` (§5): PASS for {3,4,5,6}, FAIL for {7,9,10}, else PENDING. */
export function attestationStatus(state: number | null): 'PASS' | 'FAIL' | 'PENDING' {
  switch (state) {
    case AgentState.GET_QUOTE:
    case AgentState.GET_QUOTE_RETRY:
    case AgentState.PROVIDE_V:
    case AgentState.PROVIDE_V_RETRY:
      return 'PASS'
    case AgentState.FAILED:
    case AgentState.INVALID_QUOTE:
    case AgentState.TENANT_FAILED:
      return 'FAIL'
    default:
      return 'PENDING'
  }
}

/**
 * Push-mode `attestation_status` (§5): not accepting attestations (overdue) -> FAIL after failures, else TIMEOUT;
 * accepting -> FAIL after failures, PASS once attested, else PENDING.
 */
export function pushAttestationStatus(row: {
  accept_attestations: number | boolean
  consecutive_attestation_failures: number | null
  attestation_count: number
}): 'PASS' | 'FAIL' | 'PENDING' | 'TIMEOUT' {
  const failures = (row.consecutive_attestation_failures ?? 0) > 0
  if (!row.accept_attestations) return failures ? 'FAIL' : 'TIMEOUT'
  if (failures) return 'FAIL'
  return row.attestation_count > 0 ? 'PASS' : 'PENDING'
}
