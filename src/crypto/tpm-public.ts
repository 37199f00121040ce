/**
 * TPM public areas (TPM2B_PUBLIC, as the registrar stores `aik_tpm` / `ek_tpm`) to node:crypto keys, object Names
 * and the AK attribute check. Only RSA and NIST-curve ECC objects occur in Keylime; other types are refused.
 * Decoding is src/tpm's `decodeTpm2bPublic`; its TpmFormatError is reported here as TpmPublicError.
 */
import { createHash, createPublicKey, type KeyObject } from 'node:crypto'
import { KeylimeError } from '../common/errors.ts'
import {
  decodeTpm2bPublic,
  TpmAlg,
  TpmaObject,
  TpmEccCurve,
  TpmFormatError,
  type TpmtPublic,
} from '../tpm/index.ts'

/** Malformed or unsuitable TPM public area; a 400 on the API. */
export class TpmPublicError extends KeylimeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_TPM_PUBLIC', message, { statusCode: 400, cause: options?.cause })
  }
}

export type NameHash = 'sha1' | 'sha256' | 'sha384' | 'sha512'
const NAME_HASHES = new Map<number, NameHash>([
  [TpmAlg.Sha1, 'sha1'],
  [TpmAlg.Sha256, 'sha256'],
  [TpmAlg.Sha384, 'sha384'],
  [TpmAlg.Sha512, 'sha512'],
])

export interface EccCurveInfo {
  /** JWK name */
  crv: 'P-256' | 'P-384' | 'P-521'
  /** node:crypto / OpenSSL name */
  nodeCurve: 'prime256v1' | 'secp384r1' | 'secp521r1'
  /** coordinate size in bytes */
  size: number
}
export const ECC_CURVES: ReadonlyMap<number, EccCurveInfo> = new Map([
  [TpmEccCurve.NistP256, { crv: 'P-256', nodeCurve: 'prime256v1', size: 32 }],
  [TpmEccCurve.NistP384, { crv: 'P-384', nodeCurve: 'secp384r1', size: 48 }],
  [TpmEccCurve.NistP521, { crv: 'P-521', nodeCurve: 'secp521r1', size: 66 }],
])

/** A decoded public area (src/tpm's TPMT_PUBLIC; `raw` is what the Name hashes). */
export type PublicArea = TpmtPublic

/** Decodes a TPM2B_PUBLIC (u16 size + TPMT_PUBLIC) holding an RSA or ECC key; exact consumption. */
export function readTpm2bPublic(tpm2bPublic: Uint8Array): PublicArea {
  let area: TpmtPublic
  try {
    area = decodeTpm2bPublic(tpm2bPublic)
  } catch (e) {
    if (e instanceof TpmFormatError)
      throw new TpmPublicError(`malformed TPM2B_PUBLIC: ${e.message}`, { cause: e })
    throw e
  }
  if (area.parameters.kind !== 'rsa' && area.parameters.kind !== 'ecc') {
    throw new TpmPublicError(`unsupported TPM object type 0x${area.type.toString(16).padStart(4, '0')}`)
  }
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
  const digest = createHash(nameHashOf(area)).update(area.raw).digest()
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

export function eccCurveOf(area: PublicArea): EccCurveInfo {
  const p = area.parameters
  if (p.kind !== 'ecc') throw new TpmPublicError('not an ECC key')
  const curve = ECC_CURVES.get(p.curveId)
  if (curve === undefined) throw new TpmPublicError(`unsupported ECC curve 0x${p.curveId.toString(16)}`)
  return curve
}

/** The public key of an RSA or NIST ECC TPM object as a node KeyObject (parse once, reuse for many checks). */
export function publicAreaToKeyObject(tpm2bPublic: Uint8Array | PublicArea): KeyObject {
  const area = asArea(tpm2bPublic)
  try {
    const p = area.parameters
    const u = area.unique
    if (p.kind === 'rsa' && u.kind === 'rsa') {
      if (u.n.length === 0 || u.n.length * 8 !== p.keyBits) {
        throw new TpmPublicError(`RSA modulus is ${u.n.length} bytes for keyBits ${p.keyBits}`)
      }
      const e = p.exponent === 0 ? 65537 : p.exponent
      const eBytes = Buffer.alloc(4)
      eBytes.writeUInt32BE(e)
      const firstNonZero = eBytes.findIndex((b) => b !== 0)
      return createPublicKey({
        key: { kty: 'RSA', n: b64url(u.n), e: b64url(eBytes.subarray(firstNonZero)) },
        format: 'jwk',
      })
    }
    if (p.kind !== 'ecc' || u.kind !== 'ecc') throw new TpmPublicError('TPM object is not an RSA or ECC key')
    const curve = eccCurveOf(area)
    return createPublicKey({
      key: {
        kty: 'EC',
        crv: curve.crv,
        x: b64url(leftPad(u.x, curve.size)),
        y: b64url(leftPad(u.y, curve.size)),
      },
      format: 'jwk',
    })
  } catch (e) {
    if (e instanceof TpmPublicError) throw e
    throw new TpmPublicError(`TPM public key is not a valid ${area.parameters.kind.toUpperCase()} key`, {
      cause: e,
    })
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
  const required = { restricted: TpmaObject.Restricted, sign: TpmaObject.Sign, fixedTPM: TpmaObject.FixedTpm }
  const missing = Object.entries({ ...required, fixedParent: TpmaObject.FixedParent })
    .filter(([, bit]) => (a & bit) === 0)
    .map(([k]) => k)
  if (missing.length > 0) throw new TpmPublicError(`attestation key lacks attributes: ${missing.join(', ')}`)
  if ((a & TpmaObject.Decrypt) !== 0) throw new TpmPublicError('attestation key must not be a decryption key')
  nameHashOf(area)
  if (area.parameters.kind === 'ecc') eccCurveOf(area)
  return area
}
