/**
 * Keylime runtime policy, format version 1: validation (errors name the field), the empty policy, and compilation
 * into an immutable indexed form shared by every agent that uses the same policy bytes.
 */

import { compilePythonRegex, PythonRegexError } from '../python-regex.ts'
import { type CompiledDmPolicy, compileDmPolicy, type DmPolicy, parseDmPolicy } from './dm.ts'
import { RuntimePolicyError } from './errors.ts'
import { compileExcludes, type ExcludeMatcher } from './excludes.ts'
import { ImaKeyring, type KeyringJson } from './keyring.ts'

export type LogHashAlg = 'sha1' | 'sha256' | 'sha384' | 'sha512'
const LOG_HASH_ALGS: readonly LogHashAlg[] = ['sha1', 'sha256', 'sha384', 'sha512']

export interface RuntimePolicy {
  meta: { version: number; generator?: number; timestamp?: string }
  release: number
  digests: Record<string, string[]>
  excludes: string[]
  keyrings: Record<string, string[]>
  /** `dm_policy`: device-mapper rules (§11); upstream's schema forces null, we validate and enforce a rule set. */
  ima: { ignored_keyrings: string[]; log_hash_alg: LogHashAlg; dm_policy: DmPolicy | null }
  'ima-buf': Record<string, string[]>
  'verification-keys': string
}

export const RUNTIME_POLICY_GENERATOR = {
  Unknown: 0,
  EmptyAllowList: 1,
  CompatibleAllowList: 2,
  LegacyAllowList: 3,
} as const

export function emptyRuntimePolicy(): RuntimePolicy {
  return {
    meta: { version: 1, generator: RUNTIME_POLICY_GENERATOR.EmptyAllowList },
    release: 0,
    digests: {},
    excludes: [],
    keyrings: {},
    ima: { ignored_keyrings: [], log_hash_alg: 'sha1', dm_policy: null },
    'ima-buf': {},
    'verification-keys': '',
  }
}

export interface ParseRuntimePolicyOptions {
  /**
   * true (default): the verifier's upload schema — every top-level member required, digests lowercase hex.
   * false: the tolerant reading of upstream's tenant/direct paths — missing members default to empty, digest
   * strings kept verbatim (a `sha256:` prefix is kept and then simply never matches).
   */
  strict?: boolean
}

const HEX_DIGEST = /^[0-9a-f]{40,128}$/

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

function quoteKey(k: string): string {
  return JSON.stringify(k)
}

function readDigestMap(v: unknown, field: string, strict: boolean): Record<string, string[]> {
  if (!isObject(v)) throw new RuntimePolicyError(field, 'must be an object of arrays of hex digests')
  const out: Record<string, string[]> = Object.create(null)
  for (const key of Object.keys(v)) {
    const list = v[key]
    const f = `${field}[${quoteKey(key)}]`
    if (!Array.isArray(list)) throw new RuntimePolicyError(f, 'must be an array of hex digests')
    if (strict && list.length === 0) throw new RuntimePolicyError(f, 'must not be empty')
    for (let i = 0; i < list.length; i++) {
      const d = list[i]
      if (typeof d !== 'string') throw new RuntimePolicyError(`${f}[${i}]`, 'must be a string')
      if (strict && !HEX_DIGEST.test(d)) {
        throw new RuntimePolicyError(
          `${f}[${i}]`,
          `must be 40-128 lowercase hex digits without prefix, got ${JSON.stringify(d.slice(0, 80))}`,
        )
      }
    }
    out[key] = list as string[]
  }
  return out
}

function readStringArray(v: unknown, field: string): string[] {
  if (!Array.isArray(v)) throw new RuntimePolicyError(field, 'must be an array of strings')
  v.forEach((s, i) => {
    if (typeof s !== 'string') throw new RuntimePolicyError(`${field}[${i}]`, 'must be a string')
  })
  return v as string[]
}

function readNonNegativeInt(v: unknown, field: string, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > max) {
    throw new RuntimePolicyError(
      field,
      max === Number.MAX_SAFE_INTEGER ? 'must be an integer >= 0' : `must be an integer 0-${max}`,
    )
  }
  return v
}

/** Parses and validates keyring JSON (`verification-keys`); throws RuntimePolicyError under `field`. */
export function parseKeyringJson(text: string, field: string): KeyringJson {
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch {
    throw new RuntimePolicyError(field, 'is not JSON')
  }
  if (!isObject(json)) throw new RuntimePolicyError(field, 'must be a JSON object')
  if (!Array.isArray(json.keyids) || json.keyids.some((k) => typeof k !== 'number' || !Number.isInteger(k))) {
    throw new RuntimePolicyError(`${field}.keyids`, 'must be an array of integers')
  }
  const pubkeys = readStringArray(json.pubkeys, `${field}.pubkeys`)
  const keyring = { keyids: json.keyids as number[], pubkeys }
  try {
    ImaKeyring.fromJSON(keyring)
  } catch (err) {
    throw new RuntimePolicyError(`${field}.pubkeys`, (err as Error).message)
  }
  return keyring
}

function decodeInput(input: unknown): unknown {
  if (typeof input === 'string' || input instanceof Uint8Array) {
    const text = typeof input === 'string' ? input : Buffer.from(input).toString('utf8')
    try {
      return JSON.parse(text)
    } catch (err) {
      throw new RuntimePolicyError('$', `is not valid JSON (${(err as Error).message})`)
    }
  }
  return input
}

/** Validates a runtime policy (object, JSON text or bytes). Throws `RuntimePolicyError` naming the bad field. */
export function parseRuntimePolicy(input: unknown, options: ParseRuntimePolicyOptions = {}): RuntimePolicy {
  const strict = options.strict ?? true
  const json = decodeInput(input)
  if (!isObject(json)) throw new RuntimePolicyError('$', 'must be a JSON object')
  if ('payload' in json && 'signatures' in json) {
    throw new RuntimePolicyError('$', 'is a DSSE envelope; verify it and pass its payload')
  }
  const required = [
    'meta',
    'release',
    'digests',
    'excludes',
    'keyrings',
    'ima',
    'ima-buf',
    'verification-keys',
  ]
  if (strict) for (const k of required) if (!(k in json)) throw new RuntimePolicyError(k, 'is required')
  const empty = emptyRuntimePolicy()

  const metaIn = json.meta ?? empty.meta
  if (!isObject(metaIn)) throw new RuntimePolicyError('meta', 'must be an object')
  const meta: RuntimePolicy['meta'] = { version: readNonNegativeInt(metaIn.version, 'meta.version') }
  if (metaIn.generator !== undefined)
    meta.generator = readNonNegativeInt(metaIn.generator, 'meta.generator', 3)
  if (metaIn.timestamp !== undefined) {
    if (typeof metaIn.timestamp !== 'string')
      throw new RuntimePolicyError('meta.timestamp', 'must be a string')
    meta.timestamp = metaIn.timestamp
  }
  const release = json.release === undefined ? 0 : readNonNegativeInt(json.release, 'release')

  const excludes = json.excludes === undefined ? [] : readStringArray(json.excludes, 'excludes')
  excludes.forEach((pattern, i) => {
    try {
      compilePythonRegex([pattern], 'match')
    } catch (err) {
      if (err instanceof PythonRegexError)
        throw new RuntimePolicyError(`excludes[${i}]`, `${JSON.stringify(pattern)}: ${err.message}`)
      throw err
    }
  })
  try {
    compileExcludes(excludes)
  } catch (err) {
    // Each pattern compiles alone, so only the joined program's size is left to fail.
    if (err instanceof PythonRegexError) throw new RuntimePolicyError('excludes', `together ${err.message}`)
    throw err
  }

  const imaIn = json.ima ?? empty.ima
  if (!isObject(imaIn)) throw new RuntimePolicyError('ima', 'must be an object')
  if (strict)
    for (const k of ['ignored_keyrings', 'log_hash_alg', 'dm_policy'])
      if (!(k in imaIn)) throw new RuntimePolicyError(`ima.${k}`, 'is required')
  const ignored =
    imaIn.ignored_keyrings === undefined
      ? []
      : readStringArray(imaIn.ignored_keyrings, 'ima.ignored_keyrings')
  const logHashAlg = imaIn.log_hash_alg ?? 'sha1'
  if (!LOG_HASH_ALGS.includes(logHashAlg as LogHashAlg)) {
    throw new RuntimePolicyError('ima.log_hash_alg', `must be one of ${LOG_HASH_ALGS.join(', ')}`)
  }
  const dmPolicy =
    imaIn.dm_policy === undefined || imaIn.dm_policy === null
      ? null
      : parseDmPolicy(imaIn.dm_policy, 'ima.dm_policy')

  const vk = json['verification-keys'] ?? ''
  if (typeof vk !== 'string') throw new RuntimePolicyError('verification-keys', 'must be a string')
  if (vk !== '') parseKeyringJson(vk, 'verification-keys')

  return {
    meta,
    release,
    digests: json.digests === undefined ? {} : readDigestMap(json.digests, 'digests', strict),
    excludes,
    keyrings: json.keyrings === undefined ? {} : readDigestMap(json.keyrings, 'keyrings', strict),
    ima: { ignored_keyrings: ignored, log_hash_alg: logHashAlg as LogHashAlg, dm_policy: dmPolicy },
    'ima-buf': json['ima-buf'] === undefined ? {} : readDigestMap(json['ima-buf'], 'ima-buf', strict),
    'verification-keys': vk,
  }
}

/** Allowed digests per name: one string (the common case, no array allocated) or several. */
export type DigestIndex = ReadonlyMap<string, string | readonly string[]>

export interface CompiledRuntimePolicy {
  readonly digests: DigestIndex
  readonly keyrings: DigestIndex
  readonly imaBuf: DigestIndex
  readonly excludes: ExcludeMatcher | null
  readonly ignoredKeyrings: ReadonlySet<string>
  readonly ignoreAllKeyrings: boolean
  readonly logHashAlg: LogHashAlg
  readonly verificationKeys: ImaKeyring
  /** Device-mapper rules for dm_* ima-buf entries; null: those entries are checked against `ima-buf` digests. */
  readonly dmPolicy: CompiledDmPolicy | null
  /** Number of path entries in `digests`, for status output. */
  readonly size: number
  readonly generator: number | undefined
}

function indexDigests(map: Record<string, string[]>): DigestIndex {
  const index = new Map<string, string | readonly string[]>()
  for (const key of Object.keys(map)) {
    const list = map[key] as string[]
    index.set(key, list.length === 1 ? (list[0] as string) : Object.freeze([...list]))
  }
  return index
}

/** Whether `index` allows `hex` for `name`: 'ok', 'missing' (name unknown) or 'mismatch'. */
export function lookupDigest(index: DigestIndex, name: string, hex: string): 'ok' | 'missing' | 'mismatch' {
  const allowed = index.get(name)
  if (allowed === undefined) return 'missing'
  if (typeof allowed === 'string') return allowed === hex ? 'ok' : 'mismatch'
  return allowed.includes(hex) ? 'ok' : 'mismatch'
}

export function allowedDigests(index: DigestIndex, name: string): string[] {
  const allowed = index.get(name)
  return allowed === undefined ? [] : typeof allowed === 'string' ? [allowed] : [...allowed]
}

/** Indexes a validated policy once; the result is frozen and may be shared by any number of agents. */
export function compileRuntimePolicy(policy: RuntimePolicy): CompiledRuntimePolicy {
  const vk = policy['verification-keys']
  const verificationKeys =
    vk === '' ? new ImaKeyring() : ImaKeyring.fromJSON(parseKeyringJson(vk, 'verification-keys'))
  return Object.freeze({
    digests: indexDigests(policy.digests),
    keyrings: indexDigests(policy.keyrings),
    imaBuf: indexDigests(policy['ima-buf']),
    excludes: compileExcludes(policy.excludes),
    ignoredKeyrings: new Set(policy.ima.ignored_keyrings),
    ignoreAllKeyrings: policy.ima.ignored_keyrings.includes('*'),
    logHashAlg: policy.ima.log_hash_alg,
    verificationKeys,
    dmPolicy: policy.ima.dm_policy === null ? null : compileDmPolicy(policy.ima.dm_policy),
    size: Object.keys(policy.digests).length,
    generator: policy.meta.generator,
  })
}
