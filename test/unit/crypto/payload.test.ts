import {
  constants,
  createCipheriv,
  createDecipheriv,
  createHmac,
  generateKeyPairSync,
  privateDecrypt,
  publicEncrypt,
  randomBytes,
} from 'node:crypto'
import { describe, expect, it } from 'vitest'
import {
  authTag,
  combineUV,
  decryptPayload,
  encryptPayload,
  generateKuv,
  PayloadCryptoError,
  rsaOaepDecrypt,
  rsaOaepEncrypt,
  tryCombine,
} from '../../../src/crypto/payload.ts'

const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 })
const pubPem = rsa.publicKey.export({ type: 'spki', format: 'pem' }).toString()
const privPem = rsa.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
const UUID = 'd432fbb3-d2f1-4a97-9ef7-75bd81c00000'

describe('key split', () => {
  it('U xor V gives K back, and keys are fresh', () => {
    const a = generateKuv()
    const b = generateKuv()
    expect(a.k).toHaveLength(32)
    expect(combineUV(a.u, a.v).equals(a.k)).toBe(true)
    expect(a.k.equals(b.k)).toBe(false)
    expect(a.u.equals(a.k)).toBe(false)
  })
  it('refuses mismatched lengths with a typed error', () => {
    expect(() => combineUV(randomBytes(32), randomBytes(16))).toThrow(PayloadCryptoError)
  })
})

describe('payload interop (spec §E.1, written with raw node:crypto)', () => {
  it('decrypts a payload produced by the published algorithm', () => {
    const k = randomBytes(32)
    const iv = randomBytes(16)
    const c = createCipheriv('aes-256-gcm', k, iv)
    const ct = Buffer.concat([c.update('hello keylime'), c.final()])
    const blob = Buffer.concat([iv, ct, c.getAuthTag()]).toString('base64')
    expect(decryptPayload(k, blob).toString()).toBe('hello keylime')
  })
  it('produces a payload the published algorithm decrypts (AES-256 and AES-128)', () => {
    for (const len of [32, 16]) {
      const k = randomBytes(len)
      const plain = randomBytes(1000)
      const raw = Buffer.from(encryptPayload(k, plain), 'base64')
      expect(raw.length).toBe(16 + 1000 + 16)
      const d = createDecipheriv(len === 32 ? 'aes-256-gcm' : 'aes-128-gcm', k, raw.subarray(0, 16))
      d.setAuthTag(raw.subarray(raw.length - 16))
      const out = Buffer.concat([d.update(raw.subarray(16, raw.length - 16)), d.final()])
      expect(out.equals(plain)).toBe(true)
    }
  })
  it('rejects a wrong key, tampering, short input and bad base64 with PayloadCryptoError', () => {
    const k = randomBytes(32)
    const blob = encryptPayload(k, Buffer.from('secret'))
    expect(() => decryptPayload(randomBytes(32), blob)).toThrow(PayloadCryptoError)
    const raw = Buffer.from(blob, 'base64')
    raw[20] = (raw[20] as number) ^ 1
    expect(() => decryptPayload(k, raw)).toThrow(/authentication failed/)
    expect(() => decryptPayload(k, Buffer.alloc(10))).toThrow(/too short/)
    expect(() => decryptPayload(k, '!!not base64!!')).toThrow(/base64/)
    expect(() => decryptPayload(k, `${blob.replace(/\+/g, '-').replace(/\//g, '_')}-_`)).toThrow(/base64/)
    // unpadded and line-wrapped base64 are still the same payload
    const wrapped = blob.replace(/=+$/, '').replace(/(.{64})/g, '$1\n')
    expect(decryptPayload(k, wrapped).toString()).toBe('secret')
    expect(() => decryptPayload(randomBytes(24), blob)).toThrow(/16 or 32 bytes/)
  })
  it('auth tag is hex HMAC-SHA384(K, uuid)', () => {
    const k = randomBytes(32)
    expect(authTag(k, UUID)).toBe(createHmac('sha384', k).update(UUID).digest('hex'))
    expect(authTag(k, UUID)).toHaveLength(96)
  })
  it('RSA-OAEP SHA-1 interoperates with raw node:crypto both ways', () => {
    const u = randomBytes(32)
    const ours = rsaOaepEncrypt(pubPem, u)
    expect(
      privateDecrypt({ key: privPem, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, ours),
    ).toEqual(u)
    const theirs = publicEncrypt(
      { key: pubPem, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' },
      u,
    )
    expect(rsaOaepDecrypt(privPem, theirs)).toEqual(u)
    // SHA-256 OAEP must not be accepted as SHA-1 OAEP
    const sha256 = publicEncrypt(
      { key: pubPem, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' },
      u,
    )
    expect(() => rsaOaepDecrypt(privPem, sha256)).toThrow(PayloadCryptoError)
    expect(() => rsaOaepEncrypt('garbage', u)).toThrow(PayloadCryptoError)
  })
})

describe('tryCombine (spec §E.2)', () => {
  it('finds the matching pair among decoys and returns its payload', () => {
    const { k, u, v } = generateKuv()
    const payload = encryptPayload(k, Buffer.from('zip'))
    const decoy = generateKuv()
    const uList = [
      { u: decoy.u, authTag: authTag(decoy.k, UUID) },
      { u, authTag: authTag(k, UUID), payload },
    ]
    expect(tryCombine(uList, [randomBytes(32)], UUID)).toBeNull()
    const found = tryCombine(uList, [randomBytes(16), randomBytes(32), v], UUID)
    expect(found?.k.equals(k)).toBe(true)
    expect(found?.uEntry.payload).toBe(payload)
    expect(tryCombine(uList, [v], 'other-uuid')).toBeNull()
  })
})
