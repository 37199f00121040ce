/**
 * TPM public areas (TPM2B_PUBLIC, as the registrar stores `aik_tpm` / `ek_tpm`) to node:crypto keys, object Names
 * and the AK attribute check. Only RSA and NIST-curve ECC objects occur in Keylime; other types are refused.
 *
 * The decoder here is deliberately small (the fields these functions need, with exact consumption); once team
 * TPM's `decodeTpm2bPublic` lands it can replace `readTpm2bPublic` without changing the exported API.
 */
import { createHash, createPublicKey, type KeyObject } from 'node:crypto'
import { KeylimeError } from '../common/errors.ts'

/** Malformed or unsuitable TPM public area; a 400 on the API. */
export class TpmPublicError extends KeylimeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_TPM_PUBLIC', message, { statusCode: 400, cause: options?.cause })
  }
}

export const TPM_ALG = Object.freeze({
  RSA: 0x0001,
  SHA1: 0x0004,
  AES: 0x0006,
  SHA256: 0x000b,
  SHA384: 0x000c,
  SHA512: 0x000d,
  NULL: 0x0010,
  RSASSA: 0x0014,
  RSAES: 0x0015,
  RSAPSS: 0x0016,
  OAEP: 0x0017,
  ECDSA: 0x0018,
  ECDH: 0x0019,
  ECDAA: 0x001a,
  ECSCHNORR: 0x001c,
  ECC: 0x0023,
  CFB: 0x0043,
})

export const OBJECT_ATTRIBUTES = Object.freeze({
  fixedTPM: 1 << 1,
  stClear: 1 << 2,
  fixedParent: 1 << 4,
  sensitiveDataOrigin: 1 << 5,
  userWithAuth: 1 << 6,
  adminWithPolicy: 1 << 7,
  noDA: 1 << 10,
  encryptedDuplication: 1 << 11,
  restricted: 1 << 16,
  decrypt: 1 << 17,
  sign: 1 << 18,
})

export type NameHash = 'sha1' | 'sha256' | 'sha384' | 'sha512'
const NAME_HASHES = new Map<number, NameHash>([
  [TPM_ALG.SHA1, 'sha1'],
  [TPM_ALG.SHA256, 'sha256'],
  [TPM_ALG.SHA384, 'sha384'],
  [TPM_ALG.SHA512, 'sha512'],
])

export interface EccCurveInfo {
  /** JWK / node name */
  crv: 'P-256' | 'P-384' | 'P-521'
  nodeCurve: 'prime256v1' | 'secp384r1' | 'secp521r1'
  /** coordinate size in bytes */
  size: number
}
export const ECC_CURVES: ReadonlyMap<number, EccCurveInfo> = new Map([
  [0x0003, { crv: 'P-256', nodeCurve: 'prime256v1', size: 32 }],
  [0x0004, { crv: 'P-384', nodeCurve: 'secp384r1', size: 48 }],
  [0x0005, { crv: 'P-521', nodeCurve: 'secp521r1', size: 66 }],
])

interface PublicCommon {
  nameAlg: number
  objectAttributes: number
  authPolicy: Uint8Array
  /** TPMT_SYM_DEF_OBJECT; algorithm NULL for signing keys. */
  symmetric: { algorithm: number; keyBits: number; mode: number }
  /** Signing/decryption scheme (NULL when the key is not restricted to one) and its hash. */
  scheme: { scheme: number; hashAlg: number }
  /** TPMT_PUBLIC bytes (without the TPM2B size), i.e. what the Name hashes. */
  tpmtPublic: Uint8Array
}
export interface RsaPublicArea extends PublicCommon {
  type: 'rsa'
  keyBits: number
  /** 0 in the area means 65537 */
  exponent: number
  modulus: Uint8Array
}
export interface EccPublicArea extends PublicCommon {
  type: 'ecc'
  curveId: number
  kdf: { scheme: number; hashAlg: number }
  x: Uint8Array
  y: Uint8Array
}
export type PublicArea = RsaPublicArea | EccPublicArea

class Reader {
  offset = 0
  constructor(private readonly buf: Uint8Array) {}
  private need(n: number): void {
    if (this.offset + n > this.buf.length) {
      throw new TpmPublicError(`TPM2B_PUBLIC truncated at byte ${this.offset} (needs ${n} more)`)
    }
  }
  u16(): number {
    this.need(2)
    const v = ((this.buf[this.offset] as number) << 8) | (this.buf[this.offset + 1] as number)
    this.offset += 2
    return v
  }
  u32(): number {
    const hi = this.u16()
    return hi * 0x10000 + this.u16()
  }
  bytes(n: number): Uint8Array {
    this.need(n)
    const v = this.buf.subarray(this.offset, this.offset + n)
    this.offset += n
    return v
  }
  tpm2b(): Uint8Array {
    return this.bytes(this.u16())
  }
  get done(): boolean {
    return this.offset === this.buf.length
  }
}

/** Decodes a TPM2B_PUBLIC (u16 size + TPMT_PUBLIC) holding an RSA or ECC key; exact consumption. */
export function readTpm2bPublic(tpm2bPublic: Uint8Array): PublicArea {
  if (!(tpm2bPublic instanceof Uint8Array)) throw new TpmPublicError('TPM2B_PUBLIC must be bytes')
  const outer = new Reader(tpm2bPublic)
  const size = outer.u16()
  if (size + 2 !== tpm2bPublic.length) {
    throw new TpmPublicError(`TPM2B_PUBLIC size field ${size} does not match ${tpm2bPublic.length - 2} bytes`)
  }
  const tpmtPublic = tpm2bPublic.subarray(2)
  const r = new Reader(tpmtPublic)
  const type = r.u16()
  const nameAlg = r.u16()
  const objectAttributes = r.u32()
  const authPolicy = r.tpm2b()
  const symAlg = r.u16()
  const symmetric = { algorithm: symAlg, keyBits: 0, mode: TPM_ALG.NULL as number }
  if (symAlg !== TPM_ALG.NULL) {
    symmetric.keyBits = r.u16()
    symmetric.mode = r.u16()
  }
  const schemeAlg = r.u16()
  const scheme = { scheme: schemeAlg, hashAlg: TPM_ALG.NULL as number }
  // Every asymmetric scheme carries a hash except RSAES (empty details); ECDAA adds a u16 count.
  if (schemeAlg !== TPM_ALG.NULL && schemeAlg !== TPM_ALG.RSAES) {
    scheme.hashAlg = r.u16()
    if (schemeAlg === TPM_ALG.ECDAA) r.u16()
  }
  const common = { nameAlg, objectAttributes, authPolicy, symmetric, scheme, tpmtPublic }
  let area: PublicArea
  if (type === TPM_ALG.RSA) {
    const keyBits = r.u16()
    const exponent = r.u32()
    const modulus = r.tpm2b()
    if (modulus.length === 0 || modulus.length * 8 !== keyBits) {
      throw new TpmPublicError(`RSA modulus is ${modulus.length} bytes for keyBits ${keyBits}`)
    }
    area = { type: 'rsa', ...common, keyBits, exponent, modulus }
  } else if (type === TPM_ALG.ECC) {
    const curveId = r.u16()
    const kdfScheme = r.u16()
    const kdf = { scheme: kdfScheme, hashAlg: TPM_ALG.NULL as number }
    if (kdfScheme !== TPM_ALG.NULL) kdf.hashAlg = r.u16()
    const x = r.tpm2b()
    const y = r.tpm2b()
    area = { type: 'ecc', ...common, curveId, kdf, x, y }
  } else {
    throw new TpmPublicError(`unsupported TPM object type 0x${type.toString(16).padStart(4, '0')}`)
  }
  if (!r.done) throw new TpmPublicError(`TPMT_PUBLIC has ${tpmtPublic.length - r.offset} trailing bytes`)
  return area
}

function asArea(input: Uint8Array | PublicArea): PublicArea {
  return input instanceof Uint8Array ? readTpm2bPublic(input) : input
}

export function nameHashOf(area: PublicArea): NameHash {
  const h = NAME_HASHES.get(area.nameAlg)
  if (h === undefined) throw new TpmPublicError(`unsupported nameAlg 0x${area.nameAlg.toString(16)}`)
  return h
}

/** TPM object Name: `nameAlg (u16 BE) || H_nameAlg(TPMT_PUBLIC)` (Part 1, 16). */
export function objectName(tpm2bPublic: Uint8Array | PublicArea): Uint8Array {
  const area = asArea(tpm2bPublic)
  const digest = createHash(nameHashOf(area)).update(area.tpmtPublic).digest()
  const name = new Uint8Array(2 + digest.length)
  name[0] = area.nameAlg >> 8
  name[1] = area.nameAlg & 0xff
  name.set(digest, 2)
  return name
}

function b64url(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64url')
}

function leftPad(bytes: Uint8Array, size: number): Uint8Array {
  if (bytes.length === size) return bytes
  // Leading zero bytes may have been dropped (or, rarely, added); anything else is malformed.
  let start = 0
  while (bytes.length - start > size && bytes[start] === 0) start++
  if (bytes.length - start > size) throw new TpmPublicError(`ECC coordinate longer than ${size} bytes`)
  const out = new Uint8Array(size)
  out.set(bytes.subarray(start), size - (bytes.length - start))
  return out
}

export function eccCurveOf(area: EccPublicArea): EccCurveInfo {
  const curve = ECC_CURVES.get(area.curveId)
  if (curve === undefined) throw new TpmPublicError(`unsupported ECC curve 0x${area.curveId.toString(16)}`)
  return curve
}

/** The public key of an RSA or NIST ECC TPM object as a node KeyObject (parse once, reuse for many checks). */
export function publicAreaToKeyObject(tpm2bPublic: Uint8Array | PublicArea): KeyObject {
  const area = asArea(tpm2bPublic)
  try {
    if (area.type === 'rsa') {
      const e = area.exponent === 0 ? 65537 : area.exponent
      const eBytes = Buffer.alloc(4)
      eBytes.writeUInt32BE(e)
      const firstNonZero = eBytes.findIndex((b) => b !== 0)
      return createPublicKey({
        key: { kty: 'RSA', n: b64url(area.modulus), e: b64url(eBytes.subarray(firstNonZero)) },
        format: 'jwk',
      })
    }
    const curve = eccCurveOf(area)
    return createPublicKey({
      key: {
        kty: 'EC',
        crv: curve.crv,
        x: b64url(leftPad(area.x, curve.size)),
        y: b64url(leftPad(area.y, curve.size)),
      },
      format: 'jwk',
    })
  } catch (e) {
    if (e instanceof TpmPublicError) throw e
    throw new TpmPublicError(`TPM public key is not a valid ${area.type.toUpperCase()} key`, { cause: e })
  }
}

/** SubjectPublicKeyInfo PEM of the object's key (what upstream keylime stores and hashes). */
export function publicKeyPemOf(tpm2bPublic: Uint8Array | PublicArea): string {
  return publicAreaToKeyObject(tpm2bPublic).export({ type: 'spki', format: 'pem' }) as string
}

/**
 * Refuses keys that cannot be a Keylime attestation key: it must be a restricted signing key (so the TPM only signs
 * digests it produced itself, e.g. quotes) that never leaves this TPM (fixedTPM, fixedParent), and not a decryption key.
 * Returns the decoded area for callers that want to keep it.
 */
export function assertRestrictedSigningKey(tpm2bPublic: Uint8Array | PublicArea): PublicArea {
  const area = asArea(tpm2bPublic)
  const a = area.objectAttributes
  const missing = (['restricted', 'sign', 'fixedTPM', 'fixedParent'] as const).filter(
    (k) => (a & OBJECT_ATTRIBUTES[k]) === 0,
  )
  if (missing.length > 0) throw new TpmPublicError(`attestation key lacks attributes: ${missing.join(', ')}`)
  if ((a & OBJECT_ATTRIBUTES.decrypt) !== 0)
    throw new TpmPublicError('attestation key must not be a decryption key')
  nameHashOf(area)
  if (area.type === 'ecc') eccCurveOf(area)
  return area
}
