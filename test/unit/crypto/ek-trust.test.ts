import { execFileSync } from 'node:child_process'
import { createPrivateKey, createPublicKey, generateKeyPairSync, sign, webcrypto } from 'node:crypto'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  CertificateFormatError,
  type CertStore,
  certificateMatchesKey,
  loadCertStore,
  parseCertificateTolerant,
  verifyEkCertificate,
  verifyEkCertificateWithStore,
} from '../../../src/crypto/ek-trust.ts'
import { isStrictlyParseable } from '../../../src/crypto/x509-lenient.ts'
import { x509 } from '../../../src/crypto/x509-setup.ts'
import { fixturePath } from '../../helpers/fixture.ts'

const VENDOR_STORE = fixturePath('certs/tpm_cert_store')
const root = mkdtempSync(join(tmpdir(), 'kl-ek-'))
afterAll(() => rmSync(root, { recursive: true, force: true }))

/** Runs swtpm_setup with a private local CA (not /var/lib/swtpm-localca) and writes the EK certs out. */
function manufactureSwtpm(dir: string): { ekRsa: Buffer; ekEcc: Buffer; caDir: string } {
  const caDir = join(dir, 'localca')
  for (const d of ['state', 'localca', 'certs']) mkdirSync(join(dir, d), { recursive: true })
  writeFileSync(
    join(dir, 'localca.conf'),
    `statedir = ${caDir}\nsigningkey = ${caDir}/signkey.pem\nissuercert = ${caDir}/issuercert.pem\ncertserial = ${caDir}/certserial\n`,
  )
  writeFileSync(
    join(dir, 'setup.conf'),
    `create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = ${dir}/localca.conf\nactive_pcr_banks = sha256\n`,
  )
  execFileSync(
    'swtpm_setup',
    [
      '--tpm2',
      '--tpmstate',
      join(dir, 'state'),
      '--config',
      join(dir, 'setup.conf'),
      '--create-ek-cert',
      '--ecc',
    ],
    { stdio: 'ignore' },
  )
  execFileSync(
    'swtpm_setup',
    [
      '--tpm2',
      '--tpmstate',
      join(dir, 'state'),
      '--config',
      join(dir, 'setup.conf'),
      '--create-ek-cert',
      '--overwrite',
      '--write-ek-cert-files',
      join(dir, 'certs'),
    ],
    { stdio: 'ignore' },
  )
  return {
    ekRsa: readFileSync(join(dir, 'certs', 'ek-rsa2048.crt')),
    ekEcc: readFileSync(join(dir, 'certs', 'ek-secp384r1.crt')),
    caDir,
  }
}

let sw: { ekRsa: Buffer; ekEcc: Buffer; caDir: string }
let vendorStore: CertStore
beforeAll(async () => {
  sw = manufactureSwtpm(join(root, 'swtpm'))
  vendorStore = await loadCertStore(VENDOR_STORE)
})

function storeOf(dir: string, files: Record<string, string | Buffer>): string {
  mkdirSync(dir, { recursive: true })
  for (const [name, data] of Object.entries(files)) writeFileSync(join(dir, name), data)
  return dir
}

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

describe('swtpm EK certificates', () => {
  it('verify through swtpm-localca intermediate to its root, and are refused by the vendor store', async () => {
    const devStore = storeOf(join(root, 'dev-store'), {
      'swtpm-localca-rootca-cert.pem': readFileSync(join(sw.caDir, 'swtpm-localca-rootca-cert.pem')),
      'issuercert.pem': readFileSync(join(sw.caDir, 'issuercert.pem')),
    })
    for (const ek of [sw.ekRsa, sw.ekEcc]) {
      const ok = await verifyEkCertificate(ek, { storeDir: devStore })
      expect(ok.trusted, ok.reason).toBe(true)
      // the chain ends at the first store certificate (the intermediate is trusted there)
      expect(ok.chain.slice(1)).toEqual(['CN=swtpm-localca'])
      const refused = await verifyEkCertificate(ek, { store: vendorStore })
      expect(refused.trusted).toBe(false)
      expect(refused.reason).toContain('CN=swtpm-localca')
    }
    // the string form of the options (contract: verifyEkCertificate(cert, certStoreDir))
    expect((await verifyEkCertificate(sw.ekRsa, devStore)).trusted).toBe(true)
    // the certificate certifies the swtpm EK key and no other
    const rsaCert = parseCertificateTolerant(sw.ekRsa)
    expect(
      certificateMatchesKey(
        rsaCert,
        createPublicKey({ key: Buffer.from(rsaCert.spki), format: 'der', type: 'spki' }),
      ),
    ).toBe(true)
    expect(certificateMatchesKey(rsaCert, generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey)).toBe(
      false,
    )
    // root only in the store, intermediate supplied alongside the EK certificate (as from NV)
    const rootOnly = storeOf(join(root, 'root-only'), {
      'root.pem': readFileSync(join(sw.caDir, 'swtpm-localca-rootca-cert.pem')),
    })
    expect((await verifyEkCertificate(sw.ekRsa, { storeDir: rootOnly })).trusted).toBe(false)
    const withExtra = await verifyEkCertificate(sw.ekRsa.toString('base64'), {
      storeDir: rootOnly,
      extraCertificates: [readFileSync(join(sw.caDir, 'issuercert.pem'), 'utf8')],
    })
    expect(withExtra.trusted, withExtra.reason).toBe(true)
    expect(withExtra.chain.slice(1)).toEqual(['CN=swtpm-localca', 'CN=swtpm-localca-rootca'])
  })

  it('accepts a non-strict DER EK certificate (negative serial, long-form length, NV padding) signed by the CA', async () => {
    const good = parseCertificateTolerant(sw.ekRsa)
    const tbs = Buffer.from(good.tbs)
    // tbs = 30 82 LL LL | a0 03 02 01 02 | 02 <len> <serial> ...
    expect(tbs[0]).toBe(0x30)
    expect(tbs[1]).toBe(0x82)
    const serialAt = 4 + 5
    expect(tbs[serialAt]).toBe(0x02)
    const serialLen = tbs[serialAt + 1] as number
    const rest = tbs.subarray(serialAt + 2 + serialLen)
    const badSerial = Buffer.from([0x02, 0x81, 0x02, 0xff, 0x7b]) // long-form length 2, value -133
    const body = Buffer.concat([tbs.subarray(4, serialAt), badSerial, rest])
    const newTbs = Buffer.concat([Buffer.from([0x30, 0x82, body.length >> 8, body.length & 0xff]), body])
    const caKey = createPrivateKey(readFileSync(join(sw.caDir, 'signkey.pem')))
    const signature = sign('sha256', newTbs, caKey)
    const sigAlg = Buffer.from('300d06092a864886f70d01010b0500', 'hex')
    const bitString = Buffer.concat([
      Buffer.from([0x03, 0x82, (signature.length + 1) >> 8, (signature.length + 1) & 0xff, 0]),
      signature,
    ])
    const certBody = Buffer.concat([newTbs, sigAlg, bitString])
    const cert = Buffer.concat([
      Buffer.from([0x30, 0x82, certBody.length >> 8, certBody.length & 0xff]),
      certBody,
    ])
    const padded = Buffer.concat([cert, Buffer.alloc(64, 0xff)]) // NV index larger than the certificate

    const parsed = parseCertificateTolerant(padded)
    expect(parsed.serial).toBe(-133n)
    expect(parsed.irregularities.join('; ')).toMatch(
      /non-minimal length.*negative serial|negative serial.*non-minimal/s,
    )
    expect(parsed.irregularities.join('; ')).toContain('64 trailing byte(s)')
    // OpenSSL happens to accept these bytes too; stricter DER readers (e.g. Python cryptography) do not
    expect(isStrictlyParseable(padded)).toBe(true)
    const store = storeOf(join(root, 'dev-store-2'), {
      'root.pem': readFileSync(join(sw.caDir, 'swtpm-localca-rootca-cert.pem')),
      'issuer.pem': readFileSync(join(sw.caDir, 'issuercert.pem')),
    })
    const r = await verifyEkCertificate(padded, { storeDir: store })
    expect(r.trusted, r.reason).toBe(true)
    expect(r.warnings.join(' ')).toContain('negative serial')

    // the same bytes with one signature bit flipped must fail
    const forged = Buffer.from(cert)
    forged[forged.length - 5] = (forged[forged.length - 5] as number) ^ 0x01
    const bad = await verifyEkCertificate(forged, { storeDir: store })
    expect(bad.trusted).toBe(false)
    expect(bad.reason).toContain('does not verify')
  })
})

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

describe('parseCertificateTolerant input forms', () => {
  it('reads PEM, DER and base64 alike and rejects junk with CertificateFormatError', () => {
    const der = sw.ekRsa
    const pem = `-----BEGIN CERTIFICATE-----\n${der.toString('base64')}\n-----END CERTIFICATE-----\n`
    const a = parseCertificateTolerant(der)
    expect(parseCertificateTolerant(pem).serialHex).toBe(a.serialHex)
    expect(parseCertificateTolerant(der.toString('base64')).serialHex).toBe(a.serialHex)
    for (const junk of [
      '',
      'hello world',
      Buffer.from([0x30, 0x82, 0xff]),
      Buffer.from([0x30, 0x03, 0x02, 0x01, 0x01]),
      der.subarray(0, 200),
    ]) {
      expect(() => parseCertificateTolerant(junk)).toThrow(CertificateFormatError)
    }
  })
})
