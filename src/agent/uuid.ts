/** Agent UUID modes (keylime-protocols.md §B step 2). */
import { createHash, randomUUID } from 'node:crypto'

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

/**
 * `generate` -> random v4; `hash_ek` -> hex SHA-256 of the EK public key PEM (64 hex chars, not a UUID);
 * a literal UUID is used as is; anything else falls back to a random v4 as upstream does.
 */
export function resolveAgentUuid(setting: string, ekPublicPem: () => string): string {
  const s = setting.trim()
  if (s === 'generate') return randomUUID()
  if (s === 'hash_ek') return createHash('sha256').update(ekPublicPem(), 'utf8').digest('hex')
  if (UUID_RE.test(s)) return s
  return randomUUID()
}
