/**
 * Child process of the fleet benchmark: serves N simulated agents (own P-256 AK each, one shared RSA payload key) and
 * prints one JSON line `{port, agents: [{id, ip, akTpm, pcr15, cert}], verifierTls}` on stdout, then serves until
 * killed. With `--tls K`, agents speak mTLS like real ones: K distinct self-signed P-256 server certificates (agent i
 * serves certificate i mod K; `cert` is its index in `certs`), and they require the verifier's client certificate
 * from a CA made here (`verifierTls`: cert, key). Every 1 s it prints `{quotes, vKeys}` on stderr.
 * Usage: node --import tsx bench/fleet-server.ts <count> [--tls <distinct certificates>] [--no-keepalive-hint]
 */
import { createPublicKey, generateKeyPairSync, webcrypto } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ensureTlsDir } from '../src/crypto/ca.ts'
import { x509 } from '../src/crypto/x509-setup.ts'
import { startSimFleet } from './fleet-agents.ts'

const count = Number(process.argv[2] ?? '1000')
const tlsAt = process.argv.indexOf('--tls')
const distinctCerts = tlsAt > 0 ? Math.max(1, Math.min(count, Number(process.argv[tlsAt + 1]))) : 0

/** A self-signed P-256 server certificate, as an agent makes for itself. */
async function agentCertificate(i: number): Promise<{ cert: string; key: string }> {
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' }
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const keys = {
    privateKey: await webcrypto.subtle.importKey(
      'pkcs8',
      privateKey.export({ type: 'pkcs8', format: 'der' }),
      alg,
      false,
      ['sign'],
    ),
    publicKey: await webcrypto.subtle.importKey(
      'spki',
      createPublicKey(privateKey).export({ type: 'spki', format: 'der' }),
      alg,
      true,
      ['verify'],
    ),
  }
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: (1000 + i).toString(16),
    name: `CN=sim-agent-${i}`,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 86_400_000),
    signingAlgorithm: alg,
    keys: keys as never,
    extensions: [new x509.SubjectAlternativeNameExtension([{ type: 'ip', value: '127.0.0.1' }])],
  })
  return { cert: cert.toString('pem'), key: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() }
}

let tls: { certs: { cert: string; key: string }[]; clientCa: string } | undefined
let verifierTls: { cert: string; key: string } | null = null
if (distinctCerts > 0) {
  const dir = mkdtempSync(join(tmpdir(), 'kl-fleet-tls-'))
  const t = await ensureTlsDir(join(dir, 'tls'))
  verifierTls = { cert: readFileSync(t.clientCert, 'utf8'), key: readFileSync(t.clientKey, 'utf8') }
  const clientCa = readFileSync(t.caCert, 'utf8')
  rmSync(dir, { recursive: true, force: true })
  const certs: { cert: string; key: string }[] = []
  for (let i = 0; i < distinctCerts; i++) certs.push(await agentCertificate(i))
  tls = { certs, clientCa }
}
const fleet = await startSimFleet({
  count,
  sharePayloadKey: true,
  akType: 'ecc',
  http: 'lean',
  keepAliveHint: !process.argv.includes('--no-keepalive-hint'),
  ...(tls ? { tls } : {}),
})
const agents = fleet.agents.map((a, i) => ({
  id: a.id,
  ip: a.ip,
  akTpm: a.quoter.akTpm,
  pcr15: (a.quoter.pcrs.get(15) as Buffer).toString('hex'),
  cert: tls ? i % tls.certs.length : null,
}))
process.stdout.write(
  `${JSON.stringify({ port: fleet.port, agents, certs: tls?.certs.map((c) => c.cert) ?? [], verifierTls })}\n`,
)
setInterval(() => {
  const quotes = fleet.agents.reduce((n, a) => n + a.quotes, 0)
  const vKeys = fleet.agents.reduce((n, a) => n + a.vKeys.length, 0)
  process.stderr.write(`${JSON.stringify({ quotes, vKeys })}\n`)
}, 1000)
