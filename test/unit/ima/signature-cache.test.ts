/**
 * IMA signature outcomes are cached process-wide (a fleet measures the same signed files). The cache must never
 * change an answer: a bad signature stays bad after a good one was seen, and a good signature does not carry over
 * to another key that happens to share the key id.
 */
import { createHash, generateKeyPairSync, type KeyObject, sign } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { imaSignatureField } from '../../../src/devtools/ima-writer.ts'
import { computeKeyId, ImaKeyring, verifyImaSignature } from '../../../src/evidence/ima/index.ts'

function ring(...keys: [KeyObject, number][]): ImaKeyring {
  const r = new ImaKeyring()
  for (const [key, id] of keys) r.add(key, id)
  return r
}

describe.each([
  ['RSA-2048', () => generateKeyPairSync('rsa', { modulusLength: 2048 })],
  ['ECDSA P-256', () => generateKeyPairSync('ec', { namedCurve: 'P-256' })],
])('IMA signature outcome cache (%s)', (_name, makeKeys) => {
  const signer = makeKeys()
  const other = makeKeys()
  const content = Buffer.from(`file ${_name}`)
  const digest = createHash('sha256').update(content).digest()
  const keyId = computeKeyId(signer.publicKey)
  const good = imaSignatureField(keyId, sign('sha256', content, signer.privateKey))
  const forged = imaSignatureField(keyId, sign('sha256', content, other.privateKey))

  it('answers the same on repeated checks, and a seen good signature does not make a forged one pass', () => {
    const keys = [ring([signer.publicKey, keyId])]
    for (let round = 0; round < 3; round++) {
      expect(verifyImaSignature(good, 'sha256', digest, keys)).toBe(true)
      expect(verifyImaSignature(forged, 'sha256', digest, keys)).toBe(false)
      const otherDigest = createHash('sha256').update('another file').digest()
      expect(verifyImaSignature(good, 'sha256', otherDigest, keys)).toBe(false)
    }
  })

  it('keys the outcome on the key itself, not on the key id', () => {
    // Another key registered under the signer's key id: the signature must not verify with it, cached or not.
    expect(verifyImaSignature(good, 'sha256', digest, [ring([signer.publicKey, keyId])])).toBe(true)
    expect(verifyImaSignature(good, 'sha256', digest, [ring([other.publicKey, keyId])])).toBe(false)
    // Both under one id: the right one is found.
    expect(
      verifyImaSignature(good, 'sha256', digest, [ring([other.publicKey, keyId], [signer.publicKey, keyId])]),
    ).toBe(true)
  })

  it('recognises the key again when the keyring is rebuilt from JSON (new key objects, as learned keyrings are)', () => {
    const stored = ring([signer.publicKey, keyId]).toJSON()
    for (let i = 0; i < 3; i++) {
      expect(verifyImaSignature(good, 'sha256', digest, [ImaKeyring.fromJSON(stored)])).toBe(true)
      expect(verifyImaSignature(forged, 'sha256', digest, [ImaKeyring.fromJSON(stored)])).toBe(false)
    }
  })
})

describe('ImaKeyring.add', () => {
  it('keeps only the public half of a private key, under the same key id', () => {
    const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
    const fromPrivate = new ImaKeyring()
    fromPrivate.add(privateKey)
    const fromPublic = new ImaKeyring()
    fromPublic.add(publicKey)
    expect(fromPrivate.toJSON()).toEqual(fromPublic.toJSON())
    expect(fromPrivate.find(computeKeyId(publicKey))[0]?.type).toBe('public')
  })
})
