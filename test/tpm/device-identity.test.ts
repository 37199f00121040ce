/**
 * Device identity on swtpm: IAK/IDevID primaries from the TCG templates H-1..H-3 (the H-1 IAK cross-checked with
 * tpm2_createprimary from the same template), TPM2_Certify of an AK by the IAK verified with node:crypto, test-CA
 * certificates in files and NV, and an EK CA chain written to and read back from the chain NV range.
 */
import { execFile } from 'node:child_process'
import { createHash, X509Certificate } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { endianness, tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { verifyEkCertificateWithStore } from '../../src/crypto/ek-trust.ts'
import { objectName, publicAreaToKeyObject, readTpm2bPublic } from '../../src/crypto/tpm-public.ts'
import { parseCertificateDer } from '../../src/crypto/x509-lenient.ts'
import {
  createTestCa,
  provisionDeviceIdentity,
  provisionEkCaChain,
  type TestCa,
} from '../../src/devtools/device-identity.ts'
import { verifyTpmSignature } from '../../src/registrar/iak.ts'
import { TpmaObject } from '../../src/tpm/constants.ts'
import {
  certifyObject,
  createAk,
  createDeviceIdKey,
  createEk,
  flushContext,
  readEkCaChain,
  readEkCertificate,
  readNvCertificate,
} from '../../src/tpm/keylime-client.ts'
import { deviceIdTemplate } from '../../src/tpm/templates.ts'
import { Tpm } from '../../src/tpm/tpm.ts'
import { decodeTpmsAttest } from '../../src/tpm/types/attest.ts'
import { decodeTpmtSignature } from '../../src/tpm/types/signature.ts'
import { type SwtpmInstance, startSwtpm } from '../helpers/swtpm.ts'

const run = promisify(execFile)
let dir: string
let swtpm: SwtpmInstance
let tpm: Tpm
let ca: TestCa

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kl-devid-'))
  swtpm = await startSwtpm({ ekCertificates: false })
  tpm = await Tpm.open(swtpm.transport)
  ca = await createTestCa('test device identity CA')
})

afterAll(async () => {
  await tpm?.close()
  await swtpm?.stop()
  rmSync(dir, { recursive: true, force: true })
})

describe('IAK and IDevID', () => {
  it.each(['H-1', 'H-2', 'H-3'] as const)(
    '%s: deterministic primaries, IAK restricted, IDevID not',
    async (t) => {
      const iak = await createDeviceIdKey(tpm, 'iak', t)
      const again = await createDeviceIdKey(tpm, 'iak', t)
      const idevid = await createDeviceIdKey(tpm, 'idevid', t)
      for (const h of [iak.handle, again.handle, idevid.handle]) await flushContext(tpm, h)
      expect(Buffer.from(again.publicArea)).toEqual(Buffer.from(iak.publicArea))
      expect(Buffer.from(idevid.publicArea)).not.toEqual(Buffer.from(iak.publicArea))
      expect(readTpm2bPublic(iak.publicArea).objectAttributes & TpmaObject.Restricted).not.toBe(0)
      expect(readTpm2bPublic(idevid.publicArea).objectAttributes & TpmaObject.Restricted).toBe(0)
      const key = publicAreaToKeyObject(iak.publicArea)
      expect(key.asymmetricKeyType).toBe(t === 'H-1' ? 'rsa' : 'ec')
    },
  )

  it('H-1 IAK equals what tpm2_createprimary makes from the same template', async () => {
    const iak = await createDeviceIdKey(tpm, 'iak', 'H-1')
    await flushContext(tpm, iak.handle)
    const template = deviceIdTemplate('iak', 'H-1')
    writeFileSync(join(dir, 'policy.bin'), template.authPolicy)
    // tpm2-tools loads the file into its in-memory TPM2B_PUBLIC_KEY_RSA: a host-order size, then the bytes
    const size = Buffer.alloc(2)
    if (endianness() === 'LE') size.writeUInt16LE(3)
    else size.writeUInt16BE(3)
    writeFileSync(join(dir, 'unique.bin'), Buffer.concat([size, Buffer.from('IAK')]))
    const env = { ...process.env, TPM2TOOLS_TCTI: swtpm.tcti }
    const tool = (name: string, ...args: string[]) => run(`tpm2_${name}`, args, { cwd: dir, env })
    await tool(
      'createprimary',
      ...[
        '-C',
        'e',
        '-g',
        'sha256',
        '-G',
        'rsa2048:rsapss-sha256:null',
        '-L',
        'policy.bin',
        '-u',
        'unique.bin',
      ],
      ...['-a', 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|adminwithpolicy|restricted|sign'],
      ...['-c', 'iak.ctx'],
    )
    await tool('readpublic', '-c', 'iak.ctx', '-f', 'pem', '-o', 'iak.pem')
    await tool('flushcontext', '-t')
    const theirs = readFileSync(join(dir, 'iak.pem'), 'utf8')
    const ours = publicAreaToKeyObject(iak.publicArea).export({ type: 'spki', format: 'pem' })
    expect(ours).toBe(theirs)
  })

  it('the IAK certifies an AK: attest names the AK, carries the qualifying data, verifies with the IAK key', async () => {
    const ek = await createEk(tpm, 'rsa')
    const ak = await createAk(tpm, ek.handle, { hashAlg: 'sha256', signAlg: 'rsassa' })
    const iak = await createDeviceIdKey(tpm, 'iak', 'H-2')
    const qualifying = createHash('sha256').update('agent-uuid').digest()
    const { attest, signature } = await certifyObject(tpm, {
      objectHandle: ak.handle,
      signHandle: iak.handle,
      qualifyingData: qualifying,
    })
    for (const h of [iak.handle, ak.handle, ek.handle]) await flushContext(tpm, h)
    const decoded = decodeTpmsAttest(attest)
    expect(decoded.attested.kind).toBe('certify')
    if (decoded.attested.kind !== 'certify') return
    expect(Buffer.from(decoded.attested.name)).toEqual(Buffer.from(objectName(ak.publicArea)))
    expect(Buffer.from(decoded.extraData)).toEqual(qualifying)
    const iakKey = publicAreaToKeyObject(iak.publicArea)
    expect(verifyTpmSignature(iakKey, attest, decodeTpmtSignature(signature))).toBe(true)
    const tampered = Buffer.from(attest)
    tampered.writeUInt8(tampered.readUInt8(tampered.length - 1) ^ 1, tampered.length - 1)
    expect(verifyTpmSignature(iakKey, tampered, decodeTpmtSignature(signature))).toBe(false)
  })

  it('the devtools helper certifies both keys into files and NV, chaining to the test CA', async () => {
    const nv = { iak: 0x01c90000, idevid: 0x01c90010 }
    const id = await provisionDeviceIdentity({ tpm: swtpm.transport, ca, template: 'H-1', outDir: dir, nv })
    const store = {
      dir: '',
      certificates: [parseCertificateDer(new X509Certificate(ca.certPem).raw)],
      warnings: [],
    }
    for (const [pem, pub, index] of [
      [id.iakCertPem, id.iakPublic, nv.iak],
      [id.idevidCertPem, id.idevidPublic, nv.idevid],
    ] as const) {
      const cert = new X509Certificate(pem)
      expect(cert.publicKey.equals(publicAreaToKeyObject(pub))).toBe(true)
      expect(Buffer.from(await readNvCertificate(tpm, index))).toEqual(cert.raw)
      expect(verifyEkCertificateWithStore(parseCertificateDer(cert.raw), store).trusted).toBe(true)
    }
    expect(readFileSync(join(dir, 'iak-cert.crt'), 'utf8')).toBe(id.iakCertPem)
  })
})

describe('EK CA chain in NV', () => {
  it.each(['rsa', 'ecc'] as const)(
    '%s EK: certificate and intermediate read back; the chain completes the path',
    async (alg) => {
      const chain = await provisionEkCaChain({ tpm: swtpm.transport, alg })
      const ek = await createEk(tpm, alg)
      await flushContext(tpm, ek.handle)
      const ekCert = await readEkCertificate(tpm, alg, ek.publicArea)
      expect(ekCert).not.toBeNull()
      expect(new X509Certificate(ekCert as Uint8Array).toString()).toBe(
        new X509Certificate(chain.ekCertPem).toString(),
      )
      const read = await readEkCaChain(tpm)
      expect(read.map((c) => new X509Certificate(c).subject)).toEqual([
        new X509Certificate(chain.intermediate.certPem).subject,
      ])
      const store = {
        dir: '',
        certificates: [parseCertificateDer(new X509Certificate(chain.root.certPem).raw)],
        warnings: [],
      }
      const leaf = parseCertificateDer(ekCert as Uint8Array)
      expect(verifyEkCertificateWithStore(leaf, store).trusted).toBe(false)
      expect(verifyEkCertificateWithStore(leaf, store, { extraCertificates: read }).trusted).toBe(true)
    },
  )
})
