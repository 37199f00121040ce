import { X509Certificate as NodeX509 } from 'node:crypto'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { createServer, request } from 'node:https'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import {
  type CaError,
  createCa,
  ensureTlsDir,
  issueCertificate,
  listCertificates,
  loadCa,
  revokeCertificate,
} from '../../../src/crypto/ca.ts'
import { x509 } from '../../../src/crypto/x509-setup.ts'

const root = mkdtempSync(join(tmpdir(), 'kl-ca-'))
afterAll(() => rmSync(root, { recursive: true, force: true }))
const mode = (p: string): number => statSync(p).mode & 0o777

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p
  } catch (e) {
    return (e as CaError).code
  }
  return 'no error'
}

describe('certificate authority', () => {
  it('creates the keylime_ca layout with restrictive modes and reloads it', async () => {
    const dir = join(root, 'ca1')
    const ca = await createCa(dir, { keyType: 'ec', commonName: 'Test CA' })
    expect(mode(dir)).toBe(0o700)
    expect(mode(join(dir, 'ca-private.pem'))).toBe(0o600)
    for (const f of ['cacert.crt', 'ca-public.pem', 'cacrl.der', 'cacrl.pem']) statSync(join(dir, f))
    const nodeCert = new NodeX509(readFileSync(join(dir, 'cacert.crt')))
    expect(nodeCert.ca).toBe(true)
    expect(nodeCert.subject).toContain('CN=Test CA')
    expect(nodeCert.verify(nodeCert.publicKey)).toBe(true)
    const again = await loadCa(dir)
    expect(again.certPem).toBe(ca.certPem)
    expect(await codeOf(createCa(dir))).toBe('ERR_CA_EXISTS')
    expect(await codeOf(loadCa(join(root, 'nope')))).toBe('ERR_CA_MISSING')
    // a foreign CA (certificate without our key file) is never overwritten, not even by ensureTlsDir
    const foreign = join(root, 'foreign')
    mkdirSync(foreign)
    writeFileSync(join(foreign, 'cacert.crt'), ca.certPem)
    expect(await codeOf(ensureTlsDir(foreign))).toBe('ERR_CA_EXISTS')
    expect(readFileSync(join(foreign, 'cacert.crt'), 'utf8')).toBe(ca.certPem)
  })

  it('issues certificates with auto-detected IP/DNS SANs, usages and tracked serials; revokes into the CRL', async () => {
    const dir = join(root, 'ca2')
    const ca = await createCa(dir, { keyType: 'ec' })
    const a = await issueCertificate(ca, {
      commonName: 'agent-a',
      sans: ['10.0.0.1', 'host.example', '::1'],
      usage: 'server',
    })
    const b = await issueCertificate(ca, { commonName: 'agent-b', usage: 'client', keyType: 'rsa' })
    expect(b.serial).toBe(a.serial + 1n)
    expect(mode(a.paths.privateKey)).toBe(0o600)
    const nodeA = new NodeX509(readFileSync(a.paths.cert))
    expect(nodeA.subjectAltName).toBe('IP Address:10.0.0.1, DNS:host.example, IP Address:0:0:0:0:0:0:0:1')
    expect(nodeA.checkIssued(new NodeX509(ca.certPem))).toBe(true)
    expect(nodeA.verify(new NodeX509(ca.certPem).publicKey)).toBe(true)
    expect(nodeA.keyUsage).toEqual(['1.3.6.1.5.5.7.3.1'])
    expect(new NodeX509(readFileSync(b.paths.cert)).publicKey.asymmetricKeyType).toBe('rsa')
    expect(await codeOf(issueCertificate(ca, { commonName: 'agent-a' }))).toBe('ERR_CA_EXISTS')
    expect(await codeOf(issueCertificate(ca, { commonName: '../evil' }))).toBe('ERR_CA_INPUT')
    expect(await codeOf(issueCertificate(ca, { commonName: 'x', sans: ['a b'] }))).toBe('ERR_CA_INPUT')

    await revokeCertificate(ca, 'agent-a')
    expect(await codeOf(revokeCertificate(ca, 'agent-a'))).toBe('ERR_CA_NOT_FOUND')
    expect(await codeOf(revokeCertificate(ca, a.serial.toString()))).toBe('ERR_CA_INPUT')
    const crl = new x509.X509Crl(readFileSync(join(dir, 'cacrl.der')))
    expect(await crl.verify({ publicKey: ca.cert.publicKey })).toBe(true)
    expect(crl.entries.map((e) => BigInt(`0x${e.serialNumber}`))).toEqual([a.serial])
    expect(readFileSync(join(dir, 'cacrl.pem'), 'utf8')).toContain('BEGIN X509 CRL')
    const reloaded = await loadCa(dir)
    expect(listCertificates(reloaded).map((c) => [c.name, c.revoked !== null])).toEqual([
      ['agent-a', true],
      ['agent-b', false],
    ])
  })

  it('ensureTlsDir creates once, reuses after, and its certificates do mutual TLS in node', async () => {
    const dir = join(root, 'cv_ca')
    const first = await ensureTlsDir(dir, { serverSans: ['localhost', '127.0.0.1'] })
    expect(first.created).toContain('server-cert.crt')
    expect(mode(first.serverKey)).toBe(0o600)
    expect(mode(first.clientKey)).toBe(0o600)
    const serverPem = readFileSync(first.serverCert, 'utf8')
    const second = await ensureTlsDir(dir, { serverSans: ['localhost', '127.0.0.1'] })
    expect(second.created).toEqual([])
    expect(readFileSync(second.serverCert, 'utf8')).toBe(serverPem)
    // a directory whose certificates all exist is used without its CA key (upstream's cv_ca keeps it in private.yml)
    const upstreamLike = join(root, 'upstream_cv_ca')
    mkdirSync(upstreamLike)
    for (const f of [
      'cacert.crt',
      'server-cert.crt',
      'server-private.pem',
      'client-cert.crt',
      'client-private.pem',
    ])
      writeFileSync(join(upstreamLike, f), readFileSync(join(dir, f)))
    const reused = await ensureTlsDir(upstreamLike, { serverSans: ['localhost'] })
    expect(reused.created).toEqual([])
    expect(readFileSync(reused.serverCert, 'utf8')).toBe(serverPem)
    expect(new NodeX509(readFileSync(first.clientCert)).subject).toContain('CN=client')

    const other = await ensureTlsDir(join(root, 'other'), { keyType: 'ec' })
    const read = (p: string): Buffer => readFileSync(p)
    const server = createServer(
      {
        cert: read(first.serverCert),
        key: read(first.serverKey),
        ca: read(first.caCert),
        requestCert: true,
        rejectUnauthorized: true,
      },
      (req, res) =>
        res.end(`hello ${(req.socket as import('node:tls').TLSSocket).getPeerCertificate().subject.CN}`),
    )
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    const port = (server.address() as AddressInfo).port
    const call = (clientCert: string, clientKey: string): Promise<string> =>
      new Promise((resolve, reject) => {
        const req = request(
          {
            host: '127.0.0.1',
            port,
            path: '/',
            ca: read(first.caCert),
            cert: read(clientCert),
            key: read(clientKey),
          },
          (res) => {
            let body = ''
            res.on('data', (d) => (body += d))
            res.on('end', () => resolve(body))
          },
        )
        req.on('error', reject)
        req.end()
      })
    try {
      expect(await call(first.clientCert, first.clientKey)).toBe('hello client')
      await expect(call(other.clientCert, other.clientKey)).rejects.toThrow()
    } finally {
      server.close()
    }
  })

  it('two concurrent ensureTlsDir calls end with one consistent CA', async () => {
    const dir = join(root, 'race')
    const [a, b] = await Promise.all([
      ensureTlsDir(dir, { keyType: 'ec' }),
      ensureTlsDir(dir, { keyType: 'ec' }),
    ])
    expect(a.created.length + b.created.length).toBe(6)
    const caCert = new NodeX509(readFileSync(a.caCert))
    expect(new NodeX509(readFileSync(a.serverCert)).verify(caCert.publicKey)).toBe(true)
    expect(new NodeX509(readFileSync(b.clientCert)).verify(caCert.publicKey)).toBe(true)
  })
})
