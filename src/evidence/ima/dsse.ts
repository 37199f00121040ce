/** DSSE-signed runtime policies (§9.1): PAE, ECDSA/RSA verification and ECDSA signing (Keylime `ecdsa` backend). */
import {
  createHash,
  createPrivateKey,
  createPublicKey,
  type KeyObject,
  sign,
  verify,
  X509Certificate,
} from 'node:crypto'
import { PolicySignatureError } from './errors.ts'

export const KEYLIME_PAYLOAD_TYPE = 'application/vnd.keylime+json'

export interface DsseEnvelope {
  payload: string
  payloadType: string
  signatures: { keyid: string; sig: string }[]
}

/** DSSE pre-authentication encoding of a payload. */
export function dssePae(payloadType: string, payload: Uint8Array): Buffer {
  const type = Buffer.from(payloadType, 'utf8')
  return Buffer.concat([
    Buffer.from(`DSSEv1 ${type.length} `),
    type,
    Buffer.from(` ${payload.length} `),
    payload,
  ])
}

/** Keylime `ecdsa` backend key id: hex SHA-256 of the public key's SubjectPublicKeyInfo PEM text. */
export function dsseKeyId(publicKey: KeyObject): string {
  const pem = publicKey.export({ type: 'spki', format: 'pem' }).toString()
  return createHash('sha256').update(pem).digest('hex')
}

/** Looks like a DSSE envelope (has a `payload`); its fields are checked when it is verified. */
export function isDsseEnvelope(json: unknown): json is Record<string, unknown> & { payload: unknown } {
  return typeof json === 'object' && json !== null && !Array.isArray(json) && 'payload' in json
}

/** DSSE payloads may be hex, standard or URL-safe base64. */
function decodePayload(text: string): Buffer {
  if (/^(?:[0-9a-fA-F]{2})+$/.test(text)) return Buffer.from(text, 'hex')
  if (/^[A-Za-z0-9+/]*={0,2}$/.test(text)) return Buffer.from(text, 'base64')
  if (/^[A-Za-z0-9_-]*={0,2}$/.test(text)) return Buffer.from(text, 'base64url')
  throw new PolicySignatureError('DSSE payload is neither hex nor base64', { statusCode: 400 })
}

function parseEnvelope(input: unknown): DsseEnvelope {
  let json = input
  if (typeof input === 'string' || input instanceof Uint8Array) {
    try {
      json = JSON.parse(typeof input === 'string' ? input : Buffer.from(input).toString('utf8'))
    } catch {
      throw new PolicySignatureError('DSSE envelope is not JSON', { statusCode: 400 })
    }
  }
  if (!isDsseEnvelope(json))
    throw new PolicySignatureError('Runtime policy is not signed!', { statusCode: 400 })
  const env = json
  if (
    typeof env.payload !== 'string' ||
    typeof env.payloadType !== 'string' ||
    !Array.isArray(env.signatures)
  ) {
    throw new PolicySignatureError('DSSE envelope needs payload, payloadType and signatures', {
      statusCode: 400,
    })
  }
  for (const s of env.signatures) {
    if (typeof s !== 'object' || s === null || typeof (s as { sig?: unknown }).sig !== 'string') {
      throw new PolicySignatureError('DSSE signature entries need a "sig" string', { statusCode: 400 })
    }
  }
  const signatures = env.signatures.map((entry: { keyid?: unknown; sig: string }) => ({
    keyid: typeof entry.keyid === 'string' ? entry.keyid : '',
    sig: entry.sig,
  }))
  return { payload: env.payload, payloadType: env.payloadType, signatures }
}

function toPublicKey(key: KeyObject | string | Uint8Array): KeyObject {
  if (typeof key !== 'string' && !(key instanceof Uint8Array)) {
    return key.type === 'private' ? createPublicKey(key) : key
  }
  const text = typeof key === 'string' ? key : Buffer.from(key).toString('utf8')
  if (text.includes('BEGIN CERTIFICATE')) return new X509Certificate(text).publicKey
  return createPublicKey(text)
}

function verifyWith(key: KeyObject, data: Buffer, sig: Buffer): boolean {
  try {
    if (key.asymmetricKeyType === 'ec') return verify('sha256', data, { key, dsaEncoding: 'der' }, sig)
    if (key.asymmetricKeyType === 'rsa') return verify('sha256', data, key, sig)
  } catch {
    return false
  }
  return false
}

/**
 * Verifies a DSSE envelope with any of `keys` (PEM public keys / certificates / KeyObjects). With no keys, the
 * `x509` backend's certificates carried in the keyids are tried. Returns the payload; throws
 * `PolicySignatureError` when no signature verifies.
 */
export function verifyDsseEnvelope(
  input: unknown,
  keys: readonly (KeyObject | string | Uint8Array)[],
): { payload: Buffer; payloadType: string } {
  const env = parseEnvelope(input)
  const payload = decodePayload(env.payload)
  const pae = dssePae(env.payloadType, payload)
  let candidates: KeyObject[]
  try {
    candidates = keys.map(toPublicKey)
  } catch (err) {
    throw new PolicySignatureError('verification key is not a PEM public key or certificate', {
      cause: err,
      statusCode: 400,
    })
  }
  if (candidates.length === 0) {
    for (const s of env.signatures) {
      try {
        candidates.push(new X509Certificate(Buffer.from(s.keyid, 'base64')).publicKey)
      } catch {
        // keyid is not an x509-backend certificate
      }
    }
    if (candidates.length === 0)
      throw new PolicySignatureError('Runtime policy is signed but no key was given!')
  }
  for (const s of env.signatures) {
    const sig = Buffer.from(s.sig, 'base64')
    for (const key of candidates)
      if (verifyWith(key, pae, sig)) return { payload, payloadType: env.payloadType }
  }
  throw new PolicySignatureError('Runtime policy signature verification failed')
}

/**
 * Signs `payload` as a DSSE envelope with an EC private key (PEM). The key id is Keylime's `ecdsa` backend's unless
 * given (the `x509` backend passes the base64 of its certificate).
 */
export function signDsseEnvelope(
  payload: Uint8Array,
  privateKey: KeyObject | string,
  payloadType = KEYLIME_PAYLOAD_TYPE,
  keyid?: string,
): DsseEnvelope {
  const key = typeof privateKey === 'string' ? createPrivateKey(privateKey) : privateKey
  if (key.asymmetricKeyType !== 'ec')
    throw new PolicySignatureError('DSSE signing needs an EC private key', { statusCode: 400 })
  const sig = sign('sha256', dssePae(payloadType, payload), { key, dsaEncoding: 'der' })
  return {
    payload: Buffer.from(payload).toString('base64'),
    payloadType,
    signatures: [{ keyid: keyid ?? dsseKeyId(createPublicKey(key)), sig: sig.toString('base64') }],
  }
}
