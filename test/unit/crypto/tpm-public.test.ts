import { createHash, generateKeyPairSync } from 'node:crypto'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  assertRestrictedSigningKey,
  objectName,
  publicAreaToKeyObject,
  publicKeyPemOf,
  readTpm2bPublic,
  TpmPublicError,
} from '../../../src/crypto/tpm-public.ts'
import {
  AK_ATTRIBUTES,
  akTemplate,
  EK_TEMPLATE_ECC_P256,
  EK_TEMPLATE_RSA2048,
  encodeTpm2bPublic,
  TpmaObject,
  TpmEccCurve,
} from '../../../src/tpm/index.ts'

const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 })
const rsaJwk = rsa.publicKey.export({ format: 'jwk' })
const ec384 = generateKeyPairSync('ec', { namedCurve: 'secp384r1' })
const ecJwk = ec384.publicKey.export({ format: 'jwk' })
const b = (s: string | undefined) => Buffer.from(s ?? '', 'base64url')

const rsaAk = encodeTpm2bPublic({ ...akTemplate('rsassa'), unique: { kind: 'rsa', n: b(rsaJwk.n) } })
const t = akTemplate('ecdsa')
const eccAk384 = encodeTpm2bPublic({
  ...t,
  parameters: { ...t.parameters, curveId: TpmEccCurve.NistP384 } as typeof t.parameters,
  unique: { kind: 'ecc', x: b(ecJwk.x), y: b(ecJwk.y) },
})

describe('TPM public areas', () => {
  it('turns RSA and ECC areas into the same keys node generated', () => {
    expect(publicKeyPemOf(rsaAk)).toBe(rsa.publicKey.export({ type: 'spki', format: 'pem' }))
    expect(publicAreaToKeyObject(eccAk384).equals(ec384.publicKey)).toBe(true)
  })

  it('computes the Name as nameAlg || SHA-256(TPMT_PUBLIC)', () => {
    const name = objectName(rsaAk)
    expect(Buffer.from(name.subarray(0, 2)).toString('hex')).toBe('000b')
    expect(Buffer.from(name.subarray(2))).toEqual(createHash('sha256').update(rsaAk.subarray(2)).digest())
  })

  it('accepts AKs and refuses EKs or keys missing restricted/sign/fixed attributes', () => {
    expect(assertRestrictedSigningKey(rsaAk).parameters.kind).toBe('rsa')
    expect(assertRestrictedSigningKey(eccAk384).parameters.kind).toBe('ecc')
    const ek = encodeTpm2bPublic({ ...EK_TEMPLATE_RSA2048, unique: { kind: 'rsa', n: b(rsaJwk.n) } })
    expect(() => assertRestrictedSigningKey(ek)).toThrow(/lacks attributes: sign/)
    const unrestricted = encodeTpm2bPublic({
      ...akTemplate('rsassa'),
      objectAttributes: AK_ATTRIBUTES & ~TpmaObject.Restricted & ~TpmaObject.FixedTpm,
      unique: { kind: 'rsa', n: b(rsaJwk.n) },
    })
    expect(() => assertRestrictedSigningKey(unrestricted)).toThrow(/restricted, fixedTPM/)
    const signDecrypt = encodeTpm2bPublic({
      ...akTemplate('rsassa'),
      objectAttributes: AK_ATTRIBUTES | TpmaObject.Decrypt,
      unique: { kind: 'rsa', n: b(rsaJwk.n) },
    })
    expect(() => assertRestrictedSigningKey(signDecrypt)).toThrow(/decryption/)
  })

  it('refuses template areas with empty or off-curve keys', () => {
    expect(() => publicAreaToKeyObject(encodeTpm2bPublic(akTemplate('rsassa')))).toThrow(/modulus is 0 bytes/)
    expect(() => publicAreaToKeyObject(encodeTpm2bPublic(EK_TEMPLATE_ECC_P256))).toThrow(TpmPublicError)
  })

  it('only raises TpmPublicError on random or mutated bytes', () => {
    const mutated = fc
      .array(fc.tuple(fc.nat(rsaAk.length - 1), fc.integer({ min: 0, max: 255 })), {
        minLength: 1,
        maxLength: 4,
      })
      .map((edits) => {
        const m = Uint8Array.from(rsaAk)
        for (const [i, v] of edits) m[i] = v
        return m
      })
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 400 }), mutated), (bytes) => {
        try {
          const area = readTpm2bPublic(bytes)
          objectName(area)
          publicAreaToKeyObject(area)
        } catch (e) {
          expect(e).toBeInstanceOf(TpmPublicError)
        }
      }),
      { numRuns: 500 },
    )
  })
})
