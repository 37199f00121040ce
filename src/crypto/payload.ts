/**
 * Payload crypto of Keylime's secure-payload protocol (protocols spec §E.1, §E.2):
 * K is the AES key of the payload, split as U = K xor V; U travels tenant -> agent and V verifier -> agent,
 * each RSA-OAEP encrypted to the agent's payload key; the agent recombines and checks auth_tag = HMAC-SHA384(K, uuid).
 */
import {
  constants,
  createCipheriv,
  createDecipheriv,
  createHmac,
  createPrivateKey,
  createPublicKey,
  type KeyObject,
  privateDecrypt,
  publicEncrypt,
  randomBytes,
  timingSafeEqual,
} from 'node:crypto'
import { KeylimeError } from '../common/errors.ts'

export class PayloadCryptoError extends KeylimeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_PAYLOAD_CRYPTO', message, { statusCode: 400, ...options })
  }
}

/** Upstream's IV length for payload AES-GCM (16, not the usual 12). */
const IV_LENGTH = 16
const TAG_LENGTH = 16

export interface KeySplit {
  k: Buffer
  u: Buffer
  v: Buffer
}

function xor(a: Uint8Array, b: Uint8Array): Buffer {
  if (a.length !== b.length)
    throw new PayloadCryptoError(`cannot combine keys of lengths ${a.length} and ${b.length}`)
  const out = Buffer.allocUnsafe(a.length)
  for (let i = 0; i < a.length; i++) out[i] = (a[i] as number) ^ (b[i] as number)
  return out
}

function assertAesKey(k: Uint8Array): void {
  if (k.length !== 32 && k.length !== 16) {
    throw new PayloadCryptoError(`payload key must be 16 or 32 bytes, got ${k.length}`)
  }
}

/** Fresh K (32 random bytes), V (32 random bytes) and U = K xor V. */
export function generateKuv(length: 16 | 32 = 32): KeySplit {
  const k = randomBytes(length)
  const v = randomBytes(length)
  return { k, u: xor(k, v), v }
}

/** U xor V (equal lengths, 16 or 32 bytes). */
export function combineUV(u: Uint8Array, v: Uint8Array): Buffer {
  const k = xor(u, v)
  assertAesKey(k)
  return k
}

/** Raw payload bytes: IV(16) || AES-GCM ciphertext || tag(16), no AAD. AES-256 for a 32-byte K, AES-128 for 16. */
export function encryptPayloadRaw(k: Uint8Array, plaintext: Uint8Array): Buffer {
  assertAesKey(k)
  const iv = randomBytes(IV_LENGTH)
  const cipher = createCipheriv(k.length === 32 ? 'aes-256-gcm' : 'aes-128-gcm', k, iv, {
    authTagLength: TAG_LENGTH,
  })
  const body = Buffer.concat([cipher.update(plaintext), cipher.final()])
  return Buffer.concat([iv, body, cipher.getAuthTag()])
}

/** The wire form of a payload: base64 of `encryptPayloadRaw`. */
export function encryptPayload(k: Uint8Array, plaintext: Uint8Array): string {
  return encryptPayloadRaw(k, plaintext).toString('base64')
}

/**
 * Decrypts a payload: a string is the base64 wire form, bytes are the raw IV||ciphertext||tag.
 * Throws PayloadCryptoError on a wrong key or tampered data (the GCM tag does not verify).
 */
export function decryptPayload(k: Uint8Array, blob: string | Uint8Array): Buffer {
  assertAesKey(k)
  const raw = typeof blob === 'string' ? decodeBase64Strict(blob, 'payload') : Buffer.from(blob)
  if (raw.length < IV_LENGTH + TAG_LENGTH) {
    throw new PayloadCryptoError(`payload too short (${raw.length} bytes) for IV and tag`)
  }
  const iv = raw.subarray(0, IV_LENGTH)
  const tag = raw.subarray(raw.length - TAG_LENGTH)
  const body = raw.subarray(IV_LENGTH, raw.length - TAG_LENGTH)
  const decipher = createDecipheriv(k.length === 32 ? 'aes-256-gcm' : 'aes-128-gcm', k, iv, {
    authTagLength: TAG_LENGTH,
  })
  decipher.setAuthTag(tag)
  try {
    return Buffer.concat([decipher.update(body), decipher.final()])
  } catch (cause) {
    throw new PayloadCryptoError('payload authentication failed (wrong key or tampered data)', { cause })
  }
}

/** hex(HMAC-SHA384(K, message)): the auth_tag over the agent UUID, also the /keys/verify answer over a challenge. */
export function authTag(k: Uint8Array, message: string): string {
  return createHmac('sha384', k).update(message, 'utf8').digest('hex')
}

/** Constant-time comparison of an expected auth tag (hex) with one computed from K. */
export function checkAuthTag(k: Uint8Array, message: string, expectedHex: string): boolean {
  const computed = Buffer.from(authTag(k, message), 'hex')
  const expected = /^[0-9a-fA-F]*$/.test(expectedHex) ? Buffer.from(expectedHex, 'hex') : Buffer.alloc(0)
  return expected.length === computed.length && timingSafeEqual(expected, computed)
}

function toPublicKey(key: string | Uint8Array | KeyObject): KeyObject {
  try {
    if (typeof key === 'string') return createPublicKey(key)
    if (key instanceof Uint8Array)
      return createPublicKey({ key: Buffer.from(key), format: 'der', type: 'spki' })
    return key.type === 'private' ? createPublicKey(key) : key
  } catch (cause) {
    throw new PayloadCryptoError('not a valid public key', { cause })
  }
}

function toPrivateKey(key: string | KeyObject): KeyObject {
  try {
    return typeof key === 'string' ? createPrivateKey(key) : key
  } catch (cause) {
    throw new PayloadCryptoError('not a valid private key', { cause })
  }
}

/** RSA-OAEP (SHA-1, MGF1-SHA-1, empty label) as upstream uses for U and V; returns raw ciphertext. */
export function rsaOaepEncrypt(publicKey: string | Uint8Array | KeyObject, data: Uint8Array): Buffer {
  const key = toPublicKey(publicKey)
  if (key.asymmetricKeyType !== 'rsa') throw new PayloadCryptoError('RSA-OAEP needs an RSA public key')
  try {
    return publicEncrypt({ key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, data)
  } catch (cause) {
    throw new PayloadCryptoError('RSA-OAEP encryption failed (data too long for the key?)', { cause })
  }
}

export function rsaOaepDecrypt(privateKey: string | KeyObject, ciphertext: Uint8Array): Buffer {
  const key = toPrivateKey(privateKey)
  try {
    return privateDecrypt({ key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, ciphertext)
  } catch (cause) {
    throw new PayloadCryptoError('RSA-OAEP decryption failed', { cause })
  }
}

export interface UKeyEntry {
  u: Uint8Array
  /** hex HMAC-SHA384(K, uuid) sent along with U */
  authTag: string
  /** the encrypted payload sent with U, if any */
  payload?: string | undefined
}

export interface CombineResult {
  k: Buffer
  /** the U entry whose auth tag matched (its payload is the one to decrypt) */
  uEntry: UKeyEntry
}

/**
 * Tries every U x V pair (spec §E.2): K' = U xor V for equal lengths, accepted when its HMAC over the UUID equals
 * the auth tag that came with U. Returns null when no pair matches yet.
 */
export function tryCombine(
  uList: readonly UKeyEntry[],
  vList: readonly Uint8Array[],
  uuid: string,
): CombineResult | null {
  for (const uEntry of uList) {
    for (const v of vList) {
      if (v.length !== uEntry.u.length || (v.length !== 16 && v.length !== 32)) continue
      const k = xor(uEntry.u, v)
      if (checkAuthTag(k, uuid, uEntry.authTag)) return { k, uEntry }
    }
  }
  return null
}

/**
 * Strict base64 decoding (node's decoder silently skips garbage; we refuse it). The check re-encodes
 * natively instead of running a regex over megabytes of payload.
 */
export function decodeBase64Strict(text: string, what: string): Buffer {
  const compact = /\s/.test(text) ? text.replace(/\s+/g, '') : text
  const decoded = Buffer.from(compact, 'base64')
  const canonical = decoded.toString('base64')
  const unpadded = compact.endsWith('=') ? compact : compact.padEnd(canonical.length, '=')
  if (unpadded !== canonical) throw new PayloadCryptoError(`${what} is not valid base64`)
  return decoded
}
