/**
 * Verifier API v3 management shapes (keylime-api.md §0.3 JSON:API, §4.3): agents, IMA policies, UEFI reference
 * states and on-demand evidence verification, carrying the same data as their v2 equivalents (§3). Resource
 * attributes never use the names `type` or `id`, which JSON:API reserves.
 */
import { type Static, type TSchema, Type } from '@sinclair/typebox'
import { AgentId, PolicyName } from '../schemas.ts'
import { AgentStatus, EnrollBody, TpmEvidenceData, VerifyEvidenceResults } from './schemas.ts'

export const JSON_API_MEDIA_TYPE = 'application/vnd.api+json'

/** JSON:API resource type names of the v3 management routes. */
export const V3_TYPES = {
  agent: 'agent',
  imaPolicy: 'ima_policy',
  uefiRefstate: 'uefi_refstate',
  evidence: 'evidence',
  evidenceVerification: 'evidence_verification',
} as const

/** One JSON:API error object: `code` is the API's own (`not_found`, `conflict`, `invalid_resource_data`…). */
export const JsonApiErrorObject = Type.Object({
  status: Type.String(),
  code: Type.String(),
  detail: Type.String(),
  source: Type.Optional(
    Type.Object({ pointer: Type.Optional(Type.String()), parameter: Type.Optional(Type.String()) }),
  ),
})
export const JsonApiErrors = Type.Object({ errors: Type.Array(JsonApiErrorObject) })
export type JsonApiErrors = Static<typeof JsonApiErrors>

/** A request document: `{"data": {"type": <type>, "id"?: <id>, "attributes": {…}}}`. */
const RequestDocument = <I extends TSchema, A extends TSchema>(type: string, id: I, attributes: A) =>
  Type.Object({
    data: Type.Object({
      type: Type.Literal(type),
      id: Type.Optional(id),
      attributes,
    }),
  })

/** A response document around one resource. */
const ResourceDocument = <A extends TSchema>(type: string, attributes: A) =>
  Type.Object({
    data: Type.Object({
      type: Type.Literal(type),
      id: Type.String(),
      attributes,
      links: Type.Object({ self: Type.String() }),
    }),
  })
const CollectionDocument = <A extends TSchema>(type: string, attributes: A) =>
  Type.Object({
    data: Type.Array(
      Type.Object({
        type: Type.Literal(type),
        id: Type.String(),
        attributes,
        links: Type.Object({ self: Type.String() }),
      }),
    ),
  })

// ---------------------------------------------------------------- agents

/**
 * `POST /v3/agents`: the v2 enrolment fields as attributes; the agent id is `data.id` or `attributes.agent_id`.
 */
export const CreateAgentBody = RequestDocument(
  V3_TYPES.agent,
  AgentId,
  Type.Intersect([EnrollBody, Type.Object({ agent_id: Type.Optional(AgentId) })]),
)
export type CreateAgentBody = Static<typeof CreateAgentBody>

/**
 * `PATCH /v3/agents/:agent_id`: what v2 does with `PUT …/stop` and `PUT …/reactivate`. `accept_attestations`
 * false stops attesting the agent (state Tenant Quote Failed), true restarts it from Start.
 */
export const PatchAgentBody = RequestDocument(
  V3_TYPES.agent,
  AgentId,
  Type.Object({ accept_attestations: Type.Boolean() }, { additionalProperties: false }),
)
export type PatchAgentBody = Static<typeof PatchAgentBody>

/** `GET /v3/agents?filter[verifier]=<id>`: only the agents of that verifier id (v2's `?verifier=`). */
export const AgentCollectionQuery = Type.Object({ 'filter[verifier]': Type.Optional(Type.String()) })
export type AgentCollectionQuery = Static<typeof AgentCollectionQuery>

export const AgentDocument = ResourceDocument(V3_TYPES.agent, AgentStatus)
export const AgentCollection = CollectionDocument(V3_TYPES.agent, AgentStatus)

// ---------------------------------------------------------------- IMA (runtime) policies

const ImaPolicyFields = {
  /** b64 of the runtime policy JSON or of its DSSE envelope, as v2's `runtime_policy` */
  runtime_policy: Type.String(),
  /** b64 PEM public key that signed a DSSE envelope */
  runtime_policy_key: Type.Optional(Type.Union([Type.String(), Type.Null()])),
  tpm_policy: Type.Optional(Type.Union([Type.String(), Type.Null()])),
}
/** `POST /v3/policies/ima`: the name is `data.id` or `attributes.name`. */
export const CreateImaPolicyBody = RequestDocument(
  V3_TYPES.imaPolicy,
  PolicyName,
  Type.Object({ name: Type.Optional(PolicyName), ...ImaPolicyFields }, { additionalProperties: false }),
)
export type CreateImaPolicyBody = Static<typeof CreateImaPolicyBody>
/** `PATCH /v3/policies/ima/:name`: replaces the policy. */
export const PatchImaPolicyBody = RequestDocument(
  V3_TYPES.imaPolicy,
  PolicyName,
  Type.Object(ImaPolicyFields, { additionalProperties: false }),
)
export type PatchImaPolicyBody = Static<typeof PatchImaPolicyBody>

const ImaPolicyAttributes = Type.Object({
  name: Type.String(),
  /** the policy JSON text as stored (a DSSE envelope is stored unwrapped) */
  runtime_policy: Type.Union([Type.String(), Type.Null()]),
  tpm_policy: Type.Union([Type.String(), Type.Null()]),
  checksum: Type.Union([Type.String(), Type.Null()]),
  generator: Type.Union([Type.Integer(), Type.Null()]),
})
export const ImaPolicyDocument = ResourceDocument(V3_TYPES.imaPolicy, ImaPolicyAttributes)
export const ImaPolicyCollection = CollectionDocument(
  V3_TYPES.imaPolicy,
  Type.Object({ name: Type.String() }),
)

// ---------------------------------------------------------------- UEFI (measured-boot) reference states

/** `POST /v3/refstates/uefi`: the name is `data.id` or `attributes.name`; `mb_policy` is the JSON text. */
export const CreateRefstateBody = RequestDocument(
  V3_TYPES.uefiRefstate,
  PolicyName,
  Type.Object({ name: Type.Optional(PolicyName), mb_policy: Type.String() }, { additionalProperties: false }),
)
export type CreateRefstateBody = Static<typeof CreateRefstateBody>
export const PatchRefstateBody = RequestDocument(
  V3_TYPES.uefiRefstate,
  PolicyName,
  Type.Object({ mb_policy: Type.String() }, { additionalProperties: false }),
)
export type PatchRefstateBody = Static<typeof PatchRefstateBody>

export const RefstateDocument = ResourceDocument(
  V3_TYPES.uefiRefstate,
  Type.Object({ name: Type.String(), mb_policy: Type.Union([Type.String(), Type.Null()]) }),
)
export const RefstateCollection = CollectionDocument(
  V3_TYPES.uefiRefstate,
  Type.Object({ name: Type.String() }),
)

// ---------------------------------------------------------------- on-demand evidence verification

/** `POST /v3/verify/evidence`: v2's `{type, data}` as `evidence_type` and `evidence` (`type` is reserved). */
export const VerifyEvidenceDocument = Type.Object({
  data: Type.Object({
    type: Type.Literal(V3_TYPES.evidence),
    attributes: Type.Object({
      /** only `tpm` is supported */
      evidence_type: Type.String(),
      evidence: TpmEvidenceData,
    }),
  }),
})
export type VerifyEvidenceDocument = Static<typeof VerifyEvidenceDocument>

export const EvidenceVerificationDocument = Type.Object({
  data: Type.Object({ type: Type.Literal(V3_TYPES.evidenceVerification), attributes: VerifyEvidenceResults }),
})
