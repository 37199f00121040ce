/**
 * `POST /v2.x/agents/:agent_id` (keylime-api.md §3.1) checked and turned into what is stored: the agent row and the
 * policies it brings along. Nothing is written here; the service stores the plan in one transaction.
 */
import type { KeyObject } from 'node:crypto'
import { asList, type EnrollBody } from '../api/verifier/schemas.ts'
import { AgentState } from '../api/verifier/states.ts'
import { AGENT_API_VERSIONS, CURRENT_API_VERSION } from '../api/versions.ts'
import {
  bodyInput,
  type NewAgentPolicies,
  type NewVerifierAgent,
  type PolicyBodyInput,
  type VerifierRepository,
} from '../db/verifier-repository.ts'
import { akKeyObject, assertCheckableTpmPolicy, parseTpmPolicy } from '../evidence/quote/index.ts'
import { agentKeyring } from './agent-runtime.ts'
import type { VerifierOptions } from './options.ts'
import {
  b64decode,
  generatorOf,
  parseMbInput,
  parseRuntimeInput,
  unwrapRuntimePolicy,
  VerifierRequestError,
} from './policy-input.ts'
import { assertPolicyNameFree, requirePolicyMeta } from './policy-names.ts'
import type { PolicyStore } from './policy-store.ts'

export interface EnrolmentPlan {
  row: NewVerifierAgent
  newPolicies: NewAgentPolicies
  /** The AK of `ak_tpm`, built once here to check it and handed to the loop (no second import). */
  akPublic: KeyObject
}

export interface EnrolmentContext {
  repo: VerifierRepository
  options: VerifierOptions
  policies: PolicyStore
  lease: { holder: string }
  /** ms since the epoch (the push agent's first evidence deadline counts from enrolment). */
  now: number
}

export async function planEnrolment(
  id: string,
  b: EnrollBody,
  ctx: EnrolmentContext,
): Promise<EnrolmentPlan> {
  const { repo, options: o } = ctx
  assertCheckableTpmPolicy(parseTpmPolicy(b.tpm_policy))
  try {
    agentKeyring(b.ima_sign_verification_keys)
  } catch (err) {
    throw new VerifierRequestError(400, `ima_sign_verification_keys: ${(err as Error).message}`)
  }
  let v: string | null = null
  if (b.v !== undefined && b.v !== null && b.v !== '') {
    const raw = b64decode('v', b.v)
    if (raw.length !== 32 && raw.length !== 16)
      throw new VerifierRequestError(400, 'v must be 16 or 32 bytes (base64)')
    v = b.v
  }
  let akPublic: KeyObject
  try {
    akPublic = akKeyObject(new Uint8Array(b64decode('ak_tpm', b.ak_tpm)))
  } catch (err) {
    throw new VerifierRequestError(400, `ak_tpm is not a usable TPM2B_PUBLIC: ${(err as Error).message}`)
  }
  const supported =
    b.supported_version && (AGENT_API_VERSIONS as readonly string[]).includes(b.supported_version)
      ? b.supported_version
      : CURRENT_API_VERSION
  const mtls = b.mtls_cert ?? null
  // push mode (keylime-api.md §3.1): the agent is never contacted, its address is not kept
  const push = o.mode === 'push'
  if (!push && o.enableAgentMtls && supported !== '1.0' && (mtls === null || mtls === ''))
    throw new VerifierRequestError(400, 'mTLS certificate for agent is required!')
  const ip = push ? null : (b.cloudagent_ip ?? null)
  const port =
    push || b.cloudagent_port === undefined || b.cloudagent_port === null ? null : Number(b.cloudagent_port)
  if (!push && (!ip || port === null || !Number.isInteger(port) || port < 1 || port > 65535))
    throw new VerifierRequestError(400, 'cloudagent_ip and cloudagent_port are required')

  // runtime policy (§3.1): name+policy -> store under name (409 if exists); name only -> the stored one (404);
  // policy only -> store under the agent id; neither -> no runtime policy
  const newPolicies: EnrolmentPlan['newPolicies'] = {}
  const rawPolicy = b64decode('runtime_policy', b.runtime_policy).toString('utf8')
  const policyName = b.runtime_policy_name ?? null
  let imaPolicyId: number | null = null
  if (rawPolicy.trim() !== '') {
    const name = policyName || id
    await assertPolicyNameFree(repo, 'ima', name)
    // a text already stored as a runtime policy was checked when it was first stored: it is used as it is, with no
    // parse at all (a large list takes seconds); unless signatures are required, which a plain text never carries
    const raw = bodyInput(rawPolicy)
    const storedRaw = o.requireAllowListSignatures ? undefined : await repo.policyBody(raw.digest)
    let body: PolicyBodyInput
    let generator: number
    if (storedRaw?.kind === 'runtime' && storedRaw.generator !== null) {
      body = raw
      generator = storedRaw.generator
    } else {
      const policyText = unwrapRuntimePolicy(rawPolicy, b.runtime_policy_key, o.requireAllowListSignatures)
      body = policyText === rawPolicy ? raw : bodyInput(policyText)
      const stored = body === raw ? storedRaw : await repo.policyBody(body.digest)
      if (stored?.kind === 'runtime' && stored.generator !== null) generator = stored.generator
      else {
        const parsed = parseRuntimeInput(policyText, false)
        ctx.policies.compileRuntimeTextChecked(policyText)
        generator = generatorOf(parsed)
      }
    }
    newPolicies.runtime = { name, body, checksum: body.digest, generator }
  } else if (policyName) {
    imaPolicyId = (await requirePolicyMeta(repo, 'ima', policyName)).id
  }
  const mbName = b.mb_policy_name ?? null
  let mbPolicyId: number | null = null
  if (b.mb_policy !== null && b.mb_policy.trim() !== '') {
    const name = mbName || id
    await assertPolicyNameFree(repo, 'mb', name)
    const body = bodyInput(b.mb_policy)
    if ((await repo.policyBody(body.digest))?.kind !== 'mb') parseMbInput(b.mb_policy, o.mbPolicyEngine)
    newPolicies.mb = { name, body }
  } else if (mbName) {
    mbPolicyId = (await requirePolicyMeta(repo, 'mb', mbName)).id
  }
  return {
    newPolicies,
    akPublic,
    row: {
      agent_id: id,
      v,
      ip,
      port,
      verifier_id: o.verifierId,
      verifier_ip: b.verifier_ip ?? o.ip,
      verifier_port:
        b.verifier_port === undefined || b.verifier_port === null ? o.port : Number(b.verifier_port),
      operational_state: push ? AgentState.GET_QUOTE : AgentState.START,
      public_key: null,
      tpm_policy: b.tpm_policy,
      meta_data: b.metadata,
      ima_policy_id: imaPolicyId,
      mb_policy_id: mbPolicyId,
      ima_sign_verification_keys: b.ima_sign_verification_keys,
      revocation_key: b.revocation_key === '' ? null : b.revocation_key,
      accept_tpm_hash_algs: JSON.stringify(asList(b.accept_tpm_hash_algs)),
      accept_tpm_encryption_algs: JSON.stringify(asList(b.accept_tpm_encryption_algs)),
      accept_tpm_signing_algs: JSON.stringify(asList(b.accept_tpm_signing_algs)),
      supported_version: supported,
      ak_tpm: b.ak_tpm,
      mtls_cert: mtls,
      attestation_count: 0,
      ...(push ? { push_deadline: ctx.now + o.push.evidenceTimeoutMs } : { lease_holder: ctx.lease.holder }),
    },
  }
}
