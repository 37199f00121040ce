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

/**
 * Device identity key templates of the TCG "TPM 2.0 Keys for Device Identity and Attestation" (section 7.3.4): H-1
 * RSA 2048 / SHA-256, H-2 ECC NIST P-256 / SHA-256, H-3 ECC NIST P-384 / SHA-384, H-4 ECC NIST P-521 / SHA-512.
 * Both keys are primaries of the endorsement hierarchy, so the same template always yields the same key on one TPM
 * and a manufacturer's IAK/IDevID certificate stays valid without storing the keys.
 */
export type DeviceIdTemplateName = 'H-1' | 'H-2' | 'H-3' | 'H-4'
export const DEVICE_ID_TEMPLATES: readonly DeviceIdTemplateName[] = ['H-1', 'H-2', 'H-3', 'H-4']

/** The spec's authPolicy digests (PolicyOR of its certify / delete / change-auth branches) per nameAlg. */
const IAK_POLICY: Record<number, string> = {
  [TpmAlg.Sha256]: '5437182326e414fca797d5f174615a1641f61255797c3a2b22c21d120b2d1e07',
  [TpmAlg.Sha384]:
    '129d94ebf84556652c6eef43bbb757512ac87e52be7b349ca6ce4d826f749fcf672f51716c5cbb605f313bf345aab312',
  [TpmAlg.Sha512]:
    '8060d1fb31716a29e48a6e5fece088bcfc1b278fc162255e81c3eca3544cd44af94410c3715d561cccd9e39a6cb2646d43535bb54ea88710deb5f7836bd9b586',
}
const IDEVID_POLICY: Record<number, string> = {
  [TpmAlg.Sha256]: 'ad6b3a2284fd698a0710bf5cc1b9bdf15e2532e3f601fa4b93a6a8fa8de579ea',
  [TpmAlg.Sha384]:
    '4db1aa836d0b5615df6ee53a40ef70c61c217f4303d44695925972bc927006cfa5cbdf6dc18c4dbe329b2f1542c3dd33',
  [TpmAlg.Sha512]:
    '7dd7500fd6c1b94f97a6af910da147301ef28f662fee06f225a4ccadda3b4e6b38e66b2f3ad5dee1a0503cd2daedb1e68cfe4f84b03a8cd22bb6a976f071a72f',
}

const DEVICE_ID_PARAMS: Record<DeviceIdTemplateName, { nameAlg: number; rsaBits?: number; curve?: number }> =
  {
    'H-1': { nameAlg: TpmAlg.Sha256, rsaBits: 2048 },
    'H-2': { nameAlg: TpmAlg.Sha256, curve: TpmEccCurve.NistP256 },
    'H-3': { nameAlg: TpmAlg.Sha384, curve: TpmEccCurve.NistP384 },
    'H-4': { nameAlg: TpmAlg.Sha512, curve: TpmEccCurve.NistP521 },
  }

/**
 * The IAK (restricted signing: it only signs TPM-generated structures such as the certification of an AK) or the
 * IDevID (unrestricted signing) template. The unique field holds the ASCII key name, as the spec asks, so both keys
 * differ from each other and from the EK.
 */
export function deviceIdTemplate(kind: 'iak' | 'idevid', name: DeviceIdTemplateName): TpmtPublicTemplate {
  const p = DEVICE_ID_PARAMS[name]
  if (!p) throw new TypeError(`unknown device identity template '${name}'`)
  const restricted = kind === 'iak'
  const policy = (restricted ? IAK_POLICY : IDEVID_POLICY)[p.nameAlg] as string
  const unique = Buffer.from(restricted ? 'IAK' : 'IDEVID', 'ascii')
  const objectAttributes =
    TpmaObject.FixedTpm |
    TpmaObject.FixedParent |
    TpmaObject.SensitiveDataOrigin |
    TpmaObject.UserWithAuth |
    TpmaObject.AdminWithPolicy |
    TpmaObject.Sign |
    (restricted ? TpmaObject.Restricted : 0)
  const authPolicy = Uint8Array.from(Buffer.from(policy, 'hex'))
  if (p.rsaBits !== undefined) {
    return {
      type: TpmAlg.Rsa,
      nameAlg: p.nameAlg,
      objectAttributes,
      authPolicy,
      parameters: {
        kind: 'rsa',
        symmetric: NULL_SYM,
        scheme: restricted ? { scheme: TpmAlg.RsaPss, hashAlg: p.nameAlg, count: 0 } : NULL_SCHEME,
        keyBits: p.rsaBits,
        exponent: 0,
      },
      unique: { kind: 'rsa', n: Uint8Array.from(unique) },
    }
  }
  return {
    type: TpmAlg.Ecc,
    nameAlg: p.nameAlg,
    objectAttributes,
    authPolicy,
    parameters: {
      kind: 'ecc',
      symmetric: NULL_SYM,
      scheme: { scheme: TpmAlg.Ecdsa, hashAlg: p.nameAlg, count: 0 },
      curveId: p.curve as number,
      kdf: NULL_SCHEME,
    },
    unique: { kind: 'ecc', x: Uint8Array.from(unique), y: Uint8Array.from(unique) },
  }
}
