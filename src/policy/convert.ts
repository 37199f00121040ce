/**
 * `policy convert`: legacy inputs to a current runtime policy, as upstream's keylime_convert_runtime_policy does. A
 * legacy allowlist is either JSON with a `hashes` map (the pre-runtime-policy format) or flat `<digest> <path>` lines;
 * a runtime policy of an older `meta.version` is carried over member by member. Exclude lines and IMA signature
 * verification keys can be added on the way.
 */
import {
  createRuntimePolicy,
  emptyRuntimePolicy,
  parseRuntimePolicy,
  policyTimestamp,
  RUNTIME_POLICY_GENERATOR,
  type RuntimePolicy,
  RuntimePolicyError,
} from '../evidence/ima/index.ts'

const CURRENT_VERSION = 1
const MEMBERS = ['release', 'digests', 'excludes', 'keyrings', 'ima', 'ima-buf', 'verification-keys'] as const

export interface ConvertInput {
  /** A legacy allowlist (JSON `hashes` or flat lines). */
  allowlistText?: string
  /** A runtime policy of any version. */
  policyText?: string
  excludeListText?: string
  verificationKeys?: readonly (string | Uint8Array)[]
  now: Date
}

/** What the conversion did, for the command's messages. */
export interface Converted {
  policy: RuntimePolicy
  notes: string[]
}

function carryOver(source: Record<string, unknown>, now: Date, generator: number, notes: string[]): unknown {
  const out: Record<string, unknown> = { ...emptyRuntimePolicy() }
  out.meta = { version: CURRENT_VERSION, generator, timestamp: policyTimestamp(now) }
  for (const m of MEMBERS) {
    const v = m === 'digests' && source.hashes !== undefined ? source.hashes : source[m]
    if (v === undefined || v === null || (typeof v === 'object' && Object.keys(v).length === 0)) {
      if (m !== 'digests') notes.push(`field "${m}" not found; using the default value`)
      continue
    }
    out[m] = v
  }
  return out
}

export function convertRuntimePolicy(input: ConvertInput): Converted {
  if ((input.allowlistText === undefined) === (input.policyText === undefined))
    throw new RuntimePolicyError('input', 'give exactly one of an allowlist and a runtime policy')
  const notes: string[] = []
  let policy: RuntimePolicy
  if (input.allowlistText !== undefined) {
    let json: unknown
    try {
      json = JSON.parse(input.allowlistText)
    } catch {
      json = undefined
    }
    if (json !== undefined && (typeof json !== 'object' || json === null || Array.isArray(json)))
      throw new RuntimePolicyError('allowlist', 'JSON allowlist must be an object')
    const obj = json as Record<string, unknown> | undefined
    if (obj !== undefined && obj.digests !== undefined)
      throw new RuntimePolicyError('allowlist', 'is already a runtime policy: convert it with -r instead')
    if (obj !== undefined) {
      if (obj.hashes === undefined || typeof obj.hashes !== 'object')
        throw new RuntimePolicyError('allowlist', 'JSON allowlist has no "hashes" map')
      notes.push('JSON allowlist: converted to a runtime policy')
      policy = parseRuntimePolicy(
        carryOver(obj, input.now, RUNTIME_POLICY_GENERATOR.LegacyAllowList, notes),
        {
          strict: false,
        },
      )
    } else {
      notes.push('flat allowlist: converted to a runtime policy')
      policy = createRuntimePolicy({ allowlistText: input.allowlistText, now: input.now })
      policy.meta.generator = RUNTIME_POLICY_GENERATOR.LegacyAllowList
    }
  } else {
    let json: unknown
    try {
      json = JSON.parse(input.policyText as string)
    } catch {
      throw new RuntimePolicyError('runtime policy', 'is not valid JSON')
    }
    if (typeof json !== 'object' || json === null || Array.isArray(json))
      throw new RuntimePolicyError('runtime policy', 'must be a JSON object')
    const obj = json as Record<string, unknown>
    const version = (obj.meta as { version?: unknown } | undefined)?.version
    if (typeof version === 'number' && version >= CURRENT_VERSION) {
      policy = parseRuntimePolicy(obj, { strict: false })
    } else {
      notes.push(`policy version ${String(version ?? 'none')} updated to ${CURRENT_VERSION}`)
      policy = parseRuntimePolicy(
        carryOver(obj, input.now, RUNTIME_POLICY_GENERATOR.CompatibleAllowList, notes),
        {
          strict: false,
        },
      )
    }
  }
  if (input.excludeListText !== undefined || (input.verificationKeys ?? []).length > 0) {
    const merged = createRuntimePolicy({
      base: policy,
      excludeListText: input.excludeListText,
      verificationKeys: input.verificationKeys,
      now: input.now,
    })
    merged.meta = policy.meta
    policy = merged
  }
  return { policy, notes }
}
