/**
 * Policies and binary fields as clients upload them (keylime-api.md §3): base64 fields, runtime policies (plain
 * JSON or a DSSE envelope verified with `runtime_policy_key`) and measured-boot policies, each turned into a clear
 * 4xx naming the problem when unusable.
 */
import { KeylimeError } from '../common/errors.ts'
import {
  isDsseEnvelope,
  parseRuntimePolicy,
  RUNTIME_POLICY_GENERATOR,
  type RuntimePolicy,
  verifyDsseEnvelope,
} from '../evidence/ima/index.ts'
import { type MbPolicy, type MbPolicyEngine, parseMbPolicy } from '../evidence/mb/index.ts'

/** A request the verifier refuses (4xx with the Keylime envelope). */
export class VerifierRequestError extends KeylimeError {
  constructor(statusCode: number, message: string) {
    super('ERR_VERIFIER_API', message, { statusCode })
  }
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/
const EQUALS = 0x3d

/**
 * Standard base64 (optionally unpadded) decoded, or a 400 naming the field. Policies arrive as megabytes of base64,
 * where a regular expression over every character costs several times the decoding itself; the decoder's own count
 * tells instead: it skips any byte outside the alphabet, so the input was all alphabet exactly when it yields the
 * bytes its length promises. What the decoder would take that the alphabet does not (characters beyond ASCII, the
 * base64url `-` and `_`, `=` before the end) is refused first; the one length where a skipped character cannot show
 * (one character past a whole group, itself malformed) goes through the expression.
 */
export function b64decode(name: string, v: string): Buffer {
  let end = v.length
  if (end > 0 && v.charCodeAt(end - 1) === EQUALS) end--
  if (end > 0 && v.charCodeAt(end - 1) === EQUALS) end--
  const equals = v.indexOf('=')
  if (
    Buffer.byteLength(v, 'utf8') !== v.length ||
    (equals >= 0 && equals < end) ||
    v.includes('-') ||
    v.includes('_') ||
    (end % 4 === 1 && !BASE64.test(v))
  )
    throw new VerifierRequestError(400, `${name} is not valid base64`)
  const bytes = Buffer.from(v, 'base64')
  if (bytes.length !== Math.floor((end * 3) / 4))
    throw new VerifierRequestError(400, `${name} is not valid base64`)
  return bytes
}

/** Runtime policy text -> parsed policy; schema errors are 400 "Runtime policy is malformatted: …". */
export function parseRuntimeInput(text: string, strict: boolean): RuntimePolicy {
  try {
    return parseRuntimePolicy(text, { strict })
  } catch (err) {
    if (err instanceof KeylimeError)
      throw new VerifierRequestError(400, `Runtime policy is malformatted: ${err.message}`)
    throw err
  }
}

/**
 * A runtime policy as uploaded: plain JSON, or a DSSE envelope verified with `runtime_policy_key` (b64 PEM);
 * returns the policy JSON text. 401 on a bad signature or when signatures are required and missing.
 */
export function unwrapRuntimePolicy(text: string, keyB64: unknown, requireSignatures: boolean): string {
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch {
    throw new VerifierRequestError(400, 'Runtime policy is malformatted: not valid JSON')
  }
  const key =
    typeof keyB64 === 'string' && keyB64 !== ''
      ? b64decode('runtime_policy_key', keyB64).toString('utf8')
      : null
  if (isDsseEnvelope(json)) {
    // A certificate the envelope carries (x509 backend) proves integrity, not who signed: when signatures are
    // required, the signer's key must come from the operator.
    if (requireSignatures && key === null)
      throw new VerifierRequestError(
        401,
        'Runtime policy signature verification required but no key was given!',
      )
    try {
      return verifyDsseEnvelope(json, key ? [key] : []).payload.toString('utf8')
    } catch (err) {
      if (err instanceof KeylimeError) throw new VerifierRequestError(err.statusCode ?? 401, err.message)
      throw err
    }
  }
  if (requireSignatures)
    throw new VerifierRequestError(401, 'Runtime policy signature required (require_allow_list_signatures)')
  return text
}

export function parseMbInput(text: string, engine: MbPolicyEngine): MbPolicy {
  try {
    return parseMbPolicy(text, { engine })
  } catch (err) {
    if (err instanceof KeylimeError)
      throw new VerifierRequestError(400, `Measured boot policy is malformatted: ${err.message}`)
    throw err
  }
}

/** `generator` stored with a runtime policy; above EmptyAllowList counts as having a policy. */
export function generatorOf(p: RuntimePolicy): number {
  const empty =
    Object.keys(p.digests).length === 0 &&
    p.excludes.length === 0 &&
    Object.keys(p.keyrings).length === 0 &&
    Object.keys(p['ima-buf']).length === 0 &&
    p['verification-keys'] === ''
  if (empty) return RUNTIME_POLICY_GENERATOR.EmptyAllowList
  const g = p.meta.generator
  return g !== undefined && g > RUNTIME_POLICY_GENERATOR.EmptyAllowList
    ? g
    : RUNTIME_POLICY_GENERATOR.LegacyAllowList
}
