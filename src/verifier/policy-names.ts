/**
 * Policies by name, for enrolment and the policy routes alike: the 409 when a name is taken and the 404 when none has
 * it, with upstream's texts. Apart from `management.ts` so enrolment does not import the routes' operations.
 */
import type { PolicyMeta, VerifierRepository } from '../db/verifier-repository.ts'
import { VerifierRequestError } from './policy-input.ts'

export const POLICY_KINDS = {
  ima: {
    find: (repo: VerifierRepository, name: string) => repo.allowlistMeta(name),
    remove: (repo: VerifierRepository, name: string) => repo.deleteAllowlist(name),
    taken: (name: string) => `Runtime policy with name ${name} already exists`,
    missing: (name: string) => `Runtime policy ${name} not found`,
    inUse: (agent: string) => `Can't delete allowlist as it's currently in use by agent ${agent}`,
    action: 'runtime_policy.delete',
  },
  mb: {
    find: (repo: VerifierRepository, name: string) => repo.mbPolicyMeta(name),
    remove: (repo: VerifierRepository, name: string) => repo.deleteMbPolicy(name),
    taken: (name: string) => `Measured boot policy with name ${name} already exists`,
    missing: (name: string) => `Measured boot policy ${name} not found`,
    inUse: (agent: string) => `Can't delete mb policy as it's currently in use by agent ${agent}`,
    action: 'mb_policy.delete',
  },
} as const

export type PolicyKind = keyof typeof POLICY_KINDS

/** Refuses (409) a name a stored policy of this kind already has. */
export async function assertPolicyNameFree(
  repo: VerifierRepository,
  kind: PolicyKind,
  name: string,
): Promise<void> {
  if (await POLICY_KINDS[kind].find(repo, name))
    throw new VerifierRequestError(409, POLICY_KINDS[kind].taken(name))
}

/** A stored policy of this kind, without its text, by name; 404 when there is none. */
export async function requirePolicyMeta(
  repo: VerifierRepository,
  kind: PolicyKind,
  name: string,
): Promise<PolicyMeta> {
  const p = await POLICY_KINDS[kind].find(repo, name)
  if (!p) throw new VerifierRequestError(404, POLICY_KINDS[kind].missing(name))
  return p
}
