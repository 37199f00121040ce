/**
 * Building runtime policies from local evidence (the pure part of `keylime policy create runtime`): IMA lists, flat
 * allowlists, exclude lists, file digests computed by the caller (rootfs walk), keys. Time is an argument.
 */
import type { KeyObject } from 'node:crypto'
import { compilePythonRegex } from '../python-regex.ts'
import { type ImaEntry, parseImaLine, splitImaLines } from './entry.ts'
import { ImaParseError, RuntimePolicyError } from './errors.ts'
import { ImaKeyring, parseKeyBuffer } from './keyring.ts'
import {
  emptyRuntimePolicy,
  parseKeyringJson,
  RUNTIME_POLICY_GENERATOR,
  type RuntimePolicy,
} from './policy.ts'

export interface CreateRuntimePolicyInput {
  /** Base policy: its known members are carried over (`-B/-p`). */
  base?: RuntimePolicy | null
  /** Flat allowlist text (`<hex>  <path>` lines, sha*sum output). */
  allowlistText?: string
  /** ASCII measurement list (`-m`). */
  imaListText?: string
  /** Entries of a binary list (already decoded). */
  imaEntries?: readonly ImaEntry[]
  /** Add key measurements to `keyrings` (`--keyrings`). */
  includeKeyrings?: boolean
  /** Add non-key ima-buf measurements to `ima-buf` (`--ima-buf`). */
  includeImaBuf?: boolean
  ignoredKeyrings?: readonly string[]
  /** Exclude list text: one Python regex per line; empty lines and `#` comments skipped. */
  excludeListText?: string
  /** `[path, lowercase hex]` pairs computed by the caller, e.g. from a root filesystem. */
  fileDigests?: Iterable<readonly [string, string]>
  /** IMA signature verification keys (`-A`): public keys or certificates, PEM or DER. */
  verificationKeys?: readonly (string | Uint8Array)[]
  /** Expected file-digest algorithm; digests of another length are rejected. */
  hashAlg?: 'sha1' | 'sha256' | 'sha384' | 'sha512' | 'sm3_256'
  /** Policy timestamp (the caller's clock). */
  now: Date
}

const HEX_LENGTH: Record<string, number> = { sha1: 40, sha256: 64, sha384: 96, sha512: 128, sm3_256: 64 }

/** Python `str(datetime)` form used by upstream in `meta.timestamp`. */
export function policyTimestamp(now: Date): string {
  const p = (n: number, w = 2) => String(n).padStart(w, '0')
  return `${now.getUTCFullYear()}-${p(now.getUTCMonth() + 1)}-${p(now.getUTCDate())} ${p(now.getUTCHours())}:${p(now.getUTCMinutes())}:${p(now.getUTCSeconds())}.${p(now.getUTCMilliseconds() * 1000, 6)}`
}

function add(map: Record<string, string[]>, key: string, digest: string): void {
  const list = map[key]
  if (list === undefined) map[key] = [digest]
  else if (!list.includes(digest)) list.push(digest)
}

/** Lines of the list as entries; an ima-sig/ima-buf line whose empty last field lost its separator is repaired. */
function tolerantEntries(text: string): ImaEntry[] {
  const out: ImaEntry[] = []
  splitImaLines(text).forEach((line, i) => {
    if (line === '') return
    try {
      out.push(parseImaLine(line, i + 1))
    } catch (err) {
      if (!(err instanceof ImaParseError)) throw err
      try {
        out.push(parseImaLine(`${line} `, i + 1))
      } catch {
        throw err
      }
    }
  })
  return out
}

/** Python `json.dumps` of a keyring (`, ` and `: ` separators, pubkeys first), as upstream stores it. */
function keyringString(ring: ImaKeyring): string {
  const { keyids, pubkeys } = ring.toJSON()
  return `{"pubkeys": [${pubkeys.map((k) => JSON.stringify(k)).join(', ')}], "keyids": [${keyids.join(', ')}]}`
}

export function createRuntimePolicy(input: CreateRuntimePolicyInput): RuntimePolicy {
  const policy = emptyRuntimePolicy()
  const base = input.base
  if (base) {
    policy.release = base.release
    for (const [k, v] of Object.entries(base.digests)) for (const d of v) add(policy.digests, k, d)
    policy.excludes.push(...base.excludes)
    for (const [k, v] of Object.entries(base.keyrings)) for (const d of v) add(policy.keyrings, k, d)
    for (const [k, v] of Object.entries(base['ima-buf'])) for (const d of v) add(policy['ima-buf'], k, d)
    policy.ima = { ...base.ima, ignored_keyrings: [...base.ima.ignored_keyrings] }
    policy['verification-keys'] = base['verification-keys']
  }
  for (const k of input.ignoredKeyrings ?? [])
    if (!policy.ima.ignored_keyrings.includes(k)) policy.ima.ignored_keyrings.push(k)
  const ignoredKeyring = (name: string) =>
    policy.ima.ignored_keyrings.includes(name) || policy.ima.ignored_keyrings.includes('*')

  const checkAlg = (path: string, hex: string, field: string) => {
    if (!/^[0-9a-f]+$/.test(hex))
      throw new RuntimePolicyError(field, `digest for ${path} is not lowercase hex`)
    if (input.hashAlg && path !== 'boot_aggregate' && hex.length !== HEX_LENGTH[input.hashAlg]) {
      throw new RuntimePolicyError(field, `digest for ${path} is not a ${input.hashAlg} digest`)
    }
  }

  if (input.allowlistText !== undefined) {
    splitImaLines(input.allowlistText).forEach((raw, i) => {
      const line = raw.trim()
      if (line === '') return
      const m = /^(\S+)\s+(.+)$/.exec(line)
      if (!m) throw new RuntimePolicyError(`allowlist line ${i + 1}`, 'expected "<digest> <path>"')
      const digest = m[1] as string
      const path = (m[2] as string).replaceAll(' ', '_')
      if (path.startsWith('%keyring:')) add(policy.keyrings, path.slice('%keyring:'.length), digest)
      else add(policy.digests, path, digest)
    })
  }

  const entries = [
    ...(input.imaEntries ?? []),
    ...(input.imaListText !== undefined ? tolerantEntries(input.imaListText) : []),
  ]
  for (const e of entries) {
    if (e.violation) continue
    if (e.templateName === 'ima-buf') {
      if (e.buffer === null) continue
      const key = parseKeyBuffer(e.buffer)
      if (key !== null) {
        if (input.includeKeyrings && !ignoredKeyring(e.name)) add(policy.keyrings, e.name, e.digestHex)
      } else if (input.includeImaBuf) {
        add(policy['ima-buf'], e.name, e.digestHex)
      }
      continue
    }
    checkAlg(e.name, e.digestHex, `ima list entry ${e.name}`)
    add(policy.digests, e.name, e.digestHex)
  }

  for (const [path, hex] of input.fileDigests ?? []) {
    checkAlg(path, hex, `file ${path}`)
    add(policy.digests, path, hex)
  }

  if (input.excludeListText !== undefined) {
    for (const raw of splitImaLines(input.excludeListText)) {
      const line = raw.trim()
      if (line === '' || line.startsWith('#')) continue
      try {
        compilePythonRegex([line], 'match')
      } catch (err) {
        throw new RuntimePolicyError(
          `excludes[${policy.excludes.length}]`,
          `${JSON.stringify(line)}: ${(err as Error).message}`,
        )
      }
      if (!policy.excludes.includes(line)) policy.excludes.push(line)
    }
  }

  if (input.verificationKeys && input.verificationKeys.length > 0) {
    const existing = policy['verification-keys']
    const ring =
      existing === ''
        ? new ImaKeyring()
        : ImaKeyring.fromJSON(parseKeyringJson(existing, 'verification-keys'))
    input.verificationKeys.forEach((k, i) => {
      const parsed = parseKeyBuffer(typeof k === 'string' ? Buffer.from(k, 'utf8') : k)
      if (parsed === null || parsed.kind !== 'key') {
        throw new RuntimePolicyError(
          `verification key ${i + 1}`,
          'is not an RSA or EC public key / certificate',
        )
      }
      ring.add(parsed.key as KeyObject, parsed.keyId)
    })
    policy['verification-keys'] = keyringString(ring)
  }

  for (const map of [policy.digests, policy.keyrings, policy['ima-buf']])
    for (const list of Object.values(map)) list.sort()
  policy.meta = {
    version: 1,
    generator: RUNTIME_POLICY_GENERATOR.LegacyAllowList,
    timestamp: policyTimestamp(input.now),
  }
  return policy
}

/** `--show-legacy-allowlist`: `<digest>  <path>` lines, boot_aggregate first. */
export function legacyAllowlist(policy: RuntimePolicy): string {
  const keys = Object.keys(policy.digests).sort((a, b) =>
    a === 'boot_aggregate' ? -1 : b === 'boot_aggregate' ? 1 : 0,
  )
  return keys.flatMap((k) => (policy.digests[k] ?? []).map((d) => `${d}  ${k}\n`)).join('')
}
