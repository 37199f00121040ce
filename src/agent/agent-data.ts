/**
 * The agent data file (`agent_data_path`, keylime-protocols.md §B step 3): the AK public/private blobs, its
 * algorithms and a digest of the EK public area, so the AK is created once and reused while algorithms and EK
 * match. Written atomically with mode 0600.
 */
import { createHash } from 'node:crypto'
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { dirname } from 'node:path'
import { KeylimeError } from '../common/errors.ts'

export class AgentDataError extends KeylimeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_AGENT_DATA', message, options)
  }
}

export interface AgentData {
  version: 1
  ak_hash_alg: string
  ak_sign_alg: string
  ek_encryption_alg: string
  /** hex SHA-256 of the EK TPM2B_PUBLIC the AK was created under. */
  ek_public_sha256: string
  /** base64 TPM2B_PUBLIC / TPM2B_PRIVATE of the AK. */
  ak_public: string
  ak_private: string
}

export function ekDigest(ekPublicArea: Uint8Array): string {
  return createHash('sha256').update(ekPublicArea).digest('hex')
}

/** Returns the stored data, or null when the file is absent or unreadable (the AK is then recreated). */
export function loadAgentData(path: string): AgentData | null {
  if (!existsSync(path)) return null
  let parsed: unknown
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8'))
  } catch {
    return null
  }
  const d = parsed as Partial<AgentData>
  const strings = [
    'ak_hash_alg',
    'ak_sign_alg',
    'ek_encryption_alg',
    'ek_public_sha256',
    'ak_public',
    'ak_private',
  ]
  if (typeof parsed !== 'object' || parsed === null || d.version !== 1) return null
  for (const k of strings) if (typeof (d as Record<string, unknown>)[k] !== 'string') return null
  return d as AgentData
}

/** Whether stored AK data can be reused for these algorithms and this EK. */
export function agentDataMatches(
  data: AgentData,
  want: { hashAlg: string; signAlg: string; encAlg: string; ekPublicArea: Uint8Array },
): boolean {
  return (
    data.ak_hash_alg === want.hashAlg &&
    data.ak_sign_alg === want.signAlg &&
    data.ek_encryption_alg === want.encAlg &&
    data.ek_public_sha256 === ekDigest(want.ekPublicArea)
  )
}

export function saveAgentData(path: string, data: AgentData): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 })
  const tmp = `${path}.tmp-${process.pid}`
  writeFileSync(tmp, `${JSON.stringify(data, null, 2)}\n`, { mode: 0o600 })
  chmodSync(tmp, 0o600)
  renameSync(tmp, path)
}
