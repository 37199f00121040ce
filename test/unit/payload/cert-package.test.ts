import { X509Certificate } from 'node:crypto'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { createCa, loadCa } from '../../../src/crypto/ca.ts'
import { signRevocation, verifyRevocation } from '../../../src/crypto/revocation.ts'
import { buildCertPackage, extractPayloadZipSafely } from '../../../src/payload/index.ts'

const root = mkdtempSync(join(tmpdir(), 'kl-pkg-'))
afterAll(() => rmSync(root, { recursive: true, force: true }))
const UUID = 'd432fbb3-d2f1-4a97-9ef7-75bd81c00000'

describe('buildCertPackage (spec §E.3)', () => {
  it('zips the agent cert/key, CA cert, CRLs and notifier cert plus include files; returns key and metadata', async () => {
    const ca = await createCa(join(root, 'ca'))
    const include = join(root, 'include')
    mkdirSync(include)
    writeFileSync(join(include, 'autorun.sh'), '#!/bin/sh\ntouch marker\n')
    symlinkSync('/etc/passwd', join(include, 'passwd-link')) // skipped: not a plain file
    const pkg = await buildCertPackage(ca, UUID, { includeDir: include })
    expect(pkg.entries).toEqual([
      `${UUID}-public.pem`,
      `${UUID}-cert.crt`,
      `${UUID}-private.pem`,
      'cacert.crt',
      'cacrl.der',
      'cacrl.pem',
      'RevocationNotifier-cert.crt',
      'autorun.sh',
    ])
    // stored, not compressed: the local header's method field is 0
    expect(pkg.zip.readUInt16LE(8)).toBe(0)
    const out = join(root, 'unzipped')
    await extractPayloadZipSafely(pkg.zip, out)
    const agentCert = new X509Certificate(readFileSync(join(out, `${UUID}-cert.crt`)))
    const caCert = new X509Certificate(readFileSync(join(out, 'cacert.crt')))
    expect(agentCert.verify(caCert.publicKey)).toBe(true)
    expect(agentCert.subject).toContain(`CN=${UUID}`)
    expect(
      agentCert.checkPrivateKey(
        (await import('node:crypto')).createPrivateKey(readFileSync(join(out, `${UUID}-private.pem`))),
      ),
    ).toBe(true)
    expect(pkg.metadata).toEqual({
      cert_serial: Number(BigInt(`0x${agentCert.serialNumber}`)),
      subject: `CN=${UUID},OU=53,O=Keylime,L=Lexington,ST=MA,C=US`,
    })
    expect(pkg.zip.includes(Buffer.from(pkg.revocationKeyPem))).toBe(false)
    // the notifier key the verifier gets signs what the agent verifies with the packaged notifier cert
    const wire = signRevocation(
      {
        type: 'revocation',
        ip: null,
        agent_id: UUID,
        port: null,
        tpm_policy: null,
        meta_data: null,
        event_time: 'x',
      },
      pkg.revocationKeyPem,
    )
    expect(
      verifyRevocation(wire, readFileSync(join(out, 'RevocationNotifier-cert.crt'), 'utf8')).agent_id,
    ).toBe(UUID)

    // a second package for the same agent reuses its certificate and the notifier
    const again = await buildCertPackage(await loadCa(ca.dir), UUID)
    expect(again.metadata).toEqual(pkg.metadata)
    expect(again.revocationKeyPem).toBe(pkg.revocationKeyPem)
  })

  it('refuses include files that would replace package files', async () => {
    const ca = await createCa(join(root, 'ca2'), { keyType: 'ec' })
    await expect(
      buildCertPackage(ca, 'agent-2', { includeEntries: [{ name: 'cacert.crt', data: 'x' }] }),
    ).rejects.toThrow(/would replace/)
  })
})
