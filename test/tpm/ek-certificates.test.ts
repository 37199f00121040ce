/**
 * EK certificates on swtpm, which provisions RSA 2048 at 0x01c00002 and its ECC EK (P-384, persistent 0x81010016)
 * at 0x01c00016: each EK gets the certificate of its own key from whichever TCG index holds it, never another
 * key's; cross-checked with tpm2_nvread.
 */
import { execFile } from 'node:child_process'
import { webcrypto, X509Certificate } from 'node:crypto'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { x509 } from '../../src/crypto/x509-setup.ts'
import { TpmUsageError } from '../../src/tpm/errors.ts'
import { createEk, flushContext, readEkCertificate, readPublic } from '../../src/tpm/keylime-client.ts'
import { Tpm } from '../../src/tpm/tpm.ts'
import { decodeTpm2bPublic } from '../../src/tpm/types/public.ts'
import { type SwtpmInstance, startSwtpm } from '../helpers/swtpm.ts'

const exec = promisify(execFile)
const SWTPM_ECC_EK = 0x81010016
let sw: SwtpmInstance
let tpm: Tpm
let work: string

/** Runs a tpm2-tools command while our connection is closed (swtpm serves one client at a time). */
async function tools(cmd: string, args: string[]): Promise<void> {
  await tpm.close()
  try {
    await exec(cmd, ['-T', sw.tcti, ...args], { timeout: 60_000 })
  } finally {
    tpm = await Tpm.open(sw.transport)
  }
}

async function nvreadWithTools(index: string): Promise<Buffer> {
  const out = join(work, `${index}.der`)
  await tools('tpm2_nvread', [index, '-C', index, '-o', out])
  return readFile(out)
}

/** The EK's public key as the JWK coordinates a certificate's key exports to. */
function ekJwk(publicArea: Uint8Array) {
  const pub = decodeTpm2bPublic(publicArea)
  if (pub.unique.kind !== 'ecc') throw new Error('not an ECC key')
  return {
    x: Buffer.from(pub.unique.x).toString('base64url'),
    y: Buffer.from(pub.unique.y).toString('base64url'),
  }
}

beforeAll(async () => {
  sw = await startSwtpm()
  tpm = await Tpm.open(sw.transport)
  work = await mkdtemp(join(tmpdir(), 'ek-certs-'))
})

afterAll(async () => {
  await tpm?.close()
  await sw?.stop()
  if (work) await rm(work, { recursive: true, force: true })
})

describe('readEkCertificate with the EK in use', () => {
  it('RSA: the L-1 EK gets the certificate at 0x01c00002, as tpm2_nvread reads it', async () => {
    const ek = await createEk(tpm, 'rsa')
    try {
      const cert = await readEkCertificate(tpm, 'rsa', ek.publicArea)
      expect(cert).not.toBeNull()
      const theirs = await nvreadWithTools('0x01c00002')
      expect(Buffer.from(cert as Uint8Array)).toEqual(theirs.subarray(0, cert?.length))
      expect(await readEkCertificate(tpm, 'rsa')).toEqual(cert)
    } finally {
      await flushContext(tpm, ek.handle)
    }
  })

  it("ECC: swtpm's persistent P-384 EK gets the certificate at 0x01c00016, whose key is that EK's", async () => {
    const { publicArea } = await readPublic(tpm, SWTPM_ECC_EK)
    const cert = await readEkCertificate(tpm, 'ecc', publicArea)
    expect(cert).not.toBeNull()
    const theirs = await nvreadWithTools('0x01c00016')
    expect(Buffer.from(cert as Uint8Array)).toEqual(theirs.subarray(0, cert?.length))
    const key = new X509Certificate(Buffer.from(cert as Uint8Array)).publicKey.export({ format: 'jwk' })
    expect(key.crv).toBe('P-384')
    expect({ x: key.x, y: key.y }).toEqual(ekJwk(publicArea))
  })

  it('ECC: the L-2 P-256 EK gets no certificate rather than the P-384 one', async () => {
    const ek = await createEk(tpm, 'ecc')
    try {
      expect(await readEkCertificate(tpm, 'ecc', ek.publicArea)).toBeNull()
      expect(await readEkCertificate(tpm, 'ecc')).toBeNull()
    } finally {
      await flushContext(tpm, ek.handle)
    }
  })

  it('ECC: a certificate of the L-2 EK at 0x01c0000a (padded NV) is found and trimmed; the P-384 EK still gets its own', async () => {
    const ek = await createEk(tpm, 'ecc')
    const ekPublicArea = ek.publicArea
    await flushContext(tpm, ek.handle)
    const { subtle } = webcrypto
    const ekKey = await subtle.importKey(
      'jwk',
      { kty: 'EC', crv: 'P-256', ...ekJwk(ekPublicArea) },
      { name: 'ECDSA', namedCurve: 'P-256' },
      true,
      ['verify'],
    )
    const issuer = await subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign', 'verify'])
    const made = await x509.X509CertificateGenerator.create({
      serialNumber: '01',
      subject: 'CN=L-2 test EK',
      issuer: 'CN=test EK CA',
      notBefore: new Date(Date.now() - 60_000),
      notAfter: new Date(Date.now() + 86_400_000),
      publicKey: ekKey as never,
      signingKey: issuer.privateKey as never,
      signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
    })
    const der = Buffer.from(made.rawData)
    const padded = Buffer.concat([der, Buffer.alloc(40, 0xff)])
    const file = join(work, 'l2-cert.bin')
    await writeFile(file, padded)
    await tools('tpm2_nvdefine', [
      '0x01c0000a',
      '-C',
      'o',
      '-s',
      String(padded.length),
      '-a',
      'ownerread|ownerwrite|authread|authwrite|no_da',
    ])
    await tools('tpm2_nvwrite', ['0x01c0000a', '-C', 'o', '-i', file])

    expect(Buffer.from((await readEkCertificate(tpm, 'ecc', ekPublicArea)) ?? [])).toEqual(der)
    expect(Buffer.from((await readEkCertificate(tpm, 'ecc')) ?? [])).toEqual(der)
    const { publicArea: p384 } = await readPublic(tpm, SWTPM_ECC_EK)
    const own = await readEkCertificate(tpm, 'ecc', p384)
    expect(Buffer.from(own as Uint8Array)).toEqual(
      (await nvreadWithTools('0x01c00016')).subarray(0, own?.length),
    )
  })

  it('refuses an EK of the other key family', async () => {
    const { publicArea } = await readPublic(tpm, SWTPM_ECC_EK)
    await expect(readEkCertificate(tpm, 'rsa', publicArea)).rejects.toThrow(TpmUsageError)
  })
})
