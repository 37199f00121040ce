/**
 * The registrar's protections as `keylime registrar` runs them (startRegistrar, real sockets, SQLite file): the
 * per-source rate limit answers 429 with Retry-After over HTTP, the sweep timer deletes registrations never
 * activated, our agent on swtpm rides out a 429 during its start, and unusable settings refuse to start.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { pino } from 'pino'
import { request } from 'undici'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { loadAgentConfig } from '../../src/agent/config.ts'
import { defaultAgentDeps, startAgent } from '../../src/agent/runtime.ts'
import { createLogger } from '../../src/common/log.ts'
import { ConfigError } from '../../src/config/loader.ts'
import { loadRegistrarConfig, type registrarSchema } from '../../src/config/registrar.ts'
import type { Flags } from '../../src/config/schema.ts'
import { openDatabase } from '../../src/db/database.ts'
import type { RegistrarDatabase } from '../../src/db/registrar-repository.ts'
import { type RunningRegistrar, startRegistrar } from '../../src/registrar/server.ts'
import { softwareTpm } from '../api/registrar/software-tpm.ts'
import { makeTestPki } from '../api/registrar/tls-material.ts'
import { type SwtpmInstance, startSwtpm } from '../helpers/swtpm.ts'

const log = createLogger('registrar-hardening-e2e', 'silent')
const tpm = softwareTpm()
const b64 = (u: Uint8Array) => Buffer.from(u).toString('base64')

let workDir: string
let registrar: RunningRegistrar
let swtpm: SwtpmInstance

function registrarConfig(flags: Flags<typeof registrarSchema>, dir = workDir) {
  return loadRegistrarConfig({ configDirs: [], env: { KEYLIME_DIR: dir }, flags }).config
}

beforeAll(async () => {
  workDir = mkdtempSync(join(tmpdir(), 'kl-reg-hard-e2e-'))
  swtpm = await startSwtpm()
  const config = registrarConfig({
    tls_dir: 'generate',
    port: 0,
    tls_port: 0,
    database_url: 'sqlite',
    // one write per source every 2 s; registrations live 1 s
    registration_rate_limit_per_ip: 1,
    registration_rate_limit_window_ip: 2,
    registration_challenge_lifetime: 1,
  })
  registrar = await startRegistrar(config, log, { env: { KEYLIME_DIR: workDir } })
}, 60_000)

afterAll(async () => {
  await registrar?.close()
  await swtpm?.stop()
  rmSync(workDir, { recursive: true, force: true })
})

async function post(id: string) {
  const res = await request(`http://127.0.0.1:${registrar.httpPort}/v2.6/agents/${id}`, {
    method: 'POST',
    body: JSON.stringify({ aik_tpm: b64(tpm.akTpm), ek_tpm: b64(tpm.ekTpm), ip: '10.0.0.1', port: 9002 }),
  })
  return { status: res.statusCode, retryAfter: res.headers['retry-after'], json: await res.body.json() }
}

async function pendingRows(): Promise<number> {
  const db = await openDatabase<RegistrarDatabase>('sqlite', {
    dataDir: workDir,
    name: 'reg_data',
    migrations: false,
  })
  try {
    return (await db.selectFrom('registrarpending').select('agent_id').execute()).length
  } finally {
    await db.destroy()
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

describe('registrar protections over real sockets', () => {
  it('throttles a burst with 429 + Retry-After, and the sweep deletes what was never activated', async () => {
    const first = await post('burst-0')
    expect(first.status).toBe(200)
    const second = await post('burst-1')
    expect(second).toMatchObject({ status: 429, retryAfter: '2', json: { code: 429, results: {} } })
    expect(await pendingRows()).toBe(1)
    // lifetime 1 s, sweep every second
    const t0 = Date.now()
    while ((await pendingRows()) > 0 && Date.now() - t0 < 10_000) await sleep(200)
    expect(await pendingRows()).toBe(0)
    expect(Date.now() - t0).toBeLessThan(4_000)
  })

  it('our agent retries a 429 and completes registration and activation', async () => {
    // a registrar whose registrations outlive the agent's retries
    const dir = join(workDir, 'second')
    const second = await startRegistrar(
      registrarConfig(
        {
          tls_dir: 'generate',
          port: 0,
          tls_port: 0,
          database_url: 'sqlite',
          registration_rate_limit_per_ip: 1,
          registration_rate_limit_window_ip: 2,
        },
        dir,
      ),
      log,
      { env: { KEYLIME_DIR: dir } },
    )
    const config = loadAgentConfig({
      configDirs: [],
      env: {},
      overrides: {
        keylime_dir: join(workDir, 'agent'),
        tpm: swtpm.transport,
        uuid: 'b0b1c2d3-0000-4000-8000-0000000429aa',
        port: '0',
        contact_port: '9778',
        registrar_port: String(second.httpPort),
        enable_agent_mtls: 'false',
        enable_insecure_payload: 'true',
        // the POST takes the only token; the PUT is refused until the bucket refills (2 s)
        exponential_backoff_initial_delay: '500',
        exponential_backoff_max_retries: '5',
      },
    })
    const warnings: string[] = []
    const agentLog = pino(
      { level: 'warn' },
      new Writable({
        write(chunk, _enc, done) {
          warnings.push(JSON.parse(String(chunk)).msg)
          done()
        },
      }),
    )
    try {
      const agent = await startAgent({ config, deps: defaultAgentDeps(), log: agentLog })
      try {
        expect(
          warnings.filter((w) => /^activation failed \(registrar refused activation: 429 /.test(w)),
        ).not.toEqual([])
        expect((await second.service.show(agent.uuid)).aik_tpm).toBe(b64(agent.akPublic))
      } finally {
        await agent.close()
      }
    } finally {
      await second.close()
    }
  }, 60_000)

  it('warns of a tpm_cert_store without certificates, naming the folder; KEYLIME_TENANT_TPM_CERT_STORE gives it one', async () => {
    const empty = join(workDir, 'empty-store')
    const filled = join(workDir, 'filled-store')
    mkdirSync(empty)
    mkdirSync(filled)
    writeFileSync(join(filled, 'vendor-root.pem'), makeTestPki().caCert)
    const warningsWith = async (env: Record<string, string>) => {
      const warnings: string[] = []
      const capture = pino(
        { level: 'warn' },
        new Writable({
          write(chunk, _enc, done) {
            warnings.push(JSON.parse(String(chunk)).msg)
            done()
          },
        }),
      )
      const config = loadRegistrarConfig({
        configDirs: [],
        env: { KEYLIME_DIR: workDir, ...env },
        flags: { tls_dir: 'generate', port: 0, tls_port: 0, database_url: 'sqlite' },
      }).config
      const running = await startRegistrar(config, capture, { env: { KEYLIME_DIR: workDir } })
      await running.close()
      return warnings.filter((w) => w.includes('tpm_cert_store'))
    }
    // the folder exists but holds nothing: every IAK/IDevID registration would be refused
    const none = await warningsWith({ KEYLIME_TENANT_TPM_CERT_STORE: empty })
    expect(none).toHaveLength(1)
    expect(none[0]).toContain(`no certificate in tpm_cert_store ${empty}`)
    expect(await warningsWith({ KEYLIME_TENANT_TPM_CERT_STORE: filled })).toEqual([])
    expect(
      await warningsWith({
        KEYLIME_TENANT_TPM_CERT_STORE: filled,
        KEYLIME_REGISTRAR_TENANT_TPM_CERT_STORE: join(workDir, 'absent'),
      }),
    ).toHaveLength(1)
  }, 60_000)

  it('refuses to start with unusable settings', async () => {
    const bad = [
      { registration_challenge_lifetime: 0 },
      { registration_rate_limit_per_ip: -1 },
      { registration_rate_limit_window_ip: 0 },
      { require_trusted_ek_cert: true, tpm_cert_store: join(workDir, 'no-such-store') },
    ]
    for (const flags of bad) {
      const config = registrarConfig({
        tls_dir: 'generate',
        port: 0,
        tls_port: 0,
        database_url: 'sqlite',
        ...flags,
      })
      await expect(
        startRegistrar(config, log, { env: { KEYLIME_DIR: workDir } }),
        JSON.stringify(flags),
      ).rejects.toBeInstanceOf(ConfigError)
    }
  })
})
