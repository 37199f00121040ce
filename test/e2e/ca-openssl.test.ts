/** Cross-checks with the OpenSSL command line (an independent implementation): CRL, chain, PSS signature. */
import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { createCa, issueCertificate, revokeCertificate } from '../../src/crypto/ca.ts'
import { signRevocation } from '../../src/crypto/revocation.ts'

const root = mkdtempSync(join(tmpdir(), 'kl-ossl-'))
afterAll(() => rmSync(root, { recursive: true, force: true }))
const openssl = (...args: string[]) => spawnSync('openssl', args, { encoding: 'utf8', timeout: 30_000 })

describe('OpenSSL agrees', () => {
  it('with the chain, the CRL and a revoked certificate', async () => {
    const dir = join(root, 'ca')
    const ca = await createCa(dir)
    const keep = await issueCertificate(ca, { commonName: 'keep', sans: ['localhost'] })
    const gone = await issueCertificate(ca, { commonName: 'gone', keyType: 'ec' })
    const ok = openssl('verify', '-CAfile', join(dir, 'cacert.crt'), keep.paths.cert, gone.paths.cert)
    expect(ok.status, ok.stderr).toBe(0)
    await revokeCertificate(ca, 'gone')
    const crlArgs = ['-crl_check', '-CRLfile', join(dir, 'cacrl.pem'), '-CAfile', join(dir, 'cacert.crt')]
    expect(openssl('verify', ...crlArgs, keep.paths.cert).status).toBe(0)
    const revoked = openssl('verify', ...crlArgs, gone.paths.cert)
    expect(revoked.status).not.toBe(0)
    expect(revoked.stdout + revoked.stderr).toContain('certificate revoked')
    const der = openssl(
      'crl',
      '-inform',
      'DER',
      '-in',
      join(dir, 'cacrl.der'),
      '-noout',
      '-CAfile',
      join(dir, 'cacert.crt'),
    )
    expect(der.stderr).toContain('verify OK')
  })

  // maximal salt for RSA-2048 and SHA-256: 256 - 32 - 2 = 222 bytes, checked exactly
  it('with the revocation signature (RSA-PSS SHA-256, maximal salt)', async () => {
    const ca = await createCa(join(root, 'ca2'))
    const notifier = await issueCertificate(ca, { commonName: 'RevocationNotifier', keyType: 'rsa' })
    const wire = signRevocation(
      {
        type: 'revocation',
        ip: null,
        agent_id: 'a',
        port: null,
        tpm_policy: null,
        meta_data: null,
        event_time: 'x',
      },
      notifier.privateKeyPem,
    )
    writeFileSync(join(root, 'msg'), wire.msg)
    writeFileSync(join(root, 'sig'), Buffer.from(wire.signature, 'base64'))
    const r = openssl(
      'dgst',
      '-sha256',
      '-sigopt',
      'rsa_padding_mode:pss',
      '-sigopt',
      'rsa_pss_saltlen:222',
      '-verify',
      notifier.paths.publicKey,
      '-signature',
      join(root, 'sig'),
      join(root, 'msg'),
    )
    expect(r.stdout.trim(), r.stderr).toBe('Verified OK')
  })
})
