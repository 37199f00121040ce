/** Keylime REST API versions (keylime-api.md §0.2, §0.4). */
export const KNOWN_API_VERSIONS = ['1.0', '2.0', '2.1', '2.2', '2.3', '2.4', '2.5', '2.6', '3.0'] as const
export const CURRENT_API_VERSION = '2.6'
/** What the pull agent serves. */
export const AGENT_API_VERSIONS = ['2.1', '2.2', '2.3', '2.4', '2.5', '2.6'] as const
/** Every 2.x route prefix servers register (`/v2` plus each minor). */
export const V2_PREFIXES = ['2', '2.0', '2.1', '2.2', '2.3', '2.4', '2.5', '2.6'] as const

function parse(v: string): [number, number] | null {
  const m = /^(\d+)(?:\.(\d+))?$/.exec(v)
  return m ? [Number(m[1]), Number(m[2] ?? 0)] : null
}

export function compareVersions(a: string, b: string): number {
  const pa = parse(a) ?? [0, 0]
  const pb = parse(b) ?? [0, 0]
  return pa[0] - pb[0] || pa[1] - pb[1]
}

/** Highest version both sides support, compared as versions; null when they share none. */
export function negotiateVersion(remote: readonly string[], local: readonly string[]): string | null {
  const common = remote.filter((v) => local.includes(v))
  if (common.length === 0) return null
  return common.reduce((best, v) => (compareVersions(v, best) > 0 ? v : best))
}
