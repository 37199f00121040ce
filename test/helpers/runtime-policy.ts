/**
 * Runtime policies (upstream's JSON format) for tests: a policy allowing `digests` (path -> hex digests), as an
 * object, as text, or base64 as the verifier API takes it. Generator 3 (LegacyAllowList) is what upstream's tools
 * write.
 */
export function runtimePolicyDocument(digests: Record<string, string[]>, generator = 3) {
  return {
    meta: { version: 1, generator },
    release: 0,
    digests,
    excludes: [],
    keyrings: {},
    ima: { ignored_keyrings: [], log_hash_alg: 'sha1', dm_policy: null },
    'ima-buf': {},
    'verification-keys': '',
  }
}

export function runtimePolicyJson(digests: Record<string, string[]>, generator = 3): string {
  return JSON.stringify(runtimePolicyDocument(digests, generator))
}

export function runtimePolicyB64(digests: Record<string, string[]>, generator = 3): string {
  return Buffer.from(runtimePolicyJson(digests, generator)).toString('base64')
}
