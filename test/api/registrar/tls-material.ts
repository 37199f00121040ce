/** Test PKI made with the openssl CLI: a CA with server + client certs, and a foreign CA with its own client. */
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export interface TestPki {
  caCert: string
  serverCert: string
  serverKey: string
  clientCert: string
  clientKey: string
  foreignClientCert: string
  foreignClientKey: string
}

function run(dir: string, args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: 'pipe', timeout: 30_000 })
}

function makeCa(dir: string, name: string): void {
  run(dir, ['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', `${name}.key`])
  run(dir, [
    'req',
    '-x509',
    '-new',
    '-key',
    `${name}.key`,
    '-subj',
    `/CN=${name}`,
    '-days',
    '2',
    '-out',
    `${name}.crt`,
  ])
}

function issue(dir: string, ca: string, name: string, ext: string): void {
  run(dir, ['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', `${name}.key`])
  run(dir, ['req', '-new', '-key', `${name}.key`, '-subj', `/CN=${name}`, '-out', `${name}.csr`])
  writeFileSync(join(dir, `${name}.ext`), ext)
  run(dir, [
    'x509',
    '-req',
    '-in',
    `${name}.csr`,
    '-CA',
    `${ca}.crt`,
    '-CAkey',
    `${ca}.key`,
    '-CAcreateserial',
    '-days',
    '2',
    '-extfile',
    `${name}.ext`,
    '-out',
    `${name}.crt`,
  ])
}

export function makeTestPki(): TestPki {
  const dir = mkdtempSync(join(tmpdir(), 'kl-pki-'))
  try {
    makeCa(dir, 'ca')
    makeCa(dir, 'foreign-ca')
    issue(dir, 'ca', 'server', 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n')
    issue(dir, 'ca', 'client', 'extendedKeyUsage=clientAuth\n')
    issue(dir, 'foreign-ca', 'foreign-client', 'extendedKeyUsage=clientAuth\n')
    const r = (f: string) => readFileSync(join(dir, f), 'utf8')
    return {
      caCert: r('ca.crt'),
      serverCert: r('server.crt'),
      serverKey: r('server.key'),
      clientCert: r('client.crt'),
      clientKey: r('client.key'),
      foreignClientCert: r('foreign-client.crt'),
      foreignClientKey: r('foreign-client.key'),
    }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}
