import { decodeExact } from '../marshal/reader.ts'
import { encodeWith } from '../marshal/writer.ts'
import type { Codec } from './codec.ts'

/** TPMS_NV_PUBLIC (Part 2, 13.5). */
export interface TpmsNvPublic {
  nvIndex: number
  nameAlg: number
  attributes: number
  authPolicy: Uint8Array
  dataSize: number
}

export const TpmsNvPublic: Codec<TpmsNvPublic> = {
  name: 'TPMS_NV_PUBLIC',
  decode(r) {
    return {
      nvIndex: r.u32('nvIndex'),
      nameAlg: r.u16('nameAlg'),
      attributes: r.u32('attributes'),
      authPolicy: r.tpm2b('authPolicy', 64),
      dataSize: r.u16('dataSize'),
    }
  },
  encode(w, v) {
    w.u32(v.nvIndex).u16(v.nameAlg).u32(v.attributes).tpm2b(v.authPolicy).u16(v.dataSize)
  },
}

/** TPM2B_NV_PUBLIC: sized TPMS_NV_PUBLIC. */
export function decodeTpm2bNvPublic(bytes: Uint8Array): TpmsNvPublic {
  return decodeExact(
    bytes,
    'TPM2B_NV_PUBLIC',
    (r) => r.sized('nvPublic', (i) => TpmsNvPublic.decode(i)).value,
  )
}

export function encodeTpm2bNvPublic(v: TpmsNvPublic): Uint8Array {
  return encodeWith((w) => w.sized((i) => TpmsNvPublic.encode(i, v)))
}

/** TPMS_ID_OBJECT (Part 2, 12.4.2): the contents of a TPM2B_ID_OBJECT (MakeCredential's `credentialBlob`). */
export interface TpmsIdObject {
  integrityHmac: Uint8Array
  encIdentity: Uint8Array
}

export const TpmsIdObject: Codec<TpmsIdObject> = {
  name: 'TPMS_ID_OBJECT',
  decode(r) {
    const integrityHmac = r.tpm2b('integrityHMAC', 64)
    return { integrityHmac, encIdentity: r.raw(r.remaining, 'encIdentity') }
  },
  encode(w, v) {
    w.tpm2b(v.integrityHmac).raw(v.encIdentity)
  },
}

/** Decodes a TPM2B_ID_OBJECT (size prefix + integrity HMAC + encrypted identity). */
export function decodeTpm2bIdObject(bytes: Uint8Array): TpmsIdObject {
  return decodeExact(
    bytes,
    'TPM2B_ID_OBJECT',
    (r) => r.sized('credential', (i) => TpmsIdObject.decode(i)).value,
  )
}

export function encodeTpm2bIdObject(v: TpmsIdObject): Uint8Array {
  return encodeWith((w) => w.sized((i) => TpmsIdObject.encode(i, v)))
}

/** Decodes a TPM2B_ENCRYPTED_SECRET and returns its contents (RSA-OAEP ciphertext or a TPMS_ECC_POINT). */
export function decodeTpm2bEncryptedSecret(bytes: Uint8Array): Uint8Array {
  return decodeExact(bytes, 'TPM2B_ENCRYPTED_SECRET', (r) => r.tpm2b('secret'))
}

export function encodeTpm2b(bytes: Uint8Array): Uint8Array {
  return encodeWith((w) => w.tpm2b(bytes))
}

/** Decodes any TPM2B (size + bytes, exactly consumed). */
export function decodeTpm2b(bytes: Uint8Array, what = 'TPM2B'): Uint8Array {
  return decodeExact(bytes, what, (r) => r.tpm2b('buffer'))
}

/** TPMS_CONTEXT (Part 2, 14.5): what ContextSave returns and ContextLoad takes. */
export interface TpmsContext {
  sequence: bigint
  savedHandle: number
  hierarchy: number
  contextBlob: Uint8Array
}

export const TpmsContext: Codec<TpmsContext> = {
  name: 'TPMS_CONTEXT',
  decode(r) {
    return {
      sequence: r.u64('sequence'),
      savedHandle: r.u32('savedHandle'),
      hierarchy: r.u32('hierarchy'),
      contextBlob: r.tpm2b('contextBlob'),
    }
  },
  encode(w, v) {
    w.u64(v.sequence).u32(v.savedHandle).u32(v.hierarchy).tpm2b(v.contextBlob)
  },
}

export function decodeTpmsContext(bytes: Uint8Array): TpmsContext {
  return decodeExact(bytes, 'TPMS_CONTEXT', (r) => TpmsContext.decode(r))
}

export function encodeTpmsContext(v: TpmsContext): Uint8Array {
  return encodeWith((w) => TpmsContext.encode(w, v))
}

/** TPMT_TK_CREATION / TPMT_TK_VERIFIED / TPMT_TK_AUTH (Part 2, 10.7): tag, hierarchy, digest. */
export interface TpmtTicket {
  tag: number
  hierarchy: number
  digest: Uint8Array
}

export const TpmtTicket: Codec<TpmtTicket> = {
  name: 'TPMT_TK',
  decode(r) {
    return { tag: r.u16('tag'), hierarchy: r.u32('hierarchy'), digest: r.tpm2b('digest', 64) }
  },
  encode(w, v) {
    w.u16(v.tag).u32(v.hierarchy).tpm2b(v.digest)
  },
}

/** TPM2B_SENSITIVE_CREATE (Part 2, 11.1.16): new object's auth value and (for sealed data) its data. */
export interface TpmsSensitiveCreate {
  userAuth: Uint8Array
  data: Uint8Array
}

export const TpmsSensitiveCreate: Codec<TpmsSensitiveCreate> = {
  name: 'TPMS_SENSITIVE_CREATE',
  decode(r) {
    return { userAuth: r.tpm2b('userAuth', 64), data: r.tpm2b('data') }
  },
  encode(w, v) {
    w.tpm2b(v.userAuth).tpm2b(v.data)
  },
}
