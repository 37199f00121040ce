/**
 * Wire shapes of the verifier's push routes (API 3.0, keylime-api.md §4): JSON:API documents for sessions and
 * attestations. The schemas check the envelope (`data.attributes` objects); the handlers check the content and
 * answer JSON:API errors that point at the offending field, as upstream does.
 */
import { type Static, Type } from '@sinclair/typebox'
import { AgentId } from '../schemas.ts'

const Attributes = Type.Record(Type.String(), Type.Unknown())

/** `{"data": {"type": …, "attributes": {…}}}` of a request. */
export const JsonApiRequest = Type.Object({
  data: Type.Object({
    type: Type.Optional(Type.String()),
    id: Type.Optional(Type.String()),
    attributes: Attributes,
  }),
})
export type JsonApiRequest = Static<typeof JsonApiRequest>

/** A JSON:API resource in an answer. */
export const JsonApiResource = Type.Object({
  type: Type.String(),
  id: Type.String(),
  attributes: Attributes,
  links: Type.Optional(Type.Object({ self: Type.String() })),
})

export const JsonApiDocument = Type.Object({
  data: Type.Union([JsonApiResource, Type.Array(JsonApiResource)]),
  meta: Type.Optional(
    Type.Object({
      seconds_to_next_attestation: Type.Optional(Type.Integer()),
      // Keylime TS: when the bearer token expires (extended by passing attestations); upstream sends none
      token_expires_at: Type.Optional(Type.String()),
    }),
  ),
})

export const JsonApiErrors = Type.Object({
  errors: Type.Array(
    Type.Object({
      status: Type.String(),
      title: Type.Optional(Type.String()),
      code: Type.Optional(Type.String()),
      detail: Type.String(),
      source: Type.Optional(Type.Object({ pointer: Type.String() })),
    }),
  ),
})

export const SessionIdParams = Type.Object({ session_id: Type.String({ maxLength: 128 }) })
export type SessionIdParams = Static<typeof SessionIdParams>

export const AgentSessionParams = Type.Object({ agent_id: AgentId, token: Type.String({ maxLength: 256 }) })
export type AgentSessionParams = Static<typeof AgentSessionParams>

/** `latest` or an attestation index. */
export const AttestationParams = Type.Object({
  agent_id: AgentId,
  index: Type.String({ pattern: '^(latest|[0-9]{1,9})$' }),
})
export type AttestationParams = Static<typeof AttestationParams>
