/**
 * Registrar throughput, in process over real HTTP (undici keep-alive pool -> fastify -> kysely):
 *   node --import tsx bench/registrar.ts [seconds-per-case] [concurrency]
 * One "enrollment" = POST /v2.6/agents/:id (validation, MakeCredential, insert) + software TPM2_ActivateCredential
 * on the client side + PUT /v2.6/agents/:id (auth_tag check, update). Runs on SQLite (file, WAL) and PostgreSQL
 * (KEYLIME_TEST_PG_URL, a throw-away schema). Prints one line per case and a JSON summary.
 */
import { createHmac, randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Pool } from 'undici'
import { dropPgSchema, openDatabase } from '../src/db/database.ts'
import { type RegistrarDatabase, RegistrarRepository } from '../src/db/registrar-repository.ts'
import { buildRegistrarApp } from '../src/registrar/app.ts'
import { RegistrarService } from '../src/registrar/registrar-service.ts'
import {
  activateCredentialInSoftware,
  type SoftwareTpm,
  softwareTpm,
} from '../test/api/registrar/software-tpm.ts'

const seconds = Number(process.argv[2] ?? 3)
const concurrency = Number(process.argv[3] ?? 16)
const PG_URL = process.env.KEYLIME_TEST_PG_URL ?? 'postgresql://postgres@127.0.0.1:5432/test'
const tpms: SoftwareTpm[] = Array.from({ length: 4 }, () => softwareTpm())
const results: Record<string, number> = {}

async function runCase(label: string, url: string, opts: Parameters<typeof openDatabase>[1]): Promise<void> {
  const db = await openDatabase<RegistrarDatabase>(url, { ...opts, migrations: 'registrar' })
  const app = buildRegistrarApp({ service: new RegistrarService({ repo: new RegistrarRepository(db) }) })
  await app.listen({ host: '127.0.0.1', port: 0 })
  const addr = app.server.address()
  const port = addr && typeof addr === 'object' ? addr.port : 0
  const pool = new Pool(`http://127.0.0.1:${port}`, { connections: concurrency })
  let counter = 0
  const call = async (method: 'POST' | 'PUT', path: string, body: unknown) => {
    const r = await pool.request({
      method,
      path,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    })
    const json = (await r.body.json()) as { results: { blob?: string } }
    if (r.statusCode !== 200) throw new Error(`${method} ${path}: ${r.statusCode} ${JSON.stringify(json)}`)
    return json.results
  }
  const enroll = async () => {
    const i = counter++
    const tpm = tpms[i % tpms.length] as SoftwareTpm
    const id = `bench-${label}-${i}`
    const { blob } = await call('POST', `/v2.6/agents/${id}`, {
      aik_tpm: Buffer.from(tpm.akTpm).toString('base64'),
      ek_tpm: Buffer.from(tpm.ekTpm).toString('base64'),
      mtls_cert: 'disabled',
      ip: '127.0.0.1',
      port: 9002,
    })
    const challenge = activateCredentialInSoftware(tpm, blob as string)
    const tag = createHmac('sha384', Buffer.from(challenge.toString('base64'), 'ascii'))
      .update(id)
      .digest('hex')
    await call('PUT', `/v2.6/agents/${id}`, { auth_tag: tag })
  }
  for (let i = 0; i < 20; i++) await enroll() // warm-up
  const cpu0 = process.cpuUsage()
  const start = performance.now()
  const deadline = start + seconds * 1000
  let done = 0
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < deadline) {
        await enroll()
        done++
      }
    }),
  )
  const perSecond = Math.round((done / (performance.now() - start)) * 1000)
  const cpu = process.cpuUsage(cpu0)
  // the machine is shared: enrollments per CPU-second of this process (client + server) is the steadier figure
  const perCpuSecond = Math.round(done / ((cpu.user + cpu.system) / 1e6))
  results[`enrollments_per_s_${label}`] = perSecond
  results[`enrollments_per_cpu_s_${label}`] = perCpuSecond
  const name = `registrar enrollments (register+activate), ${label}, c=${concurrency}`
  console.log(
    `${name.padEnd(60)} ${String(perSecond).padStart(6)} /s wall ${String(perCpuSecond).padStart(6)} /CPU-s`,
  )
  await pool.close()
  await app.close()
  await db.destroy()
}

const dir = mkdtempSync(join(tmpdir(), 'kl-bench-reg-'))
const schema = `bench_reg_${randomBytes(4).toString('hex')}`
try {
  await runCase('sqlite', 'sqlite', { dataDir: dir, name: 'reg_data' })
  try {
    await runCase('postgres', PG_URL, { pgSchema: schema })
  } finally {
    await dropPgSchema(PG_URL, schema).catch(() => {})
  }
} finally {
  rmSync(dir, { recursive: true, force: true })
}
console.log(JSON.stringify({ bench: 'registrar', seconds, concurrency, ...results }))
