/**
 * Signed revocation notifications (protocols spec §F): `msg` is the JSON text of the message object and
 * `signature` = b64(RSA-PSS(SHA-256, MGF1-SHA-256, maximal salt)(msg bytes)) by the agent's revocation key.
 */
import {
  constants,
  createPrivateKey,
  createPublicKey,
  type KeyObject,
  sign,
  verify,
  X509Certificate,
} from 'node:crypto'
import { KeylimeError } from '../common/errors.ts'

export class RevocationError extends KeylimeError {
  constructor(
    code:
      | 'ERR_REVOCATION_FORMAT'
      | 'ERR_REVOCATION_UNSIGNED'
      | 'ERR_REVOCATION_SIGNATURE'
      | 'ERR_REVOCATION_KEY',
    message: string,
    options?: { cause?: unknown },
  ) {
    super(code, message, { statusCode: 400, ...options })
  }
}

export interface RevocationMessage {
  type: 'revocation' | 'comm_error' | string
  ip: string | null
  agent_id: string
  port: number | string | null
  tpm_policy: string | null
  meta_data: string | null
  /** asctime text, e.g. "Tue Nov 26 15:09:00 2025" */
  event_time: string
  event_id?: string
  severity_label?: string
  context?: string
  [extra: string]: unknown
}

export interface RevocationWire {
  msg: string
  signature: string
}

const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat']
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec']

/** C/Python asctime layout in UTC: day of month space-padded to two columns ("Wed Nov  5 09:03:07 2025"). */
export function asctime(date: Date): string {
  const pad2 = (n: number): string => String(n).padStart(2, '0')
  return (
    `${DAYS[date.getUTCDay()]} ${MONTHS[date.getUTCMonth()]} ${String(date.getUTCDate()).padStart(2, ' ')} ` +
    `${pad2(date.getUTCHours())}:${pad2(date.getUTCMinutes())}:${pad2(date.getUTCSeconds())} ${date.getUTCFullYear()}`
  )
}

function privateKeyOf(key: string | KeyObject): KeyObject {
  try {
    const k = typeof key === 'string' ? createPrivateKey(key) : key
    if (k.asymmetricKeyType !== 'rsa') throw new Error(`key type ${k.asymmetricKeyType}`)
    return k
  } catch (cause) {
    throw new RevocationError('ERR_REVOCATION_KEY', 'revocation signing key is not an RSA private key', {
      cause,
    })
  }
}

/** Accepts a PEM certificate, a PEM/SPKI public key, or a KeyObject. */
function publicKeyOf(certOrKey: string | KeyObject): KeyObject {
  try {
    let k: KeyObject
    if (typeof certOrKey !== 'string')
      k = certOrKey.type === 'private' ? createPublicKey(certOrKey) : certOrKey
    else if (certOrKey.includes('CERTIFICATE-----')) k = new X509Certificate(certOrKey).publicKey
    else k = createPublicKey(certOrKey)
    if (k.asymmetricKeyType !== 'rsa') throw new Error(`key type ${k.asymmetricKeyType}`)
    return k
  } catch (cause) {
    throw new RevocationError(
      'ERR_REVOCATION_KEY',
      'revocation certificate does not hold an RSA public key',
      { cause },
    )
  }
}

/** Serialises the message once and signs exactly those bytes; without a key the signature is '' as upstream does. */
export function signRevocation(
  message: RevocationMessage,
  revocationKey: string | KeyObject | null,
): RevocationWire {
  const msg = JSON.stringify(message)
  if (revocationKey === null || revocationKey === '') return { msg, signature: '' }
  const signature = sign('sha256', Buffer.from(msg, 'utf8'), {
    key: privateKeyOf(revocationKey),
    padding: constants.RSA_PKCS1_PSS_PADDING,
    saltLength: constants.RSA_PSS_SALTLEN_MAX_SIGN,
  })
  return { msg, signature: signature.toString('base64') }
}

/** Parses a wire object (or its JSON text) into `{msg, signature}`, refusing anything else. */
export function parseRevocationWire(input: unknown): RevocationWire {
  let value = input
  if (typeof input === 'string' || input instanceof Uint8Array) {
    try {
      value = JSON.parse(typeof input === 'string' ? input : Buffer.from(input).toString('utf8'))
    } catch (cause) {
      throw new RevocationError('ERR_REVOCATION_FORMAT', 'revocation notification is not JSON', { cause })
    }
  }
  if (typeof value !== 'object' || value === null) {
    throw new RevocationError(
      'ERR_REVOCATION_FORMAT',
      'revocation notification must be an object {msg, signature}',
    )
  }
  const { msg, signature } = value as Record<string, unknown>
  if (typeof msg !== 'string')
    throw new RevocationError('ERR_REVOCATION_FORMAT', 'revocation notification has no msg text')
  if (signature === undefined || signature === null || signature === '') {
    throw new RevocationError('ERR_REVOCATION_UNSIGNED', 'revocation notification is not signed')
  }
  if (typeof signature !== 'string')
    throw new RevocationError('ERR_REVOCATION_FORMAT', 'revocation signature must be a string')
  return { msg, signature }
}

/**
 * Verifies the signature over the exact msg bytes with the revocation certificate's RSA key, then parses msg.
 * Unsigned, malformed or forged notifications throw RevocationError (codes ERR_REVOCATION_*).
 */
export function verifyRevocation(wire: unknown, revocationCert: string | KeyObject): RevocationMessage {
  const { msg, signature } = parseRevocationWire(wire)
  const compact = signature.replace(/\s+/g, '')
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(compact)) {
    throw new RevocationError('ERR_REVOCATION_FORMAT', 'revocation signature is not base64')
  }
  const ok = verify(
    'sha256',
    Buffer.from(msg, 'utf8'),
    {
      key: publicKeyOf(revocationCert),
      padding: constants.RSA_PKCS1_PSS_PADDING,
      saltLength: constants.RSA_PSS_SALTLEN_AUTO,
    },
    Buffer.from(compact, 'base64'),
  )
  if (!ok) throw new RevocationError('ERR_REVOCATION_SIGNATURE', 'revocation signature does not verify')
  let parsed: unknown
  try {
    parsed = JSON.parse(msg)
  } catch (cause) {
    throw new RevocationError('ERR_REVOCATION_FORMAT', 'signed revocation msg is not JSON', { cause })
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new RevocationError('ERR_REVOCATION_FORMAT', 'signed revocation msg is not a JSON object')
  }
  const obj = parsed as Record<string, unknown>
  if (typeof obj.type !== 'string' || typeof obj.agent_id !== 'string') {
    throw new RevocationError('ERR_REVOCATION_FORMAT', 'signed revocation msg lacks type or agent_id')
  }
  return obj as RevocationMessage
}
