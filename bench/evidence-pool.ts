/**
 * CPU per attestation of the evidence pipeline for a PCR-only quote with a P-256 AK (the "CPU per
 * attestation" case without the I/O): evaluated on this thread, then through the verifier's evidence pool, whose
 * figure counts every thread of the process (`process.cpuUsage()`), i.e. the pool's own cost included.
 *
 *   node --import tsx bench/evidence-pool.ts [--jobs 15000] [--workers 2]
 */
import { generateKeyPairSync } from 'node:crypto'
import { availableParallelism, loadavg } from 'node:os'
import type { EvidenceInput } from '../src/evidence/pipeline.ts'
import { evaluateEvidence } from '../src/evidence/pipeline.ts'
import { akKeyObject, parseTpmPolicy } from '../src/evidence/quote/index.ts'
import { EvidencePool } from '../src/verifier/evidence-pool.ts'
import { SoftQuoter } from './fleet-quoter.ts'

const arg = (name: string, dflt: number) => {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 ? Number(process.argv[i + 1]) : dflt
}
const JOBS = arg('jobs', 15_000)
const WORKERS = arg('workers', availableParallelism())

const pem = generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({
  type: 'spki',
  format: 'pem',
}) as string
const quoter = new SoftQuoter({ keyType: 'ecc' })
quoter.bindPubkey(pem)
const akPublic = akKeyObject(new Uint8Array(Buffer.from(quoter.akTpm, 'base64')))
const tpmPolicy = parseTpmPolicy(
  JSON.stringify({ '15': [(quoter.pcrs.get(15) as Buffer).toString('hex')], mask: '0x8000' }),
)
const inputs: EvidenceInput[] = Array.from({ length: JOBS }, (_, i) => ({
  akPublic,
  quote: quoter.quote(`nonce-${i}`, [15, 16]),
  nonce: `nonce-${i}`,
  hashAlg: 'sha256',
  encAlg: 'rsa',
  signAlg: 'ecdsa',
  accepted: { hash: ['sha256'], encryption: ['rsa'], signing: ['ecdsa'] },
  tpmPolicy,
  boundPubkeyPem: pem,
  previousClock: null,
  requiredPcrs: [15, 16],
  measuredBoot: null,
  ima: null,
}))

const us = (c: NodeJS.CpuUsage) => (c.user + c.system) / JOBS
let cpu0 = process.cpuUsage()
let t0 = performance.now()
for (const i of inputs) if (!evaluateEvidence(i).verdict.ok) throw new Error('benchmark quote failed')
const inThread = { cpu: us(process.cpuUsage(cpu0)), wall: ((performance.now() - t0) * 1000) / JOBS }

const pool = new EvidencePool({ workers: WORKERS, sourceOf: () => undefined })
pool.warm()
await Promise.all(inputs.slice(0, 100).map((i) => pool.run(i)))
cpu0 = process.cpuUsage()
t0 = performance.now()
let next = 0
await Promise.all(
  Array.from({ length: 128 }, async () => {
    while (next < JOBS) {
      const r = await pool.run(inputs[next++] as EvidenceInput)
      if (!r.verdict.ok) throw new Error('benchmark quote failed')
    }
  }),
)
const pooled = { cpu: us(process.cpuUsage(cpu0)), wall: ((performance.now() - t0) * 1000) / JOBS }
await pool.close()
console.log(
  `PCR-only P-256 quote, ${JOBS} attestations: on the event loop ${inThread.cpu.toFixed(0)} us CPU (${Math.round(1e6 / inThread.wall)}/s); pool of ${WORKERS} workers ${pooled.cpu.toFixed(0)} us CPU summed over threads (${Math.round(1e6 / pooled.wall)}/s); load average ${loadavg()[0]?.toFixed(1)}`,
)
