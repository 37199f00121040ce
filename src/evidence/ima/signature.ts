/** IMA file signatures (`security.ima` signature v2, §8): header decoding and verification over the file digest. */
import { constants as cryptoConstants, hash, type KeyObject, publicDecrypt } from 'node:crypto'
import { verifyEcdsaPrehashed } from './ecdsa-prehashed.ts'
import { canonicalKernelHash, KERNEL_HASH_IDS } from './hash-algs.ts'
import type { ImaKeyring } from './keyring.ts'

export const IMA_XATTR_DIGSIG = 3
export const IMA_XATTR_PORTABLE_DIGSIG = 5

export interface ImaSignatureV2 {
  type: number
  hashAlg: string
  keyId: number
  signature: Buffer
}

/** Decodes a v2 signature header; null when the field is not a usable signature (other type/version, bad size). */
export function decodeImaSignature(field: Uint8Array): ImaSignatureV2 | null {
  const buf = Buffer.from(field.buffer, field.byteOffset, field.byteLength)
  if (buf.length < 9) return null
  const type = buf[0] as number
  if (type !== IMA_XATTR_DIGSIG && type !== IMA_XATTR_PORTABLE_DIGSIG) return null
  if (buf[1] !== 2) return null
  const hashAlg = KERNEL_HASH_IDS[buf[2] as number]
  if (hashAlg === undefined) return null
  const size = buf.readUInt16BE(7)
  if (9 + size !== buf.length) return null
  return { type, hashAlg, keyId: buf.readUInt32BE(3), signature: buf.subarray(9) }
}

const DIGEST_INFO_PREFIX: Record<string, Buffer> = {
  md5: Buffer.from('3020300c06082a864886f70d020505000410', 'hex'),
  sha1: Buffer.from('3021300906052b0e03021a05000414', 'hex'),
  sha224: Buffer.from('302d300d06096086480165030402040500041c', 'hex'),
  sha256: Buffer.from('3031300d060960864801650304020105000420', 'hex'),
  sha384: Buffer.from('3041300d060960864801650304020205000430', 'hex'),
  sha512: Buffer.from('3051300d060960864801650304020305000440', 'hex'),
  sm3: Buffer.from('3030300c06082a811ccf5501831105000420', 'hex'),
}

/** Verifies `signature` over an already computed digest with one key (RSA PKCS#1 v1.5 or DER ECDSA). */
export function verifyPrehashed(
  key: KeyObject,
  hashAlg: string,
  digest: Uint8Array,
  signature: Uint8Array,
): boolean {
  try {
    if (key.asymmetricKeyType === 'rsa') {
      const prefix = DIGEST_INFO_PREFIX[hashAlg]
      if (prefix === undefined) return false
      const recovered = publicDecrypt({ key, padding: cryptoConstants.RSA_PKCS1_PADDING }, signature)
      return (
        recovered.length === prefix.length + digest.length &&
        recovered.equals(Buffer.concat([prefix, digest]))
      )
    }
    if (key.asymmetricKeyType === 'ec') return verifyEcdsaPrehashed(key, digest, signature)
  } catch {
    return false
  }
  return false
}

const keyFingerprints = new WeakMap<KeyObject, string>()

function keyFingerprint(key: KeyObject): string {
  let fingerprint = keyFingerprints.get(key)
  if (fingerprint === undefined) {
    fingerprint = hash('sha256', key.export({ type: 'spki', format: 'der' }), 'base64')
    keyFingerprints.set(key, fingerprint)
  }
  return fingerprint
}

/**
 * Outcomes of (key, digest, signature) checks, shared by every agent the process verifies: a fleet measures the same
 * signed files everywhere, and a check is pure cryptography (18 µs with RSA-2048, ~1 ms with P-256 and ~2.4 ms with
 * P-384, which node:crypto cannot verify over a digest). Bounded; the oldest outcome is dropped first.
 */
const signatureOutcomes = new Map<string, boolean>()
export const SIGNATURE_CACHE_SIZE = 65_536

function verifyPrehashedCached(
  key: KeyObject,
  hashAlg: string,
  digest: Uint8Array,
  signature: Uint8Array,
): boolean {
  const id = `${keyFingerprint(key)}|${hashAlg}|${hash('sha256', Buffer.concat([digest, signature]), 'base64')}`
  const known = signatureOutcomes.get(id)
  if (known !== undefined) return known
  const ok = verifyPrehashed(key, hashAlg, digest, signature)
  if (signatureOutcomes.size >= SIGNATURE_CACHE_SIZE) {
    const oldest = signatureOutcomes.keys().next()
    if (!oldest.done) signatureOutcomes.delete(oldest.value)
  }
  signatureOutcomes.set(id, ok)
  return ok
}

/**
 * Whether an entry's `sig` field verifies its digest with a key of the given keyrings: the header's hash must be the
 * d-ng algorithm, the key is looked up by key id.
 */
export function verifyImaSignature(
  sigField: Uint8Array,
  digestAlg: string,
  digest: Uint8Array,
  keyrings: readonly ImaKeyring[],
): boolean {
  const sig = decodeImaSignature(sigField)
  if (sig === null || sig.hashAlg !== canonicalKernelHash(digestAlg)) return false
  for (const ring of keyrings) {
    for (const key of ring.find(sig.keyId)) {
      if (verifyPrehashedCached(key, sig.hashAlg, digest, sig.signature)) return true
    }
  }
  return false
}
