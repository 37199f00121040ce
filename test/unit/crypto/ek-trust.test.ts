import { webcrypto } from 'node:crypto'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { parseCertificateTolerant, verifyEkCertificate } from '../../../src/crypto/ek-trust.ts'
import { x509 } from '../../../src/crypto/x509-setup.ts'

const root = mkdtempSync(join(tmpdir(), 'kl-ek-'))
afterAll(() => rmSync(root, { recursive: true, force: true }))

function storeOf(dir: string, files: Record<string, string | Buffer>): string {
  mkdirSync(dir, { recursive: true })
  for (const [name, data] of Object.entries(files)) writeFileSync(join(dir, name), data)
  return dir
}

describe('validity and algorithms (generated chains)', () => {
  type Keys = webcrypto.CryptoKeyPair
  const rsaAlg = {
    name: 'RSASSA-PKCS1-v1_5',
    hash: 'SHA-256',
    publicExponent: new Uint8Array([1, 0, 1]),
    modulusLength: 2048,
  }
  const pssAlg = {
    name: 'RSA-PSS',
    hash: 'SHA-256',
    publicExponent: new Uint8Array([1, 0, 1]),
    modulusLength: 2048,
  }
  const gen = async (alg: object): Promise<Keys> =>
    (await webcrypto.subtle.generateKey(alg as RsaHashedKeyGenParams, true, ['sign', 'verify'])) as Keys
  type RsaHashedKeyGenParams = webcrypto.RsaHashedKeyGenParams
  const caExt = [
    new x509.BasicConstraintsExtension(true, undefined, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true),
  ]

  it('applies the chain validity model, strictExpiry, and verifies RSA-PSS links', async () => {
    const rootKeys = await gen(rsaAlg)
    const rootCert = await x509.X509CertificateGenerator.createSelfSigned({
      name: 'CN=Old Root',
      serialNumber: '01',
      notBefore: new Date('2000-01-01'),
      notAfter: new Date('2010-01-01'),
      keys: rootKeys as never,
      signingAlgorithm: { name: 'RSASSA-PKCS1-v1_5' },
      extensions: caExt,
    })
    const leafKeys = await gen(pssAlg)
    // the same root key imported for RSA-PSS signing
    const rootPssKey = await webcrypto.subtle.importKey(
      'pkcs8',
      await webcrypto.subtle.exportKey('pkcs8', rootKeys.privateKey),
      { name: 'RSA-PSS', hash: 'SHA-256' },
      false,
      ['sign'],
    )
    const mkLeaf = (notBefore: string, signer: 'pkcs1' | 'pss') =>
      x509.X509CertificateGenerator.create({
        subject: 'CN=ek',
        issuer: rootCert.subject,
        serialNumber: '02',
        notBefore: new Date(notBefore),
        notAfter: new Date('9999-12-31T23:59:59Z'),
        publicKey: leafKeys.publicKey as never,
        signingKey: (signer === 'pss' ? rootPssKey : rootKeys.privateKey) as never,
        signingAlgorithm:
          signer === 'pss' ? ({ name: 'RSA-PSS', saltLength: 32 } as never) : { name: 'RSASSA-PKCS1-v1_5' },
      })
    const dir = storeOf(join(root, 'old-root'), { 'root.pem': rootCert.toString('pem') })
    const now = new Date('2026-06-01')
    const issuedInTime = await mkLeaf('2005-01-01', 'pkcs1')
    const r = await verifyEkCertificate(issuedInTime.toString('pem'), { storeDir: dir, now })
    expect(r.trusted, r.reason).toBe(true)
    expect(r.warnings.join(' ')).toContain('CN=Old Root expired')
    const strict = await verifyEkCertificate(issuedInTime.toString('pem'), {
      storeDir: dir,
      now,
      strictExpiry: true,
    })
    expect(strict.trusted).toBe(false)
    expect(strict.reason).toContain('expired')
    const issuedLate = await mkLeaf('2015-01-01', 'pkcs1')
    const late = await verifyEkCertificate(issuedLate.toString('pem'), { storeDir: dir, now })
    expect(late.trusted).toBe(false)
    expect(late.reason).toContain('outside the validity period')
    const future = await verifyEkCertificate(issuedInTime.toString('pem'), {
      storeDir: dir,
      now: new Date('2004-01-01'),
    })
    expect(future.reason).toContain('not valid before')
    const pssLeaf = await mkLeaf('2005-01-01', 'pss')
    expect(parseCertificateTolerant(pssLeaf.toString('pem')).signatureAlgorithm.oid).toBe(
      '1.2.840.113549.1.1.10',
    )
    const pss = await verifyEkCertificate(pssLeaf.toString('pem'), { storeDir: dir, now })
    expect(pss.trusted, pss.reason).toBe(true)
  })

  it('refuses an issuer that is not a CA', async () => {
    const keys = await gen(rsaAlg)
    const notCa = await x509.X509CertificateGenerator.createSelfSigned({
      name: 'CN=Not A CA',
      serialNumber: '01',
      keys: keys as never,
      signingAlgorithm: { name: 'RSASSA-PKCS1-v1_5' },
      extensions: [new x509.BasicConstraintsExtension(false, undefined, true)],
    })
    const leaf = await x509.X509CertificateGenerator.create({
      subject: 'CN=ek',
      issuer: notCa.subject,
      serialNumber: '02',
      publicKey: keys.publicKey as never,
      signingKey: keys.privateKey as never,
      signingAlgorithm: { name: 'RSASSA-PKCS1-v1_5' },
    })
    const dir = storeOf(join(root, 'not-ca'), { 'x.pem': notCa.toString('pem') })
    const r = await verifyEkCertificate(leaf.toString('pem'), { storeDir: dir })
    expect(r.trusted).toBe(false)
    expect(r.reason).toContain('is not a CA')
  })
})
