import {
  constants,
  createDecipheriv,
  createHmac,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  type KeyObject,
  privateDecrypt,
} from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { kdfa, kdfe } from '../../../src/crypto/kdf.ts'
import {
  CredentialError,
  decodeKeylimeCredentialBlob,
  encodeKeylimeCredentialBlob,
  makeCredential,
} from '../../../src/crypto/make-credential.ts'
import { objectName } from '../../../src/crypto/tpm-public.ts'
import {
  EK_TEMPLATE_ECC_P256,
  EK_TEMPLATE_RSA2048,
  encodeTpm2bPublic,
  TpmAlg,
} from '../../../src/tpm/index.ts'

const b = (s: string | undefined) => Buffer.from(s ?? '', 'base64url')
const rsaEk = generateKeyPairSync('rsa', { modulusLength: 2048 })
const eccEk = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
const rsaEkPublic = encodeTpm2bPublic({
  ...EK_TEMPLATE_RSA2048,
  unique: { kind: 'rsa', n: b(rsaEk.publicKey.export({ format: 'jwk' }).n) },
})
const eccJwk = eccEk.publicKey.export({ format: 'jwk' })
const eccEkPublic = encodeTpm2bPublic({
  ...EK_TEMPLATE_ECC_P256,
  unique: { kind: 'ecc', x: b(eccJwk.x), y: b(eccJwk.y) },
})
const akName = objectName(rsaEkPublic) // any valid Name works for the math

const u16 = (buf: Uint8Array, at: number) => ((buf[at] as number) << 8) | (buf[at + 1] as number)
const tpm2b = (buf: Uint8Array, at: number) => buf.subarray(at + 2, at + 2 + u16(buf, at))

/** TPM2_ActivateCredential done in software with the EK private key (TPM 2.0 Part 1, 24.5-24.6). */
function softwareActivate(
  kind: 'rsa' | 'ecc',
  ekPrivate: KeyObject,
  name: Uint8Array,
  cred: ReturnType<typeof makeCredential>,
) {
  const secret = tpm2b(cred.encryptedSecret, 0)
  let seed: Uint8Array
  if (kind === 'rsa') {
    seed = privateDecrypt(
      {
        key: ekPrivate,
        padding: constants.RSA_PKCS1_OAEP_PADDING,
        oaepHash: 'sha256',
        oaepLabel: Buffer.from('IDENTITY\0'),
      },
      secret,
    )
  } else {
    const x = tpm2b(secret, 0)
    const y = tpm2b(secret, 2 + x.length)
    const ephemeral = createPublicKey({
      key: {
        kty: 'EC',
        crv: 'P-256',
        x: Buffer.from(x).toString('base64url'),
        y: Buffer.from(y).toString('base64url'),
      },
      format: 'jwk',
    })
    const z = diffieHellman({ privateKey: ekPrivate, publicKey: ephemeral })
    seed = kdfe('sha256', z, 'IDENTITY', x, b(eccJwk.x), 256)
  }
  const idObject = tpm2b(cred.credentialBlob, 0)
  const integrity = tpm2b(idObject, 0)
  const encIdentity = idObject.subarray(2 + integrity.length)
  const hmacKey = kdfa('sha256', seed, 'INTEGRITY', undefined, undefined, 256)
  const expected = createHmac('sha256', hmacKey).update(encIdentity).update(name).digest()
  if (!expected.equals(integrity)) throw new Error('integrity check failed')
  const symKey = kdfa('sha256', seed, 'STORAGE', name, undefined, 128)
  const d = createDecipheriv('aes-128-cfb', symKey, Buffer.alloc(16))
  const plain = Buffer.concat([d.update(encIdentity), d.final()])
  return plain.subarray(2, 2 + u16(plain, 0))
}

describe('makeCredential', () => {
  const secret = Buffer.from('0123456789ABCDEFGHIJabcdefghij01')

  it.each([
    ['rsa', rsaEkPublic, rsaEk.privateKey],
    ['ecc', eccEkPublic, eccEk.privateKey],
  ] as const)(
    'wraps a secret only the %s EK holder can recover, bound to the AK name',
    (kind, ekPublic, ekPrivate) => {
      const cred = makeCredential({ ekPublic, akName, secret })
      expect(Buffer.from(softwareActivate(kind, ekPrivate, akName, cred))).toEqual(secret)
      const wrongName = Uint8Array.from(akName)
      wrongName[5] = (wrongName[5] as number) ^ 1
      expect(() => softwareActivate(kind, ekPrivate, wrongName, cred)).toThrow(/integrity/)
      // integrity = SHA-256 HMAC (32 bytes); encIdentity = u16 + 32-byte secret
      expect(cred.credentialBlob.length).toBe(2 + 2 + 32 + 2 + 32)
      expect(cred.encryptedSecret.length).toBe(kind === 'rsa' ? 2 + 256 : 2 + 2 + 32 + 2 + 32)
    },
  )

  it('is deterministic given the randomness (seed for RSA, ephemeral key for ECC)', () => {
    const seed = new Uint8Array(32).fill(7)
    const r1 = makeCredential({ ekPublic: rsaEkPublic, akName, secret, random: () => seed })
    const r2 = makeCredential({ ekPublic: rsaEkPublic, akName, secret, random: () => seed })
    expect(r1.credentialBlob).toEqual(r2.credentialBlob)
    expect(r1.encryptedSecret).not.toEqual(r2.encryptedSecret) // OAEP padding is randomised by OpenSSL
    const ephemeralPrivateKey = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey
    const e1 = makeCredential({ ekPublic: eccEkPublic, akName, secret, ephemeralPrivateKey })
    const e2 = makeCredential({ ekPublic: eccEkPublic, akName, secret, ephemeralPrivateKey })
    expect(e1).toEqual(e2)
  })

  it('refuses secrets longer than the name digest, non-decrypt EKs and non-CFB symmetric', () => {
    expect(() => makeCredential({ ekPublic: rsaEkPublic, akName, secret: new Uint8Array(33) })).toThrow(
      /at most 32 bytes/,
    )
    const t = EK_TEMPLATE_RSA2048
    const n = b(rsaEk.publicKey.export({ format: 'jwk' }).n)
    const cbc = encodeTpm2bPublic({
      ...t,
      parameters: {
        ...t.parameters,
        symmetric: { algorithm: TpmAlg.Aes, keyBits: 128, mode: TpmAlg.Cbc },
      } as typeof t.parameters,
      unique: { kind: 'rsa', n },
    })
    expect(() => makeCredential({ ekPublic: cbc, akName, secret })).toThrow(/CFB/)
    const signing = encodeTpm2bPublic({ ...t, objectAttributes: 0x50072, unique: { kind: 'rsa', n } })
    expect(() => makeCredential({ ekPublic: signing, akName, secret })).toThrow(CredentialError)
    expect(() => makeCredential({ ekPublic: new Uint8Array([0, 1, 2]), akName, secret })).toThrow(
      CredentialError,
    )
  })
})

describe('Keylime credential blob', () => {
  const cred = makeCredential({ ekPublic: rsaEkPublic, akName, secret: Buffer.alloc(32, 1) })

  it('is 0xBADCC0DE || 1 || TPM2B_ID_OBJECT || TPM2B_ENCRYPTED_SECRET in base64', () => {
    const blob = encodeKeylimeCredentialBlob(cred)
    const raw = Buffer.from(blob, 'base64')
    expect(raw.subarray(0, 8).toString('hex')).toBe('badcc0de00000001')
    expect(raw.length).toBe(8 + cred.credentialBlob.length + cred.encryptedSecret.length)
    expect(decodeKeylimeCredentialBlob(blob)).toEqual(cred)
  })

  it.each([
    ['bad base64', '*'],
    ['short', Buffer.from('badcc0de', 'hex').toString('base64')],
    ['wrong magic', Buffer.from('deadbeef0000000100000000', 'hex').toString('base64')],
    ['wrong version', Buffer.from('badcc0de0000000200000000', 'hex').toString('base64')],
    ['truncated', encodeKeylimeCredentialBlob(cred).slice(0, 40)],
    [
      'trailing bytes',
      Buffer.concat([Buffer.from(encodeKeylimeCredentialBlob(cred), 'base64'), Buffer.alloc(3)]).toString(
        'base64',
      ),
    ],
  ])('refuses %s', (_n, blob) => {
    expect(() => decodeKeylimeCredentialBlob(blob)).toThrow(CredentialError)
  })
})
