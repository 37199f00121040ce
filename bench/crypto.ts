/**
 * src/crypto throughput on one core (this process):
 *   node --import tsx bench/crypto.ts [seconds-per-case]
 * CA issuance (with key generation and 0600 file writes), revocation sign/verify, payload crypto,
 * EK chain verification and safe extraction of a certificate package. Prints one line per case and a JSON summary.
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createCa, issueCertificate } from '../src/crypto/ca.ts'
import {
  loadCertStore,
  parseCertificateTolerant,
  verifyEkCertificateWithStore,
} from '../src/crypto/ek-trust.ts'
import { authTag, decryptPayload, encryptPayload, generateKuv, tryCombine } from '../src/crypto/payload.ts'
import { asctime, signRevocation, verifyRevocation } from '../src/crypto/revocation.ts'
import { buildCertPackage, extractPayloadZipSafely } from '../src/payload/index.ts'

const seconds = Number(process.argv[2] ?? 1)
const results: Record<string, number> = {}
let counter = 0 // unique names across warm-up and runs

async function measure(label: string, fn: (i: number) => unknown): Promise<number> {
  for (let i = 0; i < 3; i++) await fn(counter++) // warm-up
  const deadline = performance.now() + seconds * 1000
  const start = performance.now()
  let n = 0
  while (performance.now() < deadline) {
    await fn(counter++)
    n++
  }
  const perSecond = Math.round((n / (performance.now() - start)) * 1000)
  results[label] = perSecond
  console.log(`${label.padEnd(52)} ${perSecond.toLocaleString('en-US').padStart(10)} /s`)
  return perSecond
}

const dir = mkdtempSync(join(tmpdir(), 'kl-bench-crypto-'))
try {
  const ecCa = await createCa(join(dir, 'ec'), { keyType: 'ec' })
  const rsaCa = await createCa(join(dir, 'rsa'), { keyType: 'rsa' })
  await measure('CA issue cert (EC P-256 CA, P-256 leaf)', (i) =>
    issueCertificate(ecCa, { commonName: `ec-${i}`, sans: ['127.0.0.1'], keyType: 'ec' }),
  )
  await measure('CA issue cert (RSA-2048 CA, RSA-2048 leaf keygen)', (i) =>
    issueCertificate(rsaCa, { commonName: `rsa-${i}`, keyType: 'rsa' }),
  )

  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
  const message = {
    type: 'revocation',
    ip: '10.0.0.7',
    agent_id: 'd432fbb3-d2f1-4a97-9ef7-75bd81c00000',
    port: 9002,
    tpm_policy: '{"mask": "0x408000"}',
    meta_data: '{"cert_serial": 7}',
    event_time: asctime(new Date()),
    event_id: 'pcr_validation.invalid_pcr_15',
    severity_label: 'emergency',
  }
  const wire = signRevocation(message, privateKey)
  await measure('revocation sign (RSA-2048 PSS)', () => signRevocation(message, privateKey))
  await measure('revocation verify (RSA-2048 PSS)', () => verifyRevocation(wire, publicKey))

  const { k, u, v } = generateKuv()
  const mib = randomBytes(1024 * 1024)
  const blob = encryptPayload(k, mib)
  await measure('payload encrypt 1 MiB (AES-256-GCM + b64)', () => encryptPayload(k, mib))
  await measure('payload decrypt 1 MiB', () => decryptPayload(k, blob))
  const uList = Array.from({ length: 8 }, () => {
    const s = generateKuv()
    return { u: s.u, authTag: authTag(s.k, 'agent') }
  })
  uList.push({ u, authTag: authTag(k, 'agent') })
  await measure('tryCombine 9 U x 4 V (HMAC-SHA384 each)', () =>
    tryCombine(uList, [randomBytes(32), randomBytes(32), randomBytes(32), v], 'agent'),
  )

  const ekCa = await createCa(join(dir, 'ek'), { keyType: 'rsa' })
  const ek = await issueCertificate(ekCa, { commonName: 'ek', usage: 'client', keyType: 'rsa' })
  const store = await loadCertStore(join(dir, 'ek'))
  store.certificates = store.certificates.filter((c) => c.subject.key === c.issuer.key) // anchors: the CA only
  const ekParsed = parseCertificateTolerant(ek.certPem)
  await measure('EK chain verify (parse PEM + RSA link)', () =>
    verifyEkCertificateWithStore(ek.certPem, store),
  )
  await measure('EK chain verify (pre-parsed)', () => verifyEkCertificateWithStore(ekParsed, store))

  const pkg = await buildCertPackage(rsaCa, 'bench-agent')
  await measure('cert package safe extraction (8 files)', (i) =>
    extractPayloadZipSafely(pkg.zip, join(dir, 'x', String(i))),
  )
} finally {
  rmSync(dir, { recursive: true, force: true })
}
console.log(JSON.stringify({ bench: 'crypto', seconds, results }))
