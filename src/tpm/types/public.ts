import { TpmAlg } from '../constants.ts'
import { decodeExact, type TpmReader } from '../marshal/reader.ts'
import { encodeWith, type TpmWriter } from '../marshal/writer.ts'
import type { Codec } from './codec.ts'

/** TPMT_SYM_DEF_OBJECT (Part 2, 11.1.7): `keyBits`/`mode` absent for TPM_ALG_NULL. */
export interface TpmtSymDefObject {
  algorithm: number
  keyBits: number
  mode: number
}

export const TpmtSymDefObject: Codec<TpmtSymDefObject> = {
  name: 'TPMT_SYM_DEF_OBJECT',
  decode(r) {
    const algorithm = r.u16('algorithm')
    if (algorithm === TpmAlg.Null) return { algorithm, keyBits: 0, mode: TpmAlg.Null }
    return { algorithm, keyBits: r.u16('keyBits'), mode: r.u16('mode') }
  },
  encode(w, v) {
    w.u16(v.algorithm)
    if (v.algorithm !== TpmAlg.Null) w.u16(v.keyBits).u16(v.mode)
  },
}

/** An asymmetric or KDF scheme: TPMT_RSA_SCHEME, TPMT_ECC_SCHEME, TPMT_KDF_SCHEME, TPMT_KEYEDHASH_SCHEME. */
export interface TpmtScheme {
  scheme: number
  /** TPM_ALG_NULL when the scheme has no hash (NULL, RSAES). */
  hashAlg: number
  /** ECDAA commit count; 0 otherwise. */
  count: number
}

const noScheme = (scheme: number): TpmtScheme => ({ scheme, hashAlg: TpmAlg.Null, count: 0 })

function decodeScheme(r: TpmReader, what: string): TpmtScheme {
  return r.scope(what, () => {
    const scheme = r.u16('scheme')
    if (scheme === TpmAlg.Null || scheme === TpmAlg.RsaEs) return noScheme(scheme)
    const hashAlg = r.u16('hashAlg')
    const count = scheme === TpmAlg.Ecdaa ? r.u16('count') : 0
    return { scheme, hashAlg, count }
  })
}

function encodeScheme(w: TpmWriter, v: TpmtScheme): void {
  w.u16(v.scheme)
  if (v.scheme === TpmAlg.Null || v.scheme === TpmAlg.RsaEs) return
  w.u16(v.hashAlg)
  if (v.scheme === TpmAlg.Ecdaa) w.u16(v.count)
}

/** TPMS_RSA_PARMS (Part 2, 12.2.3.5). An exponent of 0 means 65537. */
export interface TpmsRsaParms {
  kind: 'rsa'
  symmetric: TpmtSymDefObject
  scheme: TpmtScheme
  keyBits: number
  exponent: number
}

/** TPMS_ECC_PARMS (Part 2, 12.2.3.6). */
export interface TpmsEccParms {
  kind: 'ecc'
  symmetric: TpmtSymDefObject
  scheme: TpmtScheme
  curveId: number
  kdf: TpmtScheme
}

/** TPMS_KEYEDHASH_PARMS (Part 2, 12.2.3.3); XOR schemes carry a KDF after the hash. */
export interface TpmsKeyedHashParms {
  kind: 'keyedhash'
  scheme: TpmtScheme
  kdf: number
}

/** TPMS_SYMCIPHER_PARMS (Part 2, 12.2.3.4). */
export interface TpmsSymCipherParms {
  kind: 'symcipher'
  symmetric: TpmtSymDefObject
}

export type TpmuPublicParms = TpmsRsaParms | TpmsEccParms | TpmsKeyedHashParms | TpmsSymCipherParms

/** TPMU_PUBLIC_ID: RSA modulus, ECC point, or a digest for keyed-hash and symmetric objects. */
export type TpmuPublicId =
  | { kind: 'rsa'; n: Uint8Array }
  | { kind: 'ecc'; x: Uint8Array; y: Uint8Array }
  | { kind: 'digest'; digest: Uint8Array }

/** TPMT_PUBLIC (Part 2, 12.2.4). `raw` = the exact TPMT_PUBLIC bytes decoded (what the Name hashes). */
export interface TpmtPublic {
  type: number
  nameAlg: number
  objectAttributes: number
  authPolicy: Uint8Array
  parameters: TpmuPublicParms
  unique: TpmuPublicId
  raw: Uint8Array
}

export const TpmtPublic: Codec<TpmtPublic> = {
  name: 'TPMT_PUBLIC',
  decode(r) {
    const start = r.offset
    const type = r.u16('type')
    const nameAlg = r.u16('nameAlg')
    const objectAttributes = r.u32('objectAttributes')
    const authPolicy = r.tpm2b('authPolicy', 64)
    let parameters: TpmuPublicParms
    let unique: TpmuPublicId
    switch (type) {
      case TpmAlg.Rsa: {
        parameters = r.scope('parameters', () => ({
          kind: 'rsa' as const,
          symmetric: TpmtSymDefObject.decode(r),
          scheme: decodeScheme(r, 'scheme'),
          keyBits: r.u16('keyBits'),
          exponent: r.u32('exponent'),
        }))
        unique = { kind: 'rsa', n: r.tpm2b('unique.rsa', 512) }
        break
      }
      case TpmAlg.Ecc: {
        parameters = r.scope('parameters', () => ({
          kind: 'ecc' as const,
          symmetric: TpmtSymDefObject.decode(r),
          scheme: decodeScheme(r, 'scheme'),
          curveId: r.u16('curveId'),
          kdf: decodeScheme(r, 'kdf'),
        }))
        unique = { kind: 'ecc', x: r.tpm2b('unique.x', 128), y: r.tpm2b('unique.y', 128) }
        break
      }
      case TpmAlg.KeyedHash: {
        parameters = r.scope('parameters', () => {
          const scheme = decodeScheme(r, 'scheme')
          const kdf = scheme.scheme === TpmAlg.Xor ? r.u16('kdf') : TpmAlg.Null
          return { kind: 'keyedhash' as const, scheme, kdf }
        })
        unique = { kind: 'digest', digest: r.tpm2b('unique.keyedHash', 64) }
        break
      }
      case TpmAlg.SymCipher: {
        parameters = { kind: 'symcipher', symmetric: r.scope('parameters', () => TpmtSymDefObject.decode(r)) }
        unique = { kind: 'digest', digest: r.tpm2b('unique.sym', 64) }
        break
      }
      default:
        return r.fail(`unsupported object type 0x${type.toString(16)}`, start)
    }
    return {
      type,
      nameAlg,
      objectAttributes,
      authPolicy,
      parameters,
      unique,
      raw: r.bytes.subarray(start, r.offset),
    }
  },
  encode(w, v) {
    w.u16(v.type).u16(v.nameAlg).u32(v.objectAttributes).tpm2b(v.authPolicy)
    const p = v.parameters
    switch (p.kind) {
      case 'rsa':
        TpmtSymDefObject.encode(w, p.symmetric)
        encodeScheme(w, p.scheme)
        w.u16(p.keyBits).u32(p.exponent)
        break
      case 'ecc':
        TpmtSymDefObject.encode(w, p.symmetric)
        encodeScheme(w, p.scheme)
        w.u16(p.curveId)
        encodeScheme(w, p.kdf)
        break
      case 'keyedhash':
        encodeScheme(w, p.scheme)
        if (p.scheme.scheme === TpmAlg.Xor) w.u16(p.kdf)
        break
      case 'symcipher':
        TpmtSymDefObject.encode(w, p.symmetric)
        break
    }
    const u = v.unique
    if (u.kind === 'rsa') w.tpm2b(u.n)
    else if (u.kind === 'ecc') w.tpm2b(u.x).tpm2b(u.y)
    else w.tpm2b(u.digest)
  },
}

/** TPM2B_PUBLIC: `u16 size` + TPMT_PUBLIC. The size must match the contents exactly. */
export const Tpm2bPublic: Codec<TpmtPublic> = {
  name: 'TPM2B_PUBLIC',
  decode(r) {
    return r.sized('publicArea', (inner) => TpmtPublic.decode(inner)).value
  },
  encode(w, v) {
    w.sized((inner) => TpmtPublic.encode(inner, v))
  },
}

/** Decodes TPM2B_PUBLIC bytes (with their size prefix), e.g. the registrar's `aik_tpm`/`ek_tpm`. */
export function decodeTpm2bPublic(bytes: Uint8Array): TpmtPublic {
  return decodeExact(bytes, 'TPM2B_PUBLIC', (r) => Tpm2bPublic.decode(r))
}

/** Decodes bare TPMT_PUBLIC bytes. */
export function decodeTpmtPublic(bytes: Uint8Array): TpmtPublic {
  return decodeExact(bytes, 'TPMT_PUBLIC', (r) => TpmtPublic.decode(r))
}

export function encodeTpmtPublic(v: Omit<TpmtPublic, 'raw'>): Uint8Array {
  return encodeWith((w) => TpmtPublic.encode(w, v as TpmtPublic))
}

export function encodeTpm2bPublic(v: Omit<TpmtPublic, 'raw'>): Uint8Array {
  return encodeWith((w) => Tpm2bPublic.encode(w, v as TpmtPublic))
}
