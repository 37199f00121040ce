import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { beforeAll, describe, expect, it } from 'vitest'
import {
  type CertStore,
  loadCertStore,
  parseCertificateTolerant,
  verifyEkCertificateWithStore,
} from '../../../src/crypto/ek-trust.ts'
import { fixturePath } from '../fixture.ts'

const VENDOR_STORE = fixturePath('certs/tpm_cert_store')
let vendorStore: CertStore
beforeAll(async () => {
  vendorStore = await loadCertStore(VENDOR_STORE)
})

describe('vendor certificate store', () => {
  it('reads every vendor certificate', () => {
    expect(vendorStore.warnings).toEqual([])
    expect(vendorStore.certificates.length).toBeGreaterThanOrEqual(50)
  })
  it('vendor intermediates chain to their roots (RSA PKCS#1 SHA-1/SHA-256, ECDSA P-256/P-384, 3 levels)', () => {
    const byFile = (name: string): Buffer => readFileSync(join(VENDOR_STORE, name))
    const rootsOnly: CertStore = {
      dir: 'roots',
      warnings: [],
      certificates: vendorStore.certificates.filter((c) => c.subject.key === c.issuer.key),
    }
    const now = new Date('2026-01-01T00:00:00Z')
    for (const [file, depth] of [
      ['INF_RSA_010I.pem', 2],
      ['INF_ECC_010I.pem', 2],
      ['INTEL_I.pem', 2],
      ['NUVO_2111.pem', 1], // a certificate pinned in the store is trusted as itself
    ] as const) {
      const r = verifyEkCertificateWithStore(byFile(file).toString(), rootsOnly, { now })
      expect(r.trusted, `${file}: ${r.reason}`).toBe(true)
      expect(r.chain).toHaveLength(depth)
    }
    // SHA-1 RSA link: Infineon intermediate 15 under the Infineon EK root (itself cross-signed by VeriSign)
    const ifxRoot = vendorStore.certificates.filter((c) => c.subject.text.endsWith('CN=IFX TPM EK Root CA'))
    const ifx = verifyEkCertificateWithStore(
      byFile('IFX15.pem').toString(),
      { dir: 'ifx', warnings: [], certificates: ifxRoot },
      { now },
    )
    expect(ifx.trusted, ifx.reason).toBe(true)
    expect(parseCertificateTolerant(byFile('IFX15.pem').toString()).signatureAlgorithm.oid).toBe(
      '1.2.840.113549.1.1.5',
    )
    // STM intermediate -> STM root (untrusted extra) -> GlobalSign root (anchor)
    const stm = verifyEkCertificateWithStore(byFile('STM_RSA_01I.pem').toString(), rootsOnly, {
      now,
      extraCertificates: [byFile('STM_RSA_RT.pem').toString()],
    })
    expect(stm.trusted, stm.reason).toBe(true)
    expect(stm.chain[2]).toContain('GlobalSign Trusted Platform Module Root CA')
    const noExtra = verifyEkCertificateWithStore(byFile('STM_RSA_01I.pem').toString(), rootsOnly, { now })
    expect(noExtra.trusted).toBe(false)
    expect(noExtra.reason).toContain('STM TPM EK Root CA')
  })
})
