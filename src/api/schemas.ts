/**
 * Wire shapes every service shares (keylime-api.md §0): path parameters and the v2 envelope. Route schemas and the
 * OpenAPI documents are built from these, so each structure is declared once.
 */
import { type Static, type TSchema, Type } from '@sinclair/typebox'

/**
 * Agent ids as upstream's verifier accepts them (`[\w.-]+`, ASCII here) and at most the 80 characters of the
 * `agent_id` column; an id made only of dots is refused because it would be a path segment with meaning (`.`,
 * `..`) in every URL that carries it.
 */
export const AGENT_ID_PATTERN = '^(?!\\.+$)[A-Za-z0-9_.-]{1,80}$'
export const AgentId = Type.String({
  pattern: AGENT_ID_PATTERN,
  maxLength: 80,
  description: '1-80 characters of [A-Za-z0-9_.-], not only dots',
})
export const AgentIdParams = Type.Object({ agent_id: AgentId })
export type AgentIdParams = Static<typeof AgentIdParams>

const AGENT_ID_REGEX = new RegExp(AGENT_ID_PATTERN)
export function isValidAgentId(id: unknown): id is string {
  return typeof id === 'string' && AGENT_ID_REGEX.test(id)
}

/** Runtime / measured-boot policy names: the 255 characters of the name column, not only dots. */
export const PolicyName = Type.String({
  pattern: '^(?!\\.+$)[^/]{1,255}$',
  maxLength: 255,
  description: '1-255 characters, no slash, not only dots',
})
export const PolicyNameParams = Type.Object({ name: PolicyName })
export type PolicyNameParams = Static<typeof PolicyNameParams>

/** The v2 envelope `{code, status, results}` around a route's results (§0.3). */
export const Envelope = <T extends TSchema>(results: T) =>
  Type.Object({ code: Type.Integer(), status: Type.String(), results })

/** Every error answer: the envelope with empty results. */
export const ErrorEnvelope = Envelope(Type.Object({}))

/** The JSON (non-envelope) body of 401/403 answers (§0.3). */
export const AuthErrorBody = Type.Object({
  errors: Type.Array(Type.Object({ status: Type.String(), title: Type.String(), detail: Type.String() })),
})

/** A route that takes no body: anything sent is ignored (bounded by the route's small body limit). */
export const NoBody = Type.Unknown({ description: 'no body expected; anything sent is ignored' })
