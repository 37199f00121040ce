/**
 * IMA key ids (signature v2 `keyid`) from private and public keys: known answers from upstream's test keys, and
 * curves node cannot export as JWK.
 */
import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  X509Certificate,
} from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { computeKeyId } from '../../../src/evidence/ima/keyring.ts'
import { fixture } from '../fixture.ts'

describe('computeKeyId', () => {
  it('gives the same known id for the RSA-2048 test key, private or public', () => {
    const privateKey = createPrivateKey(fixture('certs/keylime-ima-rsa2048.pem'))
    const publicKey = createPublicKey(fixture('certs/keylime-ima-rsa2048pub.pem'))
    expect(computeKeyId(publicKey)).toBe(0xf3452d23)
    expect(computeKeyId(privateKey)).toBe(0xf3452d23)
  })

  it('gives the same known id for the secp256k1 test key, private or public', () => {
    const privateKey = createPrivateKey(fixture('certs/keylime-ima-secp256k1.pem'))
    expect(computeKeyId(privateKey)).toBe(0x531f4025)
    expect(computeKeyId(createPublicKey(privateKey))).toBe(0x531f4025)
  })

  it('matches the key id upstream listed for a P-256 certificate key', () => {
    const cert = new X509Certificate(fixture('certs/keylime-tests-static-test3-eckey-ecdsa.pem'))
    expect(computeKeyId(cert.publicKey)).toBe(1041517257)
  })

  it.each([
    ['rsa', { modulusLength: 2048 }],
    ['ec', { namedCurve: 'prime256v1' }],
    ['ec', { namedCurve: 'secp384r1' }],
    ['ec', { namedCurve: 'brainpoolP256r1' }],
  ] as const)('%s %o: a private key and its public key share one id', (type, options) => {
    const { privateKey, publicKey } = generateKeyPairSync(type as 'rsa', options as { modulusLength: number })
    expect(computeKeyId(privateKey)).toBe(computeKeyId(publicKey))
  })

  it('hashes the uncompressed point of a brainpool key (no JWK export for that curve)', () => {
    const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'brainpoolP256r1' })
    // For a 256-bit curve the SPKI ends with the 65-byte point 04 || X || Y.
    const point = publicKey.export({ type: 'spki', format: 'der' }).subarray(-65)
    expect(point[0]).toBe(4)
    expect(computeKeyId(publicKey)).toBe(createHash('sha1').update(point).digest().readUInt32BE(16))
  })

  it('refuses keys IMA signatures cannot use', () => {
    const { privateKey } = generateKeyPairSync('ed25519')
    expect(() => computeKeyId(privateKey)).toThrow(/unsupported key type ed25519/)
  })
})
