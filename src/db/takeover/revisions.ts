/**
 * The Alembic revisions of upstream Keylime 7.x, oldest first. Upstream keeps one revision chain for both of its
 * databases and records each database's position in its own table (`alembic_version_cloud_verifier`,
 * `alembic_version_registrar`); a database created by any 7.x release and upgraded by any later one is at one of
 * these. `release` names the first release whose head it is (revisions no release shipped as head only appear in
 * databases of development snapshots, and are accepted the same way).
 */
export interface UpstreamRevision {
  id: string
  release: string | null
  what: string
}

export const UPSTREAM_REVISIONS: readonly UpstreamRevision[] = [
  { id: 'f838d3cdeead', release: '7.0.0', what: 'verifiermain.last_successful_attestation' },
  { id: '21b5cb88fcdb', release: '7.6.0', what: 'registrarmain.iak_tpm, idevid_tpm' },
  { id: '00766b7fd0c5', release: '7.8.0', what: 'registrarmain.iak_cert, idevid_cert' },
  { id: '160f932fde5b', release: '7.9.0', what: 'verifiermain.verifier_ip widened' },
  { id: '32902c0a8d90', release: null, what: 'mbpolicies table' },
  { id: 'f4196d13fe45', release: null, what: 'mb_refstate moved to mbpolicies' },
  { id: '9d2f6fab52b1', release: '7.10.0', what: 'verifiermain.mb_policy_id associated' },
  { id: '330024be7bef', release: '7.12.0', what: 'registrarmain booleans and TEXT certificates' },
  { id: '57b24ee21dfa', release: '7.13.0', what: 'verifiermain.meta_data TEXT' },
  { id: '870c218abd9a', release: null, what: 'push attestation: attestations, evidence_items' },
  { id: '460d7adda633', release: null, what: 'push sessions (plain tokens)' },
  { id: '517a2d6b5cd3', release: null, what: 'verifiermain.consecutive_attestation_failures' },
  { id: '5a8b2c3d4e6f', release: '7.14.0', what: 'push sessions with hashed tokens' },
  { id: 'a59cc9366774', release: '7.14.3', what: 'evidence_items.agent_id widened' },
]

/** Revisions of Keylime 6.x: known, but their data needs upstream's own migrations first. */
export const UPSTREAM_REVISIONS_BEFORE_7 = [
  '8a44a4364f5a',
  'eeb702f77d7d',
  '8da20383f6e1',
  'a7a64155ab3a',
  'cc2630851a1f',
  'ae898986c6e9',
  'eb869a77abd1',
  'b4d024197413',
  'f82c4252bc4f',
  '7d5db1a6ffb0',
  'f35cdd35eb83',
  '257fe0f0c039',
  'c3842cc9ee69',
  'a79c27ec1054',
  '9169f80345ed',
  '63c30820fdc1',
  '1ac1513ef2a1',
  'bc3b6b551b0a',
  'bf48e0c4751d',
  'a72aec03d720',
  '4329e2d14944',
  '4089e1c79be9',
  'a09cc94177f0',
  '2fbc0fb8fa4d',
  '039322ea079b',
  '8c0f8ded1f90',
] as const

/** Position of a 7.x revision in the chain, or -1. */
export function revisionIndex(id: string): number {
  return UPSTREAM_REVISIONS.findIndex((r) => r.id === id)
}

/** Whether `id` is `other` or a later revision (both must be 7.x revisions). */
export function atLeast(id: string, other: string): boolean {
  const a = revisionIndex(id)
  const b = revisionIndex(other)
  if (a < 0 || b < 0) throw new Error(`unknown Alembic revision ${a < 0 ? id : other}`)
  return a >= b
}

/** The releases that shipped a revision as head, for messages. */
export function describeRevision(id: string): string {
  const r = UPSTREAM_REVISIONS.find((x) => x.id === id)
  if (!r) return id
  if (r.release) return `${id} (Keylime ${r.release})`
  const i = revisionIndex(id)
  const next = UPSTREAM_REVISIONS.slice(i).find((x) => x.release)
  return `${id} (a development snapshot before Keylime ${next?.release ?? 'a later release'})`
}
