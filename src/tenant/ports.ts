/**
 * What the tenant needs from the registrar, the verifier and an agent: narrow interfaces, so the tenant's logic is
 * tested against real servers through thin adapters (`clients.ts`) and never depends on a server's internals.
 */
import type { IdentityQuoteResults, UkeyBody } from '../api/agent/schemas.ts'
import type { AgentResults } from '../api/registrar/schemas.ts'
import type { EnrollBody, RuntimePolicyBody } from '../api/verifier/schemas.ts'

export type { RuntimePolicyBody }

/**
 * A registrar record as `GET /v2.x/agents/:id` returns it (keylime-api.md §2), with the EK the tenant needs
 * (upstream's tenant refuses a record without `ek_tpm`, and so does `registrarPort`).
 */
export type RegistrarAgentRecord = AgentResults & { ek_tpm: string }

export interface RegistrarPort {
  /** null when the registrar answers 404 (unknown or not activated). */
  getAgent(uuid: string): Promise<RegistrarAgentRecord | null>
  listAgents(): Promise<string[]>
  /** false when the agent did not exist. */
  deleteAgent(uuid: string): Promise<boolean>
}

/** Body of `POST /v2.x/agents/:id` on the verifier (keylime-api.md §3.1). */
export type VerifierEnrollBody = EnrollBody

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

/** The agent's `/keys/verify` answer: K derived and its payload installed, not yet, or the payload refused. */
export type BootstrapKeyAnswer =
  | { state: 'derived'; hmac: string }
  | { state: 'pending'; detail: string }
  | { state: 'refused'; reason: string }

export interface AgentPort {
  supportedVersions(): Promise<string[]>
  identityQuote(nonce: string): Promise<IdentityQuoteResults>
  postUkey(body: UkeyBody): Promise<void>
  verify(challenge: string): Promise<BootstrapKeyAnswer>
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
