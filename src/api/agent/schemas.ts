/**
 * Pull-agent REST schemas (keylime-api.md §1), declared once: they document the agent's routes (its OpenAPI
 * document, loaded on demand: the agent itself checks requests without typebox) and `AgentClient` compiles the
 * same ones to check replies. Unknown fields from an upstream agent are accepted.
 */
import { type Static, Type } from '@sinclair/typebox'
import { CHALLENGE_PATTERN, MASK_PATTERN, NONCE_PATTERN } from './query-rules.ts'

export const AgentVersionResults = Type.Object({
  supported_version: Type.String(),
  supported_versions: Type.Optional(Type.Array(Type.String())),
})
export type AgentVersionResults = Static<typeof AgentVersionResults>

export const AgentInfoResults = Type.Object({
  agent_uuid: Type.String(),
  tpm_hash_alg: Type.String(),
  tpm_enc_alg: Type.String(),
  tpm_sign_alg: Type.String(),
  ak_handle: Type.Integer({ minimum: 0 }),
})
export type AgentInfoResults = Static<typeof AgentInfoResults>

export const PubkeyResults = Type.Object({ pubkey: Type.String() })
export type PubkeyResults = Static<typeof PubkeyResults>

export const IdentityQuoteResults = Type.Object({
  quote: Type.String(),
  hash_alg: Type.String(),
  enc_alg: Type.String(),
  sign_alg: Type.String(),
  pubkey: Type.String(),
})
export type IdentityQuoteResults = Static<typeof IdentityQuoteResults>

export const IntegrityQuoteResults = Type.Object({
  quote: Type.String(),
  hash_alg: Type.String(),
  enc_alg: Type.String(),
  sign_alg: Type.String(),
  pubkey: Type.Optional(Type.String()),
  ima_measurement_list: Type.Optional(Type.String()),
  ima_measurement_list_entry: Type.Optional(Type.Integer({ minimum: 0 })),
  mb_measurement_list: Type.Optional(Type.String()),
  boottime: Type.Optional(Type.Integer()),
})
export type IntegrityQuoteResults = Static<typeof IntegrityQuoteResults>

export const UkeyBody = Type.Object({
  encrypted_key: Type.String(),
  auth_tag: Type.String(),
  payload: Type.Optional(Type.String()),
})
export type UkeyBody = Static<typeof UkeyBody>

export const VkeyBody = Type.Object({ encrypted_key: Type.String() })
export type VkeyBody = Static<typeof VkeyBody>

export const VerifyResults = Type.Object({ hmac: Type.String() })
export type VerifyResults = Static<typeof VerifyResults>

export const RevocationBody = Type.Object({ msg: Type.String(), signature: Type.String() })
export type RevocationBody = Static<typeof RevocationBody>

const Nonce = Type.String({
  pattern: NONCE_PATTERN,
  description: 'alphanumeric, 1-64',
})

export const IdentityQuoteQuery = Type.Object({ nonce: Nonce })
export type IdentityQuoteQuery = Static<typeof IdentityQuoteQuery>

export const IntegrityQuoteQuery = Type.Object({
  nonce: Nonce,
  /** hex PCR mask, `0x` optional, PCRs 0-23 only */
  mask: Type.String({ pattern: MASK_PATTERN }),
  /** `0`: include the payload public key; `1`: omit it */
  partial: Type.Union([Type.Literal('0'), Type.Literal('1')]),
  /** first IMA entry to return; anything that is not a number means 0, as upstream */
  ima_ml_entry: Type.Optional(Type.String()),
})
export type IntegrityQuoteQuery = Static<typeof IntegrityQuoteQuery>

export const VerifyQuery = Type.Object({ challenge: Type.String({ pattern: CHALLENGE_PATTERN }) })
export type VerifyQuery = Static<typeof VerifyQuery>
