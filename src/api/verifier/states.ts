/** Names of the verifier's `operational_state` values, as upstream's tenant prints them (keylime-api.md §5). */
export const OPERATIONAL_STATE_NAMES: Readonly<Record<number, string>> = {
  0: 'Registered',
  1: 'Start',
  2: 'Saved',
  3: 'Get Quote',
  4: 'Get Quote (retry)',
  5: 'Provide V',
  6: 'Provide V (retry)',
  7: 'Failed',
  8: 'Terminated',
  9: 'Invalid Quote',
  10: 'Tenant Quote Failed',
}
