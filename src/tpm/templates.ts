/**
 * Key templates as constant values: the TCG default EK templates (EK Credential Profile 2.0, B.3.3 "template L-1"
 * RSA-2048 and B.3.4 "template L-2" ECC NIST P-256, low range) and the restricted signing AK Keylime agents create.
 */
import { TpmAlg, TpmaObject, TpmEccCurve } from './constants.ts'
import type { TpmtPublic } from './types/public.ts'

/** PolicySecret(TPM_RH_ENDORSEMENT) policy digest (SHA-256) shared by the low-range EK templates. */
export const EK_POLICY_SHA256 = Uint8Array.from(
  Buffer.from('837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa', 'hex'),
)

const EK_ATTRIBUTES =
  TpmaObject.FixedTpm |
  TpmaObject.FixedParent |
  TpmaObject.SensitiveDataOrigin |
  TpmaObject.AdminWithPolicy |
  TpmaObject.Restricted |
  TpmaObject.Decrypt

const AES_128_CFB = { algorithm: TpmAlg.Aes, keyBits: 128, mode: TpmAlg.Cfb }
const NULL_SYM = { algorithm: TpmAlg.Null, keyBits: 0, mode: TpmAlg.Null }
const NULL_SCHEME = { scheme: TpmAlg.Null, hashAlg: TpmAlg.Null, count: 0 }

export type TpmtPublicTemplate = Omit<TpmtPublic, 'raw'>

/** TCG EK template L-1: RSA 2048, AES-128-CFB, SHA-256, unique = 256 zero bytes. */
export const EK_TEMPLATE_RSA2048: TpmtPublicTemplate = Object.freeze<TpmtPublicTemplate>({
  type: TpmAlg.Rsa,
  nameAlg: TpmAlg.Sha256,
  objectAttributes: EK_ATTRIBUTES,
  authPolicy: EK_POLICY_SHA256,
  parameters: { kind: 'rsa', symmetric: AES_128_CFB, scheme: NULL_SCHEME, keyBits: 2048, exponent: 0 },
  unique: { kind: 'rsa', n: new Uint8Array(256) },
})

/** TCG EK template L-2: ECC NIST P-256, AES-128-CFB, SHA-256, unique = two 32-byte zero coordinates. */
export const EK_TEMPLATE_ECC_P256: TpmtPublicTemplate = Object.freeze<TpmtPublicTemplate>({
  type: TpmAlg.Ecc,
  nameAlg: TpmAlg.Sha256,
  objectAttributes: EK_ATTRIBUTES,
  authPolicy: EK_POLICY_SHA256,
  parameters: {
    kind: 'ecc',
    symmetric: AES_128_CFB,
    scheme: NULL_SCHEME,
    curveId: TpmEccCurve.NistP256,
    kdf: NULL_SCHEME,
  },
  unique: { kind: 'ecc', x: new Uint8Array(32), y: new Uint8Array(32) },
})

/** Attributes of a Keylime AK: restricted signing, created in the TPM, usable with its (empty) auth value. */
export const AK_ATTRIBUTES =
  TpmaObject.FixedTpm |
  TpmaObject.FixedParent |
  TpmaObject.SensitiveDataOrigin |
  TpmaObject.UserWithAuth |
  TpmaObject.Restricted |
  TpmaObject.Sign

/** A restricted signing AK template: RSA-2048 with RSASSA, or ECC P-256 with ECDSA, over `hashAlg`. */
export function akTemplate(signAlg: 'rsassa' | 'ecdsa', hashAlg: number = TpmAlg.Sha256): TpmtPublicTemplate {
  if (signAlg === 'rsassa') {
    return {
      type: TpmAlg.Rsa,
      nameAlg: TpmAlg.Sha256,
      objectAttributes: AK_ATTRIBUTES,
      authPolicy: new Uint8Array(0),
      parameters: {
        kind: 'rsa',
        symmetric: NULL_SYM,
        scheme: { scheme: TpmAlg.RsaSsa, hashAlg, count: 0 },
        keyBits: 2048,
        exponent: 0,
      },
      unique: { kind: 'rsa', n: new Uint8Array(0) },
    }
  }
  return {
    type: TpmAlg.Ecc,
    nameAlg: TpmAlg.Sha256,
    objectAttributes: AK_ATTRIBUTES,
    authPolicy: new Uint8Array(0),
    parameters: {
      kind: 'ecc',
      symmetric: NULL_SYM,
      scheme: { scheme: TpmAlg.Ecdsa, hashAlg, count: 0 },
      curveId: TpmEccCurve.NistP256,
      kdf: NULL_SCHEME,
    },
    unique: { kind: 'ecc', x: new Uint8Array(0), y: new Uint8Array(0) },
  }
}
