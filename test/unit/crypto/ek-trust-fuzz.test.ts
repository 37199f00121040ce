import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { CertificateFormatError, parseCertificateTolerant } from '../../../src/crypto/ek-trust.ts'
import { fixture } from '../../helpers/fixture.ts'

const der = Buffer.from(
  fixture('certs/tpm_cert_store/STM_RSA_01I.pem')
    .toString('latin1')
    .replace(/-----[^-]+-----/g, '')
    .replace(/\s+/g, ''),
  'base64',
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
