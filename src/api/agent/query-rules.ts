/**
 * The forms of the pull agent's query parameters (keylime-api.md §1) as plain patterns: the agent checks requests
 * with these without loading typebox, and the typebox schemas in `schemas.ts` declare the same patterns for the
 * OpenAPI document and the clients.
 */

/** Longest nonce the quote routes accept. */
export const NONCE_MAX_LENGTH = 64
export const NONCE_PATTERN = `^[A-Za-z0-9]{1,${NONCE_MAX_LENGTH}}$`
/** hex PCR mask, `0x` optional (PCRs 0-23 only, checked after parsing) */
export const MASK_PATTERN = '^(0[xX])?[0-9a-fA-F]{1,8}$'
export const CHALLENGE_PATTERN = '^[A-Za-z0-9]{1,1024}$'
