/**
 * What the tenant needs from the registrar, the verifier and an agent: narrow interfaces, so the tenant's logic is
 * tested against real servers through thin adapters (`clients.ts`) and never depends on a server's internals.
 */
import type { IdentityQuoteResults, UkeyBody } from '../api/agent/schemas.ts'

/** A registrar record as `GET /v2.x/agents/:id` returns it (keylime-api.md §2). */
export interface RegistrarAgentRecord {
  agent_id?: string
  aik_tpm: string
  ek_tpm: string
  /** b64 DER, or null when the agent sent none. */
  ekcert: string | null
  /** PEM bundle of the EK CA chain from the agent's TPM NV (Keylime TS registrars), when there is one. */
  ek_ca_chain?: string | null
  mtls_cert: string | null
  ip: string | null
  port: number | string | null
  regcount: number
}

export interface RegistrarPort {
  /** null when the registrar answers 404 (unknown or not activated). */
  getAgent(uuid: string): Promise<RegistrarAgentRecord | null>
  listAgents(): Promise<string[]>
  /** false when the agent did not exist. */
  deleteAgent(uuid: string): Promise<boolean>
}

/** Body of `POST /v2.x/agents/:id` on the verifier (keylime-api.md §3.1). */
export interface VerifierEnrollBody {
  v: string | null
  cloudagent_ip: string
  cloudagent_port: number
  verifier_ip: string
  verifier_port: number
  tpm_policy: string
  runtime_policy: string
  runtime_policy_name: string | null
  runtime_policy_key: string
  mb_policy: string | null
  mb_policy_name: string | null
  ima_sign_verification_keys: string
  metadata: string
  revocation_key: string
  accept_tpm_hash_algs: string[]
  accept_tpm_encryption_algs: string[]
  accept_tpm_signing_algs: string[]
  ak_tpm: string
  mtls_cert: string | null
  supported_version: string
}

export type VerifierAgentStatus = Record<string, unknown> & {
  operational_state: number | null
  attestation_status?: string
  attestation_count?: number
  last_event_id?: string | null
  severity_level?: number | null
  verifier_id?: string
}

export type DeleteOutcome = 'deleted' | 'terminating' | 'not-found'

export interface VerifierPort {
  /** Throws a `TenantError` with the verifier's status text on refusal (409: already enrolled). */
  addAgent(uuid: string, body: VerifierEnrollBody): Promise<void>
  getAgent(uuid: string): Promise<VerifierAgentStatus | null>
  listAgents(verifierId?: string): Promise<string[]>
  bulkInfo(verifierId?: string): Promise<Record<string, VerifierAgentStatus>>
  deleteAgent(uuid: string): Promise<DeleteOutcome>
  reactivateAgent(uuid: string): Promise<void>
  stopAgent(uuid: string): Promise<void>
  addRuntimePolicy(name: string, body: RuntimePolicyBody, update: boolean): Promise<void>
  getRuntimePolicy(name: string): Promise<Record<string, unknown> | null>
  deleteRuntimePolicy(name: string): Promise<boolean>
  listRuntimePolicies(): Promise<string[]>
  addMbPolicy(name: string, mbPolicyJson: string, update: boolean): Promise<void>
  getMbPolicy(name: string): Promise<Record<string, unknown> | null>
  deleteMbPolicy(name: string): Promise<boolean>
  listMbPolicies(): Promise<string[]>
}

export interface RuntimePolicyBody {
  runtime_policy: string
  runtime_policy_key?: string
  tpm_policy?: string
}

export interface AgentPort {
  supportedVersions(): Promise<string[]>
  identityQuote(nonce: string): Promise<IdentityQuoteResults>
  postUkey(body: UkeyBody): Promise<void>
  verify(challenge: string): Promise<string>
  close(): Promise<void>
}

export interface AgentContact {
  ip: string
  port: number
  /** PEM of the agent's server certificate from the registrar, `"disabled"` for plain HTTP, or null. */
  mtlsCert: string | null
  apiVersion: string
}

export type AgentPortFactory = (contact: AgentContact) => AgentPort
