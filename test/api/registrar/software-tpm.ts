/**
 * Software stand-ins for a TPM's EK and AK (real RSA keys in TPM2B_PUBLIC form) and a software
 * TPM2_ActivateCredential, so route tests can run the full register -> activate exchange without swtpm.
 */
import {
  constants,
  createDecipheriv,
  createHmac,
  generateKeyPairSync,
  type KeyObject,
  privateDecrypt,
  timingSafeEqual,
} from 'node:crypto'
import { kdfa } from '../../../src/crypto/kdf.ts'
import { decodeKeylimeCredentialBlob } from '../../../src/crypto/make-credential.ts'
import { objectName } from '../../../src/crypto/tpm-public.ts'
import { akTemplate, EK_TEMPLATE_RSA2048, encodeTpm2bPublic } from '../../../src/tpm/index.ts'

export interface SoftwareTpm {
  ekPrivate: KeyObject
  ekTpm: Uint8Array
  ekPublicPem: string
  akTpm: Uint8Array
}

const b64url = (s: string | undefined) => Buffer.from(s ?? '', 'base64url')

export function softwareTpm(): SoftwareTpm {
  const ek = generateKeyPairSync('rsa', { modulusLength: 2048 })
  const ak = generateKeyPairSync('rsa', { modulusLength: 2048 })
  const ekN = b64url(ek.publicKey.export({ format: 'jwk' }).n)
  const akN = b64url(ak.publicKey.export({ format: 'jwk' }).n)
  return {
    ekPrivate: ek.privateKey,
    ekTpm: encodeTpm2bPublic({ ...EK_TEMPLATE_RSA2048, unique: { kind: 'rsa', n: ekN } }),
    ekPublicPem: ek.publicKey.export({ type: 'spki', format: 'pem' }).toString(),
    akTpm: encodeTpm2bPublic({ ...akTemplate('rsassa'), unique: { kind: 'rsa', n: akN } }),
  }
}

/** TPM2_ActivateCredential for an RSA-2048 SHA-256 EK (TPM 2.0 Part 1, 24.4): returns the secret. */
export function activateCredentialInSoftware(tpm: SoftwareTpm, blobB64: string): Buffer {
  const { credentialBlob, encryptedSecret } = decodeKeylimeCredentialBlob(blobB64)
  const seed = privateDecrypt(
    {
      key: tpm.ekPrivate,
      padding: constants.RSA_PKCS1_OAEP_PADDING,
      oaepHash: 'sha256',
      oaepLabel: Buffer.from('IDENTITY\0', 'latin1'),
    },
    Buffer.from(encryptedSecret.subarray(2)),
  )
  const idObject = Buffer.from(credentialBlob.subarray(2))
  const integrityLen = idObject.readUInt16BE(0)
  const integrity = idObject.subarray(2, 2 + integrityLen)
  const encIdentity = idObject.subarray(2 + integrityLen)
  const akName = objectName(tpm.akTpm)
  const hmacKey = kdfa('sha256', seed, 'INTEGRITY', undefined, undefined, 256)
  const expected = createHmac('sha256', hmacKey).update(encIdentity).update(akName).digest()
  if (!timingSafeEqual(expected, integrity))
    throw new Error('credential integrity check failed (wrong AK name?)')
  const symKey = kdfa('sha256', seed, 'STORAGE', akName, undefined, 128)
  const decipher = createDecipheriv('aes-128-cfb', symKey, Buffer.alloc(16))
  const plain = Buffer.concat([decipher.update(encIdentity), decipher.final()])
  return plain.subarray(2, 2 + plain.readUInt16BE(0))
}

/** An EK certificate (DER) for `publicKeyPem`, signed by a throw-away CA. */
export async function ekCertificateFor(publicKeyPem: string): Promise<Buffer> {
  const { x509, subtle } = await import('../../../src/crypto/x509-setup.ts')
  const { createPublicKey } = await import('node:crypto')
  const alg = {
    name: 'RSASSA-PKCS1-v1_5',
    hash: 'SHA-256',
    publicExponent: new Uint8Array([1, 0, 1]),
    modulusLength: 2048,
  }
  const ca = await subtle.generateKey(alg, false, ['sign', 'verify'])
  const spki = createPublicKey(publicKeyPem).export({ type: 'spki', format: 'der' })
  const ekKey = await subtle.importKey('spki', spki, { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }, true, [
    'verify',
  ])
  type GenParams = Parameters<typeof x509.X509CertificateGenerator.create>[0]
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: '01',
    subject: 'CN=Test EK',
    issuer: 'CN=Test EK CA',
    notBefore: new Date(Date.now() - 86400000),
    notAfter: new Date(Date.now() + 86400000),
    signingAlgorithm: alg,
    publicKey: ekKey as unknown as GenParams['publicKey'],
    signingKey: ca.privateKey as unknown as GenParams['publicKey'],
  })
  return Buffer.from(cert.rawData)
}

/** A device CA (for IAK/IDevID certificates) that can issue certificates for any public key. */
export async function deviceCa(): Promise<{
  caDer: Buffer
  issue: (publicKeyPem: string, cn: string) => Promise<Buffer>
}> {
  const { x509, subtle } = await import('../../../src/crypto/x509-setup.ts')
  const { createPublicKey } = await import('node:crypto')
  type GenParams = Parameters<typeof x509.X509CertificateGenerator.create>[0]
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' }
  const keys = await subtle.generateKey(alg, true, ['sign', 'verify'])
  const ca = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: '01',
    name: 'CN=Test Device CA',
    notBefore: new Date(Date.now() - 86400000),
    notAfter: new Date(Date.now() + 86400000 * 30),
    signingAlgorithm: alg,
    keys: keys as unknown as Parameters<typeof x509.X509CertificateGenerator.createSelfSigned>[0]['keys'],
    extensions: [
      new x509.BasicConstraintsExtension(true, 1, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true),
    ],
  })
  let serial = 2
  return {
    caDer: Buffer.from(ca.rawData),
    issue: async (publicKeyPem, cn) => {
      const key = createPublicKey(publicKeyPem)
      const spki = key.export({ type: 'spki', format: 'der' })
      const importAlg =
        key.asymmetricKeyType === 'ec'
          ? { name: 'ECDSA', namedCurve: 'P-256' }
          : { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }
      const pub = await subtle.importKey('spki', spki, importAlg, true, ['verify'])
      const cert = await x509.X509CertificateGenerator.create({
        serialNumber: (serial++).toString(16).padStart(2, '0'),
        subject: `CN=${cn}`,
        issuer: ca.subject,
        notBefore: new Date(Date.now() - 3600000),
        notAfter: new Date(Date.now() + 86400000),
        signingAlgorithm: alg,
        publicKey: pub as unknown as GenParams['publicKey'],
        signingKey: keys.privateKey as unknown as GenParams['publicKey'],
      })
      return Buffer.from(cert.rawData)
    },
  }
}
