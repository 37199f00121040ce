/**
 * IMA verification keyrings: public keys indexed by their 32-bit IMA key id (signature v2 `keyid`), from the policy's
 * `verification-keys` JSON or learned from keys IMA measured onto kernel keyrings.
 */
import { createHash, createPublicKey, type KeyObject, X509Certificate } from 'node:crypto'

/** Keyring JSON of upstream (`verification-keys`, learned keyrings): `keyids[i]` belongs to `pubkeys[i]`. */
export interface KeyringJson {
  meta?: { version?: number }
  keyids: number[]
  pubkeys: string[]
}

/**
 * IMA keyidv2 of a key: low 32 bits of SHA-1 over PKCS#1 RSAPublicKey (RSA) or the uncompressed EC point. A private
 * key gives the id of its public half (exporting it as PKCS#1 would hash the private key instead).
 */
export function computeKeyId(key: KeyObject): number {
  if (key.type === 'secret') throw new Error('a symmetric key has no IMA key id')
  const publicKey = key.type === 'private' ? createPublicKey(key) : key
  let material: Buffer
  if (publicKey.asymmetricKeyType === 'rsa') {
    material = publicKey.export({ type: 'pkcs1', format: 'der' })
  } else if (publicKey.asymmetricKeyType === 'ec') {
    material = ecPoint(publicKey)
  } else {
    throw new Error(`unsupported key type ${publicKey.asymmetricKeyType}`)
  }
  return createHash('sha1').update(material).digest().readUInt32BE(16)
}

/**
 * Uncompressed EC point of a public key: the contents of the SubjectPublicKeyInfo's BIT STRING after its
 * unused-bits byte. Read from the DER rather than the JWK, which node refuses for curves such as brainpool.
 */
function ecPoint(publicKey: KeyObject): Buffer {
  const spki = publicKey.export({ type: 'spki', format: 'der' })
  // SubjectPublicKeyInfo ::= SEQUENCE { algorithm AlgorithmIdentifier, subjectPublicKey BIT STRING }
  const algorithmAt = derHeaderEnd(spki, 0, 0x30)
  const bitStringAt = derHeaderEnd(spki, algorithmAt, 0x30) + derContentLength(spki, algorithmAt)
  const bitsStart = derHeaderEnd(spki, bitStringAt, 0x03)
  const bitsEnd = bitsStart + derContentLength(spki, bitStringAt)
  if (spki[bitsStart] !== 0 || bitsEnd > spki.length) throw new Error('EC public key BIT STRING is malformed')
  return spki.subarray(bitsStart + 1, bitsEnd)
}

/** Offset just past the tag and length of the DER element at `at`, checking its tag. */
function derHeaderEnd(der: Buffer, at: number, tag: number): number {
  if (der[at] !== tag) throw new Error(`expected DER tag 0x${tag.toString(16)} at offset ${at}`)
  const first = der[at + 1] ?? 0
  return first < 0x80 ? at + 2 : at + 2 + (first & 0x7f)
}

/** Content length of the DER element at `at` (definite lengths only, as DER requires). */
function derContentLength(der: Buffer, at: number): number {
  const first = der[at + 1] ?? 0
  if (first < 0x80) return first
  let len = 0
  for (let i = 0; i < (first & 0x7f); i++) len = len * 256 + (der[at + 2 + i] ?? 0)
  return len
}

/** Subject Key Identifier of a DER certificate, found by walking its extensions; null when absent. */
export function subjectKeyIdentifier(der: Uint8Array): Buffer | null {
  const oid = Buffer.from([0x06, 0x03, 0x55, 0x1d, 0x0e])
  const buf = Buffer.from(der.buffer, der.byteOffset, der.byteLength)
  const at = buf.indexOf(oid)
  if (at < 0) return null
  let p = at + oid.length
  if (buf[p] === 0x01) p += 3 // critical BOOLEAN
  if (buf[p] !== 0x04) return null
  const outerLen = buf[p + 1] ?? 0
  if (outerLen >= 0x80) return null
  p += 2
  if (buf[p] !== 0x04) return null
  const len = buf[p + 1] ?? 0
  if (len >= 0x80 || p + 2 + len > buf.length) return null
  return Buffer.from(buf.subarray(p + 2, p + 2 + len))
}

export type ParsedKey =
  | { kind: 'key'; key: KeyObject; keyId: number }
  | { kind: 'unsupported'; reason: string }

/**
 * Reads a buffer IMA measured onto a keyring: X.509 certificate (DER/PEM) or public key (DER SPKI/PEM).
 * null: not a key at all; `unsupported`: a key of a type IMA signatures cannot use.
 */
export function parseKeyBuffer(buf: Uint8Array): ParsedKey | null {
  const bytes = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength)
  if (bytes.length < 16 || (bytes[0] !== 0x30 && bytes[0] !== 0x2d)) return null
  let key: KeyObject | null = null
  let keyIdFromCert: number | null = null
  try {
    const cert = new X509Certificate(bytes)
    key = cert.publicKey
    if (bytes[0] === 0x30) {
      const ski = subjectKeyIdentifier(bytes)
      if (ski && ski.length >= 4) keyIdFromCert = ski.readUInt32BE(ski.length - 4)
    }
  } catch {
    try {
      key = createPublicKey(
        bytes[0] === 0x30 ? { key: bytes, format: 'der', type: 'spki' } : bytes.toString('utf8'),
      )
    } catch {
      return null
    }
  }
  if (key.asymmetricKeyType !== 'rsa' && key.asymmetricKeyType !== 'ec') {
    return { kind: 'unsupported', reason: `key type ${key.asymmetricKeyType}` }
  }
  return { kind: 'key', key, keyId: keyIdFromCert ?? computeKeyId(key) }
}

export class ImaKeyring {
  readonly #byId = new Map<number, KeyObject[]>()
  readonly #entries: { keyId: number; spki: string }[] = []

  get size(): number {
    return this.#entries.length
  }

  /** Adds a key (idempotent per key id + key bytes); a private key contributes only its public half. */
  add(keyToAdd: KeyObject, keyId = computeKeyId(keyToAdd)): void {
    if (keyToAdd.type === 'secret') throw new Error('a symmetric key cannot verify IMA signatures')
    const key = keyToAdd.type === 'private' ? createPublicKey(keyToAdd) : keyToAdd
    const spki = key.export({ type: 'spki', format: 'der' }).toString('base64')
    if (this.#entries.some((e) => e.keyId === keyId && e.spki === spki)) return
    this.#entries.push({ keyId, spki })
    const list = this.#byId.get(keyId)
    if (list) list.push(key)
    else this.#byId.set(keyId, [key])
  }

  find(keyId: number): readonly KeyObject[] {
    return this.#byId.get(keyId) ?? []
  }

  toJSON(): KeyringJson {
    return { keyids: this.#entries.map((e) => e.keyId), pubkeys: this.#entries.map((e) => e.spki) }
  }

  /** Builds a keyring from upstream keyring JSON; throws `Error` naming the bad element. */
  static fromJSON(json: KeyringJson): ImaKeyring {
    const ring = new ImaKeyring()
    json.pubkeys.forEach((b64, i) => {
      let key: KeyObject
      try {
        key = createPublicKey({ key: Buffer.from(b64, 'base64'), format: 'der', type: 'spki' })
      } catch (err) {
        throw new Error(`pubkeys[${i}] is not a base64 DER SubjectPublicKeyInfo`, { cause: err })
      }
      const id = json.keyids[i]
      ring.add(key, typeof id === 'number' ? id >>> 0 : computeKeyId(key))
    })
    return ring
  }

  /** Keyring from PEM public keys or certificates (tenant-side `--sign_verification_key` files). */
  static fromPem(pems: readonly string[]): ImaKeyring {
    const ring = new ImaKeyring()
    for (const pem of pems) {
      const parsed = parseKeyBuffer(Buffer.from(pem, 'utf8'))
      if (parsed === null || parsed.kind !== 'key') throw new Error('not an RSA/EC public key or certificate')
      ring.add(parsed.key, parsed.keyId)
    }
    return ring
  }
}
