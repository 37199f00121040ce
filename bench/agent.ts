/**
 * Agent quote latency against swtpm: integrity quotes over HTTPS + mTLS (what a verifier sees) and at service
 * level (TPM work alone), plus identity quotes and throughput with concurrent requests (serialised on the TPM).
 *   node --import tsx bench/agent.ts [quotes-per-case]
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { loadAgentConfig } from '../src/agent/config.ts'
import { defaultAgentDeps, startAgent } from '../src/agent/runtime.ts'
import { AgentClient } from '../src/api/agent/client.ts'
import { createLogger } from '../src/common/log.ts'
import { ensureTlsDir } from '../src/crypto/ca.ts'
import { startSwtpm } from '../test/helpers/swtpm.ts'

const N = Number(process.argv[2] ?? 300)

function stats(ms: number[]): string {
  const s = [...ms].sort((a, b) => a - b)
  const at = (q: number) => s[Math.min(s.length - 1, Math.floor(q * s.length))] as number
  return `median ${at(0.5).toFixed(2)} ms, p95 ${at(0.95).toFixed(2)} ms, max ${at(1).toFixed(2)} ms (n=${s.length})`
}

async function timed(n: number, fn: (i: number) => Promise<unknown>): Promise<number[]> {
  const out: number[] = []
  for (let i = 0; i < n; i++) {
    const t = performance.now()
    await fn(i)
    out.push(performance.now() - t)
  }
  return out
}

const swtpm = await startSwtpm()
const dir = mkdtempSync(join(tmpdir(), 'agent-bench-'))
try {
  await ensureTlsDir(join(dir, 'cv_ca'))
  const imaPath = join(dir, 'ascii_runtime_measurements')
  const line = (i: number) =>
    `10 ${'a'.repeat(40)} ima-ng sha256:${i.toString(16).padStart(64, '0')} /usr/bin/f${i}\n`
  writeFileSync(imaPath, Array.from({ length: 5000 }, (_, i) => line(i)).join(''))
  const config = loadAgentConfig({
    configDirs: [],
    env: {},
    overrides: { keylime_dir: dir, tpm: swtpm.transport, port: '0', ima_ml_path: imaPath },
  })
  const agent = await startAgent({
    config,
    deps: defaultAgentDeps(),
    log: createLogger('bench', 'silent'),
    register: false,
  })
  const client = new AgentClient({
    baseUrl: `https://127.0.0.1:${agent.port}`,
    apiVersion: '2.6',
    tls: {
      ca: agent.mtlsCertPem,
      cert: await readFile(join(dir, 'cv_ca', 'client-cert.crt'), 'utf8'),
      key: await readFile(join(dir, 'cv_ca', 'client-private.pem'), 'utf8'),
    },
  })
  await timed(20, (i) =>
    client.integrityQuote({ nonce: `warm${i}`, mask: [10], partial: true, imaMlEntry: 5000 }),
  )

  const service = await timed(N, (i) =>
    agent.quotes.integrity({
      nonce: `s${i}`,
      pcrs: [10],
      partial: true,
      imaMlEntry: 5000,
      apiVersion: '2.6',
    }),
  )
  console.log(`service-level integrity quote (PCR 10+16, TPM only): ${stats(service)}`)
  const https = await timed(N, (i) =>
    client.integrityQuote({ nonce: `h${i}`, mask: [10], partial: true, imaMlEntry: 5000 }),
  )
  console.log(
    `HTTPS+mTLS integrity quote (mask 0x400, partial=1, IMA tail of a 5,000-entry list): ${stats(https)}`,
  )
  const identity = await timed(Math.min(N, 100), (i) => client.identityQuote(`i${i}`))
  console.log(`HTTPS+mTLS identity quote: ${stats(identity)}`)
  const mb = await timed(Math.min(N, 100), (i) =>
    client.integrityQuote({
      nonce: `m${i}`,
      mask: [0, 1, 2, 3, 4, 5, 6, 7, 10],
      partial: false,
      imaMlEntry: 0,
    }),
  )
  console.log(`HTTPS+mTLS integrity quote, 10 PCRs + whole 5,000-entry IMA list + pubkey: ${stats(mb)}`)

  const concurrent = 8
  const t0 = performance.now()
  let done = 0
  await Promise.all(
    Array.from({ length: concurrent }, async (_, w) => {
      for (let i = 0; i < N / concurrent; i++) {
        await client.integrityQuote({ nonce: `c${w}x${i}`, mask: [10], partial: true, imaMlEntry: 5000 })
        done++
      }
    }),
  )
  console.log(
    `throughput with ${concurrent} concurrent clients: ${((done * 1000) / (performance.now() - t0)).toFixed(0)} quotes/s`,
  )
  await client.close()
  await agent.close()
} finally {
  await swtpm.stop()
  rmSync(dir, { recursive: true, force: true })
}
