/**
 * The verifier's management operations (keylime-api.md §3), shared by the v2 routes (`app.ts`) and the v3 JSON:API
 * routes (`v3-management.ts`): one implementation of each check, so the two APIs cannot drift apart. Refusals are
 * `VerifierRequestError`s with upstream's texts; each route renders them in its own error format.
 */
import type { EnrollBody, RuntimePolicyBody } from '../api/verifier/schemas.ts'
import { AgentState, attestationStatus, IDLE_STATES, pushAttestationStatus } from '../api/verifier/states.ts'
import type { AllowlistRow, MbPolicyRow, VerifierAgentRow } from '../db/verifier-repository.ts'
import { RUNTIME_POLICY_GENERATOR } from '../evidence/ima/index.ts'
import {
  b64decode,
  generatorOf,
  parseMbInput,
  parseRuntimeInput,
  unwrapRuntimePolicy,
  VerifierRequestError,
} from './policy-input.ts'
import { assertPolicyNameFree, POLICY_KINDS, type PolicyKind, requirePolicyMeta } from './policy-names.ts'
import { PolicyStore } from './policy-store.ts'
import type { VerifierService } from './verifier-service.ts'

/** Records one admin action of the request at hand (who is the route's to add): `agent.enrol`, `mb_policy.add`… */
export type ActionAudit = (action: string, fields: Record<string, unknown>) => void

/** The stored `last_event_context` JSON; a value that does not parse is shown as text, never a 500. */
function eventContext(text: string | null): Record<string, unknown> | null {
  if (text === null) return null
  try {
    return JSON.parse(text) as Record<string, unknown>
  } catch {
    return { unparsable: text }
  }
}

function jsonList(text: string | null): string[] {
  if (!text) return []
  try {
    const v = JSON.parse(text)
    return Array.isArray(v) ? v.map(String) : []
  } catch {
    return []
  }
}

async function policyFlags(
  service: VerifierService,
  row: VerifierAgentRow,
): Promise<{ rt: number; mb: number }> {
  const repo = service.repo
  let rt = 0
  if (row.ima_policy_id !== null) {
    const p = await repo.allowlistMetaById(row.ima_policy_id)
    rt = p && (p.generator ?? 0) > RUNTIME_POLICY_GENERATOR.EmptyAllowList ? 1 : 0
  }
  let mb = 0
  if (row.mb_policy_id !== null) {
    const p = await repo.mbPolicyMetaById(row.mb_policy_id)
    mb = p?.body_digest ? 1 : 0
  }
  return { rt, mb }
}

/** `GET /agents/:agent_id` results (§3.1). */
export async function agentStatus(
  service: VerifierService,
  row: VerifierAgentRow,
): Promise<Record<string, unknown>> {
  const flags = await policyFlags(service, row)
  const interval = Math.round(service.options.quoteIntervalMs / 1000)
  return {
    operational_state: row.operational_state,
    v: row.v,
    ip: row.ip,
    port: row.port,
    tpm_policy: row.tpm_policy,
    meta_data: row.meta_data,
    has_mb_refstate: flags.mb,
    has_runtime_policy: flags.rt,
    accept_tpm_hash_algs: jsonList(row.accept_tpm_hash_algs),
    accept_tpm_encryption_algs: jsonList(row.accept_tpm_encryption_algs),
    accept_tpm_signing_algs: jsonList(row.accept_tpm_signing_algs),
    hash_alg: row.hash_alg,
    enc_alg: row.enc_alg,
    sign_alg: row.sign_alg,
    verifier_id: row.verifier_id,
    verifier_ip: row.verifier_ip,
    verifier_port: row.verifier_port,
    severity_level: row.severity_level,
    last_event_id: row.last_event_id,
    last_event_context: eventContext(row.last_event_context),
    attestation_count: row.attestation_count,
    last_received_quote: row.last_received_quote === null ? null : Number(row.last_received_quote),
    last_successful_attestation:
      row.last_successful_attestation === null ? null : Number(row.last_successful_attestation),
    attestation_status:
      row.ip === null ? pushAttestationStatus(row) : attestationStatus(row.operational_state),
    attestation_period: `${interval}s`,
    maximum_attestation_interval: `${interval * 5}s`,
  }
}

/** The agent's row, or a 404 "agent id not found". */
export async function requireAgent(service: VerifierService, agentId: string): Promise<VerifierAgentRow> {
  const row = await service.repo.getAgent(agentId)
  if (!row) throw new VerifierRequestError(404, 'agent id not found')
  return row
}

/** `POST /agents` (§3.1): enrols the agent and its policies, audited with what it brought along. */
export async function enrolAgent(
  service: VerifierService,
  agentId: string,
  body: EnrollBody,
  audit: ActionAudit,
): Promise<void> {
  const row = await service.enrol(agentId, body)
  audit('agent.enrol', {
    agentId,
    ip: row.ip,
    port: row.port,
    runtimePolicyId: row.ima_policy_id,
    mbPolicyId: row.mb_policy_id,
    runtimePolicyName: body.runtime_policy_name ?? null,
    mbPolicyName: body.mb_policy_name,
    tpmPolicy: body.tpm_policy,
    payloadKey: row.v !== null,
  })
}

/**
 * `DELETE /agents/:agent_id` (§3.1): 200 when deleted now, 202 when the verifier attesting it finishes the deletion.
 * 404 when absent or enrolled at another verifier id.
 */
export async function deleteAgent(
  service: VerifierService,
  agentId: string,
  audit: ActionAudit,
): Promise<200 | 202> {
  const code = await removeAgent(service, agentId)
  audit('agent.delete', { agentId, completed: code === 200 })
  return code
}

async function removeAgent(service: VerifierService, agentId: string): Promise<200 | 202> {
  const repo = service.repo
  const row = await requireAgent(service, agentId)
  if (row.verifier_id !== service.options.verifierId)
    throw new VerifierRequestError(404, 'agent id associated to this verifier')
  const state = row.operational_state
  if (state === AgentState.TERMINATED) return 202
  const push = service.push
  if (row.ip === null && push) {
    // a push agent is never polled: deleted at once, its attestations first
    await push.repo.deleteAttestations(agentId)
    await repo.deleteAgent(agentId)
    return 200
  }
  const idle = IDLE_STATES as readonly number[]
  const heldElsewhere =
    row.lease_holder !== null &&
    row.lease_holder !== service.leaseHolder &&
    (row.lease_expires ?? 0) > Date.now()
  if ((state === null || !idle.includes(state)) && heldElsewhere) {
    // the verifier holding it finishes the deletion when its next guarded write is refused
    await repo.setState(agentId, AgentState.TERMINATED)
    return 202
  }
  // idle, or held here: cancelling the loop's step (its result is discarded) makes an immediate delete safe
  service.loop.remove(agentId)
  await repo.deleteAgent(agentId)
  return 200
}

/** `PUT /agents/:agent_id/reactivate`: back to START under this verifier, audited with the previous state. */
export async function reactivateAgent(
  service: VerifierService,
  agentId: string,
  missingStatus: 400 | 404,
  audit: ActionAudit,
): Promise<void> {
  const row = await service.repo.getAgent(agentId)
  if (!row) throw new VerifierRequestError(missingStatus, 'agent id not found')
  const push = service.push
  if (row.ip === null && push) {
    // a push agent: accept its attestations again, evidence due within the timeout
    await push.repo.reactivate(agentId, Date.now() + service.options.push.evidenceTimeoutMs)
  } else {
    await service.repo.reactivate(agentId, service.leaseHolder)
    const fresh = await service.repo.getAgent(agentId)
    if (fresh && fresh.ip !== null && fresh.port !== null) service.loop.add(fresh)
  }
  audit('agent.reactivate', { agentId, previousState: row.operational_state })
}

/** `PUT /agents/:agent_id/stop`: state TENANT_FAILED, no longer attested. */
export async function stopAgent(
  service: VerifierService,
  agentId: string,
  audit: ActionAudit,
): Promise<void> {
  if (!(await service.repo.setState(agentId, AgentState.TENANT_FAILED)))
    throw new VerifierRequestError(404, 'agent id not found')
  service.loop.remove(agentId)
  audit('agent.stop', { agentId })
}

/** A runtime policy by name, or a 404 `Runtime policy NAME not found`. */
export async function requireRuntimePolicy(service: VerifierService, name: string): Promise<AllowlistRow> {
  const p = await service.repo.getAllowlist(name)
  if (!p) throw new VerifierRequestError(404, POLICY_KINDS.ima.missing(name))
  return p
}

/** A measured-boot policy by name, or a 404 `Measured boot policy NAME not found`. */
export async function requireMbPolicy(service: VerifierService, name: string): Promise<MbPolicyRow> {
  const p = await service.repo.getMbPolicy(name)
  if (!p) throw new VerifierRequestError(404, POLICY_KINDS.mb.missing(name))
  return p
}

/**
 * `POST` (create) or `PUT` (replace) of a runtime policy (§3.2): the DSSE envelope checked with its key, the
 * policy's schema checked; 409 when creating an existing name, 404 when replacing a missing one. Audited with the
 * stored checksum.
 */
export async function saveRuntimePolicy(
  service: VerifierService,
  name: string,
  body: RuntimePolicyBody,
  mode: 'create' | 'replace',
  audit: ActionAudit,
): Promise<void> {
  const repo = service.repo
  const o = service.options
  const text = unwrapRuntimePolicy(
    b64decode('runtime_policy', body.runtime_policy).toString('utf8'),
    body.runtime_policy_key,
    o.requireAllowListSignatures,
  )
  const parsed = parseRuntimeInput(text, true)
  const fields = {
    ima_policy: text,
    checksum: PolicyStore.checksum(text),
    generator: generatorOf(parsed),
    tpm_policy: typeof body.tpm_policy === 'string' ? body.tpm_policy : null,
  }
  if (mode === 'create') {
    await assertPolicyNameFree(repo, 'ima', name)
    await repo.insertAllowlist({ name, ...fields })
  } else {
    const existing = await repo.allowlistMeta(name)
    if (!existing || !(await repo.updateAllowlist(name, fields)))
      throw new VerifierRequestError(404, `Runtime policy ${name} not found`)
    service.loop.invalidatePolicy('ima', existing.id)
  }
  audit(mode === 'create' ? 'runtime_policy.add' : 'runtime_policy.update', {
    policy: name,
    checksum: fields.checksum,
  })
}

/**
 * `POST`/`PUT` of a measured-boot policy (§3.3): the policy is checked by the configured engine; 409 when creating
 * an existing name, and (as upstream) 409 when replacing a missing one, unless `missingStatus` says otherwise.
 */
export async function saveMbPolicy(
  service: VerifierService,
  name: string,
  mbPolicy: string,
  mode: 'create' | 'replace',
  audit: ActionAudit,
  missingStatus: 404 | 409 = 409,
): Promise<void> {
  const repo = service.repo
  parseMbInput(mbPolicy, service.options.mbPolicyEngine)
  if (mode === 'create') {
    await assertPolicyNameFree(repo, 'mb', name)
    await repo.insertMbPolicy(name, mbPolicy)
  } else {
    const existing = await repo.mbPolicyMeta(name)
    if (!existing || !(await repo.updateMbPolicy(name, mbPolicy)))
      throw new VerifierRequestError(missingStatus, `Measured boot policy ${name} does not exist`)
    service.loop.invalidatePolicy('mb', existing.id)
  }
  audit(mode === 'create' ? 'mb_policy.add' : 'mb_policy.update', {
    policy: name,
    checksum: PolicyStore.checksum(mbPolicy),
  })
}

/** How each kind of named policy is found and removed, and its refusals in upstream's words. */
/** Deletes a policy no agent uses (404 absent, 409 in use). */
async function deleteUnusedPolicy(
  service: VerifierService,
  kind: PolicyKind,
  name: string,
  audit: ActionAudit,
): Promise<void> {
  const how = POLICY_KINDS[kind]
  const p = await requirePolicyMeta(service.repo, kind, name)
  const user = await service.repo.agentUsingPolicy(kind, p.id)
  if (user) throw new VerifierRequestError(409, how.inUse(user))
  await how.remove(service.repo, p.name)
  audit(how.action, { policy: name })
}

/** Deletes a runtime policy no agent uses (404 absent, 409 in use). */
export const deleteRuntimePolicy = (service: VerifierService, name: string, audit: ActionAudit) =>
  deleteUnusedPolicy(service, 'ima', name, audit)

/** Deletes a measured-boot policy no agent uses (404 absent, 409 in use). */
export const deleteMbPolicy = (service: VerifierService, name: string, audit: ActionAudit) =>
  deleteUnusedPolicy(service, 'mb', name, audit)
