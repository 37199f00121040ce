/** Verifier REST v2 shapes (keylime-api.md §3), shared by the verifier routes and the tenant's VerifierClient. */
import { type Static, Type } from '@sinclair/typebox'
import { AgentId } from '../schemas.ts'

const StrList = Type.Array(Type.String())
const Nullable = <T extends import('@sinclair/typebox').TSchema>(t: T) => Type.Union([t, Type.Null()])

/**
 * An accept list (`accept_tpm_hash_algs` …). Upstream also takes a single string where the list is expected and
 * treats it as that one algorithm; the verifier stores it as a one-element list (`asList`).
 */
const AcceptList = Type.Union([StrList, Type.String()], {
  description: 'list of algorithm names; a single string is taken as a one-element list, as upstream does',
})

/** An accept list as the verifier stores it: a single string becomes a one-element list. */
export function asList(v: string | string[]): string[] {
  return typeof v === 'string' ? [v] : v
}

/**
 * `POST /v2.x/agents/:agent_id` body; unknown fields from upstream tenants are accepted. The required keys are the
 * ones upstream reads with `[...]` (a missing one is `400 "Exception error: '<key>'"`).
 */
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
    accept_tpm_hash_algs: AcceptList,
    accept_tpm_encryption_algs: AcceptList,
    accept_tpm_signing_algs: AcceptList,
    ak_tpm: Type.String(),
    mtls_cert: Type.Optional(Nullable(Type.String())),
    supported_version: Type.Optional(Nullable(Type.String())),
  },
  { additionalProperties: true },
)
export type EnrollBody = Static<typeof EnrollBody>

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

/** `GET /v2.x/agents` query: `verifier` filters (empty = all), `bulk` (any value) returns status objects. */
export const AgentListQuery = Type.Object({
  verifier: Type.Optional(Type.String()),
  bulk: Type.Optional(Type.String()),
})
export type AgentListQuery = Static<typeof AgentListQuery>

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
export const MbPolicyBody = Type.Object({ mb_policy: Type.String() }, { additionalProperties: true })
export type MbPolicyBody = Static<typeof MbPolicyBody>
export const MbPolicyNames = Type.Object({ 'mbpolicy names': StrList })
export const MbPolicyShow = Type.Object({ name: Type.String(), mb_policy: Nullable(Type.String()) })

/** `GET /v2.x/verify/identity` query (each missing parameter is a 400 naming it). */
export const VerifyIdentityQuery = Type.Object({
  agent_uuid: AgentId,
  quote: Type.String({ minLength: 1 }),
  nonce: Type.String({ minLength: 1 }),
  hash_alg: Type.String({ minLength: 1 }),
})
export type VerifyIdentityQuery = Static<typeof VerifyIdentityQuery>

/** `tpm` evidence of `POST /v2.x/verify/evidence`; missing required fields are reported as failures (§3.4). */
export const TpmEvidenceData = Type.Object(
  {
    quote: Type.Optional(Type.String()),
    nonce: Type.Optional(Type.String()),
    hash_alg: Type.Optional(Type.String()),
    tpm_ek: Type.Optional(Type.String()),
    tpm_ak: Type.Optional(Type.String()),
    /** JSON text of `{"<pcr>": [...], "mask": ...}` */
    tpm_policy: Type.Optional(Type.String()),
    /** runtime policy JSON text */
    runtime_policy: Type.Optional(Type.String()),
    /** measured-boot reference state JSON text */
    mb_policy: Type.Optional(Nullable(Type.String())),
    /** b64 UEFI event log */
    mb_log: Type.Optional(Type.String()),
    ima_measurement_list: Type.Optional(Type.String()),
  },
  { additionalProperties: true },
)
export type TpmEvidenceData = Static<typeof TpmEvidenceData>

export const VerifyEvidenceBody = Type.Object({
  /** only `tpm` is supported */
  type: Type.String(),
  data: Type.Optional(TpmEvidenceData),
})
export type VerifyEvidenceBody = Static<typeof VerifyEvidenceBody>

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
