/**
 * Signing runtime policies (`policy sign runtime`) with upstream's two DSSE backends: `ecdsa` (key id = SHA-256 of the
 * public key PEM) and `x509` (key id = the base64 of a certificate for the signing key, so a verifier given no key
 * can still check integrity, and one given the certificate checks authenticity).
 */
import { createPrivateKey, generateKeyPairSync, type KeyObject, webcrypto } from 'node:crypto'
import { type CryptoKeyPair, x509 } from '../crypto/x509-setup.ts'
import { type DsseEnvelope, parseRuntimePolicy, signDsseEnvelope } from '../evidence/ima/index.ts'

export type DsseBackend = 'ecdsa' | 'x509'
export const DSSE_BACKENDS: readonly DsseBackend[] = ['ecdsa', 'x509']

/** A new P-256 key, as upstream's backends create when no key is given. */
export function newSigningKey(): KeyObject {
  return generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey
}

/** The key as upstream writes it (PEM "EC PRIVATE KEY"). */
export function signingKeyPem(key: KeyObject): string {
  return key.export({ type: 'sec1', format: 'pem' }).toString()
}

export function readSigningKey(pem: string): KeyObject {
  const key = createPrivateKey(pem)
  if (key.asymmetricKeyType !== 'ec') throw new Error('only elliptic curve keys can sign runtime policies')
  return key
}

/** A self-signed certificate for the signing key (upstream's x509 backend: 30 days, not a CA). */
export async function signerCertificate(key: KeyObject, now: Date, days = 30): Promise<string> {
  const subtle = webcrypto.subtle
  const pkcs8 = key.export({ type: 'pkcs8', format: 'der' })
  const algorithm = { name: 'ECDSA', namedCurve: 'P-256' }
  const privateKey = await subtle.importKey('pkcs8', pkcs8, algorithm, true, ['sign'])
  const jwk = key.export({ format: 'jwk' })
  const publicKey = await subtle.importKey(
    'jwk',
    { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y },
    algorithm,
    true,
    ['verify'],
  )
  const day = 86_400_000
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: Buffer.from(webcrypto.getRandomValues(new Uint8Array(16)))
      .toString('hex')
      .replace(/^[89a-f]/, '1'),
    name: 'CN=keylime runtime policy signer',
    notBefore: new Date(now.getTime() - day),
    notAfter: new Date(now.getTime() + days * day),
    keys: { privateKey, publicKey } as CryptoKeyPair,
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
    extensions: [
      new x509.SubjectAlternativeNameExtension([{ type: 'dns', value: 'keylime-policy-signer' }]),
      new x509.BasicConstraintsExtension(false, undefined, true),
    ],
  })
  return `${cert.toString('pem')}\n`
}

/**
 * The DSSE envelope of a runtime policy; the policy is checked first, so nothing the verifier would reject gets
 * signed. `certificatePem` selects the x509 backend.
 */
export function signRuntimePolicy(policy: Uint8Array, key: KeyObject, certificatePem?: string): DsseEnvelope {
  parseRuntimePolicy(policy)
  const keyid = certificatePem === undefined ? undefined : Buffer.from(certificatePem).toString('base64')
  return signDsseEnvelope(policy, key, undefined, keyid)
}
