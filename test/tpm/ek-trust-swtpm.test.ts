import { execFileSync } from 'node:child_process'
import { createPrivateKey, createPublicKey, generateKeyPairSync, sign } from 'node:crypto'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createCa } from '../../src/crypto/ca.ts'
import {
  CertificateFormatError,
  type CertStore,
  certificateMatchesKey,
  loadCertStore,
  parseCertificateTolerant,
  verifyEkCertificate,
} from '../../src/crypto/ek-trust.ts'
import { isStrictlyParseable } from '../../src/crypto/x509-lenient.ts'

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
    { stdio: 'ignore', timeout: 60_000 },
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
    { stdio: 'ignore', timeout: 60_000 },
  )
  return {
    ekRsa: readFileSync(join(dir, 'certs', 'ek-rsa2048.crt')),
    ekEcc: readFileSync(join(dir, 'certs', 'ek-secp384r1.crt')),
    caDir,
  }
}

let sw: { ekRsa: Buffer; ekEcc: Buffer; caDir: string }
/** A store of a CA that did not sign swtpm's EK certificates. */
let otherStore: CertStore
beforeAll(async () => {
  sw = manufactureSwtpm(join(root, 'swtpm'))
  await createCa(join(root, 'other-ca'), { commonName: 'Unrelated CA' })
  otherStore = await loadCertStore(
    storeOf(join(root, 'other-store'), { 'ca.pem': readFileSync(join(root, 'other-ca', 'cacert.crt')) }),
  )
})

function storeOf(dir: string, files: Record<string, string | Buffer>): string {
  mkdirSync(dir, { recursive: true })
  for (const [name, data] of Object.entries(files)) writeFileSync(join(dir, name), data)
  return dir
}

describe('swtpm EK certificates', () => {
  it('verify through swtpm-localca intermediate to its root, and are refused by a store of another CA', async () => {
    const devStore = storeOf(join(root, 'dev-store'), {
      'swtpm-localca-rootca-cert.pem': readFileSync(join(sw.caDir, 'swtpm-localca-rootca-cert.pem')),
      'issuercert.pem': readFileSync(join(sw.caDir, 'issuercert.pem')),
    })
    for (const ek of [sw.ekRsa, sw.ekEcc]) {
      const ok = await verifyEkCertificate(ek, { storeDir: devStore })
      expect(ok.trusted, ok.reason).toBe(true)
      // the chain ends at the first store certificate (the intermediate is trusted there)
      expect(ok.chain.slice(1)).toEqual(['CN=swtpm-localca'])
      const refused = await verifyEkCertificate(ek, { store: otherStore })
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
