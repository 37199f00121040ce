/** Verifier REST v2 shapes (keylime-api.md §3), shared by the verifier routes and the tenant's VerifierClient. */
import { type Static, Type } from '@sinclair/typebox'

const StrList = Type.Array(Type.String())
const Nullable = <T extends import('@sinclair/typebox').TSchema>(t: T) => Type.Union([t, Type.Null()])

/** `POST /v2.x/agents/:agent_id` body; unknown fields from upstream tenants are accepted. */
export const EnrollBody = Type.Object(
  {
    v: Type.Optional(Nullable(Type.String())),
    cloudagent_ip: Type.Optional(Nullable(Type.String())),
    cloudagent_port: Type.Optional(Nullable(Type.Union([Type.Integer(), Type.String()]))),
    verifier_ip: Type.Optional(Nullable(Type.String())),
    verifier_port: Type.Optional(Nullable(Type.Union([Type.Integer(), Type.String()]))),
    tpm_policy: Type.String(),
    runtime_policy: Type.String(),
    runtime_policy_name: Type.Optional(Nullable(Type.String())),
    runtime_policy_key: Type.Optional(Nullable(Type.String())),
    mb_policy: Nullable(Type.String()),
    mb_policy_name: Nullable(Type.String()),
    ima_sign_verification_keys: Nullable(Type.String()),
    metadata: Nullable(Type.String()),
    revocation_key: Nullable(Type.String()),
    accept_tpm_hash_algs: StrList,
    accept_tpm_encryption_algs: StrList,
    accept_tpm_signing_algs: StrList,
    ak_tpm: Type.String(),
    mtls_cert: Type.Optional(Nullable(Type.String())),
    supported_version: Type.Optional(Nullable(Type.String())),
  },
  { additionalProperties: true },
)
export type EnrollBody = Static<typeof EnrollBody>

/** Keys upstream reads with `[...]` (absence -> `400 "Exception error: '<key>'"`). */
export const ENROLL_REQUIRED_KEYS = [
  'tpm_policy',
  'metadata',
  'ima_sign_verification_keys',
  'revocation_key',
  'accept_tpm_hash_algs',
  'accept_tpm_encryption_algs',
  'accept_tpm_signing_algs',
  'ak_tpm',
  'mb_policy',
  'mb_policy_name',
  'runtime_policy',
] as const

/** `GET /v2.x/agents/:agent_id` results. */
export const AgentStatus = Type.Object(
  {
    operational_state: Nullable(Type.Integer()),
    v: Nullable(Type.String()),
    ip: Nullable(Type.String()),
    port: Nullable(Type.Integer()),
    tpm_policy: Nullable(Type.String()),
    meta_data: Nullable(Type.String()),
    has_mb_refstate: Type.Integer(),
    has_runtime_policy: Type.Integer(),
    accept_tpm_hash_algs: StrList,
    accept_tpm_encryption_algs: StrList,
    accept_tpm_signing_algs: StrList,
    hash_alg: Nullable(Type.String()),
    enc_alg: Nullable(Type.String()),
    sign_alg: Nullable(Type.String()),
    verifier_id: Nullable(Type.String()),
    verifier_ip: Nullable(Type.String()),
    verifier_port: Nullable(Type.Integer()),
    severity_level: Nullable(Type.Integer()),
    last_event_id: Nullable(Type.String()),
    /** The specific reason behind last_event_id (e.g. which quote check failed); not sent by upstream. */
    last_event_context: Type.Optional(Nullable(Type.Record(Type.String(), Type.Unknown()))),
    attestation_count: Type.Integer(),
    last_received_quote: Nullable(Type.Integer()),
    last_successful_attestation: Nullable(Type.Integer()),
    attestation_status: Type.String(),
    attestation_period: Type.String(),
    maximum_attestation_interval: Type.String(),
  },
  { additionalProperties: true },
)
export type AgentStatus = Static<typeof AgentStatus>

export const AgentList = Type.Object({ uuids: Type.Array(Type.Array(Type.String())) })
export type AgentList = Static<typeof AgentList>

export const BulkAgents = Type.Record(Type.String(), AgentStatus)
export type BulkAgents = Static<typeof BulkAgents>

export const RuntimePolicyBody = Type.Object(
  {
    runtime_policy: Type.String(),
    runtime_policy_key: Type.Optional(Nullable(Type.String())),
    tpm_policy: Type.Optional(Nullable(Type.String())),
  },
  { additionalProperties: true },
)
export type RuntimePolicyBody = Static<typeof RuntimePolicyBody>

export const RuntimePolicyNames = Type.Object({ 'runtimepolicy names': StrList })
export const RuntimePolicyShow = Type.Object({
  name: Type.String(),
  tmp_policy: Type.Null(),
  runtime_policy: Nullable(Type.String()),
})
export const MbPolicyBody = Type.Object(
  { mb_policy: Nullable(Type.String()) },
  { additionalProperties: true },
)
export const MbPolicyNames = Type.Object({ 'mbpolicy names': StrList })
export const MbPolicyShow = Type.Object({ name: Type.String(), mb_policy: Nullable(Type.String()) })

export const VerifyIdentityResults = Type.Object({
  valid: Type.Integer(),
  reason: Type.Optional(Type.String()),
})
export type VerifyIdentityResults = Static<typeof VerifyIdentityResults>

export const VerifyEvidenceResults = Type.Object({
  valid: Type.Boolean(),
  claims: Type.Record(Type.String(), Type.Unknown()),
  failures: Type.Array(Type.Object({ type: Type.String(), context: Type.Unknown() })),
})
export type VerifyEvidenceResults = Static<typeof VerifyEvidenceResults>

export const VersionResults = Type.Object({
  current_version: Type.String(),
  supported_versions: StrList,
})
export type VersionResults = Static<typeof VersionResults>
