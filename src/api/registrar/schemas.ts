/**
 * Registrar REST shapes (keylime-api.md §2), declared once: the registrar validates requests against the same
 * field rules, and `RegistrarClient` checks replies with these schemas. Unknown fields are accepted.
 */
import { type Static, Type } from '@sinclair/typebox'
import { AgentId } from '../schemas.ts'

const Nullable = <T extends ReturnType<typeof Type.String>>(t: T) => Type.Union([t, Type.Null()])

/** POST /v{v}/agents[/:agent_id] */
export const RegisterBody = Type.Object({
  /** only on the collection route; the path carries it otherwise */
  agent_id: Type.Optional(AgentId),
  /** b64 TPM2B_PUBLIC of the AK (required) */
  aik_tpm: Type.String(),
  /** b64 TPM2B_PUBLIC of the EK */
  ek_tpm: Type.Optional(Nullable(Type.String())),
  /** EK certificate: PEM or b64 DER */
  ekcert: Type.Optional(Nullable(Type.String())),
  iak_tpm: Type.Optional(Nullable(Type.String())),
  idevid_tpm: Type.Optional(Nullable(Type.String())),
  iak_cert: Type.Optional(Nullable(Type.String())),
  idevid_cert: Type.Optional(Nullable(Type.String())),
  iak_attest: Type.Optional(Nullable(Type.String())),
  iak_sign: Type.Optional(Nullable(Type.String())),
  /** PEM of the pull agent's HTTPS certificate, or `disabled` */
  mtls_cert: Type.Optional(Nullable(Type.String())),
  ip: Type.Optional(Nullable(Type.String())),
  port: Type.Optional(Type.Union([Type.Integer(), Type.String(), Type.Null()])),
})
export type RegisterBody = Static<typeof RegisterBody>

export const RegisterResults = Type.Object({ blob: Type.String() })
export type RegisterResults = Static<typeof RegisterResults>

/** PUT /v2/agents/:agent_id, POST|PUT …/activate */
export const ActivateBody = Type.Object({ auth_tag: Type.String() })
export type ActivateBody = Static<typeof ActivateBody>

export const ListResults = Type.Object({ uuids: Type.Array(Type.String()) })
export type ListResults = Static<typeof ListResults>

/** GET /v{v}/agents/:agent_id */
export const AgentResults = Type.Object({
  agent_id: Type.String(),
  aik_tpm: Type.String(),
  ek_tpm: Type.Union([Type.String(), Type.Null()]),
  /** b64 DER (not PEM) */
  ekcert: Type.Union([Type.String(), Type.Null()]),
  iak_tpm: Type.Optional(Type.Union([Type.String(), Type.Null()])),
  idevid_tpm: Type.Optional(Type.Union([Type.String(), Type.Null()])),
  iak_cert: Type.Optional(Type.Union([Type.String(), Type.Null()])),
  idevid_cert: Type.Optional(Type.Union([Type.String(), Type.Null()])),
  mtls_cert: Type.Union([Type.String(), Type.Null()]),
  ip: Type.Union([Type.String(), Type.Null()]),
  port: Type.Union([Type.Integer(), Type.Null()]),
  regcount: Type.Integer(),
})
export type AgentResults = Static<typeof AgentResults>

/** GET /version (unversioned) */
export const VersionResults = Type.Object({
  current_version: Type.String(),
  supported_versions: Type.Array(Type.String()),
})
export type VersionResults = Static<typeof VersionResults>

export const EmptyResults = Type.Union([Type.Object({}), Type.Null()])
