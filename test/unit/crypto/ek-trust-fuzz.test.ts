import { webcrypto } from 'node:crypto'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { CertificateFormatError, parseCertificateTolerant } from '../../../src/crypto/ek-trust.ts'
import { x509 } from '../../../src/crypto/x509-setup.ts'

// A CA certificate like a TPM vendor intermediate (RSA-2048), made here: its mutations are the fuzz inputs.
const keys = (await webcrypto.subtle.generateKey(
  {
    name: 'RSASSA-PKCS1-v1_5',
    hash: 'SHA-256',
    publicExponent: new Uint8Array([1, 0, 1]),
    modulusLength: 2048,
  },
  true,
  ['sign', 'verify'],
)) as webcrypto.CryptoKeyPair
const der = Buffer.from(
  (
    await x509.X509CertificateGenerator.createSelfSigned({
      name: 'CN=Fuzz EK Intermediate, O=Keylime TS tests',
      serialNumber: '7b',
      notBefore: new Date('2020-01-01T00:00:00Z'),
      notAfter: new Date('2040-01-01T00:00:00Z'),
      keys,
      signingAlgorithm: { name: 'RSASSA-PKCS1-v1_5' },
      extensions: [new x509.BasicConstraintsExtension(true, 0, true)],
    })
  ).rawData,
)

describe('parseCertificateTolerant on mutated certificates', () => {
  it('returns a certificate or throws CertificateFormatError, nothing else', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat(der.length - 1), fc.integer({ min: 0, max: 255 })), {
          minLength: 1,
          maxLength: 8,
        }),
        fc.nat(der.length),
        (flips, cut) => {
          const bytes = Buffer.from(der.subarray(0, Math.max(cut, 1)))
          for (const [at, value] of flips) if (at < bytes.length) bytes[at] = value
          try {
            const cert = parseCertificateTolerant(bytes)
            void cert.publicKey // the lazy key import must not throw either
            expect(cert.tbs.length).toBeGreaterThan(0)
          } catch (err) {
            expect(err).toBeInstanceOf(CertificateFormatError)
          }
        },
      ),
      { numRuns: 2000 },
    )
  })
  it('arbitrary bytes and strings', () => {
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 300 }), fc.string({ maxLength: 300 })), (input) => {
        try {
          parseCertificateTolerant(input)
        } catch (err) {
          expect(err).toBeInstanceOf(CertificateFormatError)
        }
      }),
      { numRuns: 2000 },
    )
  })
})
