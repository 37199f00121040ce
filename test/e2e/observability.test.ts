/**
 * Health, readiness and metrics as the services run them: the registrar's counters move with registrations and
 * activations; the agent on swtpm times its quotes and reports its TPM ready; a verifier process on a private
 * PostgreSQL cluster reports its loop, agents by state and leases, turns not ready while PostgreSQL is stopped (the
 * process stays up and alive) and ready again once it is back. The plain probe listener serves nothing else.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { request } from 'undici'
import { afterAll, describe, expect, it } from 'vitest'
import { loadAgentConfig } from '../../src/agent/config.ts'
import { activationAuthTag } from '../../src/agent/registration.ts'
import { defaultAgentDeps, startAgent } from '../../src/agent/runtime.ts'
import { AgentClient } from '../../src/api/agent/client.ts'
import { createLogger } from '../../src/common/log.ts'
import { loadRegistrarConfig } from '../../src/config/registrar.ts'
import { ensureTlsDir } from '../../src/crypto/ca.ts'
import { startRegistrar } from '../../src/registrar/server.ts'
import { activateCredentialInSoftware, softwareTpm } from '../api/registrar/software-tpm.ts'
import { privatePgCluster, type SimAgent, startVerifierCluster, waitFor } from '../chaos/harness.ts'
import { freeLocalPort } from '../helpers/free-port.ts'
import { startSwtpm } from '../helpers/swtpm.ts'
import { enrollBody } from '../unit/verifier/harness.ts'

const log = createLogger('observability-e2e', 'silent')
const cleanups: (() => Promise<unknown> | unknown)[] = []
afterAll(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

/** One GET on its own connection: a reused keep-alive socket the server is closing would fail a poll spuriously. */
async function get(url: string): Promise<{ status: number; text: string; type: string }> {
  const res = await request(url, { headersTimeout: 5000, bodyTimeout: 5000, reset: true })
  return { status: res.statusCode, text: await res.body.text(), type: String(res.headers['content-type']) }
}

/** Value of one sample in Prometheus text; undefined when the series is absent. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (!m || m[1] !== name) continue
    const have = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]))
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(m[3])
  }
  return undefined
}

const b64 = (u: Uint8Array) => Buffer.from(u).toString('base64')

describe('registrar', () => {
  it('counts registrations and activations by outcome; probes answer on both listeners', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kl-obs-reg-'))
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }))
    const metricsPort = await freeLocalPort()
    const { config } = loadRegistrarConfig({
      configDirs: [],
      env: { KEYLIME_DIR: dir },
      flags: { tls_dir: 'generate', port: 0, tls_port: 0, database_url: 'sqlite', metrics_port: metricsPort },
    })
    const registrar = await startRegistrar(config, log, { env: { KEYLIME_DIR: dir } })
    cleanups.push(() => registrar.close())
    expect(registrar.metricsPort).toBe(metricsPort)
    const main = `http://127.0.0.1:${registrar.httpPort}`
    const probe = `http://127.0.0.1:${metricsPort}`

    for (const base of [main, probe]) {
      expect(await get(`${base}/healthz`)).toMatchObject({ status: 200, text: '{"status":"ok"}' })
      const ready = await get(`${base}/readyz`)
      expect(ready.status).toBe(200)
      expect(JSON.parse(ready.text)).toEqual({
        status: 'ready',
        checks: { database: 'ok', migrations: 'ok' },
      })
    }
    // on the service's plain-HTTP port /metrics is an admin route (refused as upstream refuses admin over HTTP)
    expect((await get(`${main}/metrics`)).status).toBe(400)
    // the probe listener has no other route
    expect((await get(`${probe}/v2.6/agents`)).status).toBe(404)
    expect((await get(`${probe}/version`)).status).toBe(404)

    const scrape = async () => {
      const r = await get(`${probe}/metrics`)
      expect(r.status).toBe(200)
      expect(r.type).toMatch(/^text\/plain; version=0\.0\.4/)
      return r.text
    }
    const before = await scrape()
    expect(sample(before, 'keylime_registrar_registrations_total', { outcome: 'ok' })).toBe(0)
    expect(sample(before, 'nodejs_eventloop_lag_p99_seconds')).toBeGreaterThanOrEqual(0)
    expect(sample(before, 'process_cpu_seconds_total')).toBeGreaterThan(0)

    const tpm = softwareTpm()
    const id = 'obs-agent-1'
    const reg = await request(`${main}/v2.6/agents/${id}`, {
      method: 'POST',
      body: JSON.stringify({ aik_tpm: b64(tpm.akTpm), ek_tpm: b64(tpm.ekTpm), ip: '10.0.0.1', port: 9002 }),
    })
    expect(reg.statusCode).toBe(200)
    const blob = ((await reg.body.json()) as { results: { blob: string } }).results.blob
    const bad = await request(`${main}/v2.6/agents/${id}/activate`, {
      method: 'POST',
      body: JSON.stringify({ auth_tag: 'ab'.repeat(48) }),
    })
    expect(bad.statusCode).toBeGreaterThanOrEqual(400)
    expect(bad.statusCode).toBeLessThan(500)
    await bad.body.dump()
    const good = await request(`${main}/v2.6/agents/${id}/activate`, {
      method: 'POST',
      body: JSON.stringify({ auth_tag: activationAuthTag(activateCredentialInSoftware(tpm, blob), id) }),
    })
    expect(good.statusCode).toBe(200)
    await good.body.dump()
    const invalid = await request(`${main}/v2.6/agents/${id}`, { method: 'POST', body: '{"aik_tpm": 1}' })
    expect(invalid.statusCode).toBe(400)
    await invalid.body.dump()

    const after = await scrape()
    expect(sample(after, 'keylime_registrar_registrations_total', { outcome: 'ok' })).toBe(1)
    expect(sample(after, 'keylime_registrar_registrations_total', { outcome: 'refused' })).toBe(1)
    expect(sample(after, 'keylime_registrar_activations_total', { outcome: 'ok' })).toBe(1)
    expect(sample(after, 'keylime_registrar_activations_total', { outcome: 'refused' })).toBe(1)
    // no agent id in any label
    expect(after).not.toContain(id)
  })

  it('is alive but not ready when its migrations were not applied (auto_migrate_db = False)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kl-obs-reg-nomig-'))
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }))
    const { config } = loadRegistrarConfig({
      configDirs: [],
      env: { KEYLIME_DIR: dir },
      flags: { tls_dir: 'generate', port: 0, tls_port: 0, database_url: 'sqlite', auto_migrate_db: false },
    })
    const registrar = await startRegistrar(config, log, { env: { KEYLIME_DIR: dir } })
    cleanups.push(() => registrar.close())
    expect(registrar.metricsPort).toBeNull()
    const base = `http://127.0.0.1:${registrar.httpPort}`
    expect((await get(`${base}/healthz`)).status).toBe(200)
    const ready = await get(`${base}/readyz`)
    expect(ready.status).toBe(503)
    expect(JSON.parse(ready.text)).toEqual({
      status: 'not ready',
      checks: { database: 'ok', migrations: 'failing' },
    })
  })
})

describe('agent on swtpm', () => {
  it('times quotes and reports the TPM ready on the probe listener', async () => {
    const swtpm = await startSwtpm()
    cleanups.push(() => swtpm.stop())
    const dir = mkdtempSync(join(tmpdir(), 'kl-obs-agent-'))
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }))
    await ensureTlsDir(join(dir, 'cv_ca'))
    const metricsPort = await freeLocalPort()
    const config = loadAgentConfig({
      configDirs: [],
      env: {},
      overrides: {
        keylime_dir: dir,
        tpm: swtpm.transport,
        port: '0',
        uuid: 'generate',
        ima_ml_path: join(dir, 'ascii_runtime_measurements'),
        measuredboot_ml_path: join(dir, 'no-boot-log'),
        metrics_port: String(metricsPort),
      },
    })
    const agent = await startAgent({ config, deps: defaultAgentDeps(), log, register: false })
    cleanups.push(() => agent.close())
    const probe = `http://127.0.0.1:${agent.metricsPort}`
    expect(agent.metricsPort).toBe(metricsPort)
    expect((await get(`${probe}/healthz`)).status).toBe(200)
    // no quote yet: readiness asks the TPM for a PCR read
    expect(JSON.parse((await get(`${probe}/readyz`)).text)).toEqual({
      status: 'ready',
      checks: { tpm: 'ok' },
    })
    expect((await get(`${probe}/v2.6/quotes/identity?nonce=abc`)).status).toBe(404)

    const client = new AgentClient({
      baseUrl: `https://127.0.0.1:${agent.port}`,
      apiVersion: '2.6',
      tls: {
        ca: agent.mtlsCertPem,
        cert: await readFile(join(dir, 'cv_ca', 'client-cert.crt'), 'utf8'),
        key: await readFile(join(dir, 'cv_ca', 'client-private.pem'), 'utf8'),
      },
    })
    cleanups.push(() => client.close())
    await client.identityQuote('nonce1234567890')
    await client.identityQuote('nonce1234567891')
    const text = (await get(`${probe}/metrics`)).text
    const count = sample(text, 'keylime_agent_quote_duration_seconds_count', {
      kind: 'identity',
      outcome: 'ok',
    })
    expect(count).toBe(2)
    const sum = sample(text, 'keylime_agent_quote_duration_seconds_sum', { kind: 'identity', outcome: 'ok' })
    expect(sum).toBeGreaterThan(0)
    expect(sum).toBeLessThan(30)
  }, 60_000)
})

describe('verifier process on PostgreSQL', () => {
  it('reports loop, agents by state and leases; readiness follows PostgreSQL while the process stays up', async () => {
    const pg = await privatePgCluster()
    cleanups.push(() => pg.destroy())
    const metricsPort = await freeLocalPort()
    const c = await startVerifierCluster({
      agents: 3,
      dbUrl: pg.url,
      leaseSeconds: 30,
      env: { KEYLIME_VERIFIER_METRICS_PORT: String(metricsPort) },
    })
    cleanups.push(() => c.close())
    const probe = `http://127.0.0.1:${metricsPort}`
    await waitFor(
      async () => (await get(`${probe}/healthz`).catch(() => null))?.status === 200,
      30_000,
      'probe',
    )
    expect(JSON.parse((await get(`${probe}/readyz`)).text)).toEqual({
      status: 'ready',
      checks: { database: 'ok', migrations: 'ok', leases: 'ok' },
    })
    // the mTLS listener: /metrics for an admin certificate
    const adminScrape = await c.call('GET', '/metrics')
    expect(adminScrape.status).toBe(200)

    // two agents enrolled with their real PCR 15, one with a PCR 15 value its quotes never show
    const [victim, ...good] = c.fleet.agents as [SimAgent, ...SimAgent[]]
    for (const a of good)
      expect((await c.call('POST', `/v2.6/agents/${a.id}`, enrollBody(a, c.fleet.port))).status).toBe(200)
    const pcr15 = victim.quoter.pcrs.get(15) as Buffer
    const wrong = JSON.stringify({ '15': [Buffer.alloc(pcr15.length, 0xab).toString('hex')], mask: '0x8000' })
    expect(
      (
        await c.call(
          'POST',
          `/v2.6/agents/${victim.id}`,
          enrollBody(victim, c.fleet.port, { tpm_policy: wrong }),
        )
      ).status,
    ).toBe(200)
    await waitFor(() => good.every((a) => a.quotes >= 3), 60_000, 'first attestations')
    const refused = (t: string) =>
      (sample(t, 'keylime_verifier_agents', { state: 'failed' }) ?? 0) +
      (sample(t, 'keylime_verifier_agents', { state: 'invalid_quote' }) ?? 0)
    await waitFor(
      async () => refused((await get(`${probe}/metrics`)).text) === 1,
      30_000,
      'refused agent in the state gauge',
    )
    const text = (await get(`${probe}/metrics`)).text
    expect(
      sample(text, 'keylime_verifier_loop_attestations_total', { result: 'pass' }),
    ).toBeGreaterThanOrEqual(6)
    expect(
      sample(text, 'keylime_verifier_loop_attestations_total', { result: 'fail' }),
    ).toBeGreaterThanOrEqual(1)
    // recorded by the loop itself: results with the failure's event id, and the batched result writes
    expect(
      sample(text, 'keylime_verifier_attestations_total', { result: 'pass', event_id: '' }),
    ).toBeGreaterThanOrEqual(6)
    expect(
      sample(text, 'keylime_verifier_attestations_total', {
        result: 'fail',
        event_id: 'pcr_validation.invalid_pcr_15',
      }),
    ).toBeGreaterThanOrEqual(1)
    expect(sample(text, 'keylime_verifier_db_write_batch_rows_count')).toBeGreaterThanOrEqual(1)
    expect(sample(text, 'keylime_verifier_leases', { status: 'valid' })).toBe(3)
    expect(sample(text, 'keylime_verifier_leases', { status: 'expired' })).toBe(0)
    expect(sample(text, 'keylime_verifier_revocation_deliveries_total', { outcome: 'dropped' })).toBe(0)
    expect(
      sample(text, 'keylime_verifier_scheduler_lag_seconds', { quantile: '0.99' }),
    ).toBeGreaterThanOrEqual(0)
    const healthy =
      (sample(text, 'keylime_verifier_agents', { state: 'get_quote' }) ?? 0) +
      (sample(text, 'keylime_verifier_agents', { state: 'provide_v' }) ?? 0)
    expect(healthy).toBe(2)
    for (const a of c.fleet.agents) expect(text).not.toContain(a.id)

    pg.stop()
    await waitFor(async () => (await get(`${probe}/readyz`)).status === 503, 15_000, 'not ready')
    expect(JSON.parse((await get(`${probe}/readyz`)).text)).toMatchObject({
      status: 'not ready',
      checks: { database: 'failing' },
    })
    expect((await get(`${probe}/healthz`)).status).toBe(200)
    // scraping still works; the database-backed gauges are left out rather than reported as zero
    const down = await get(`${probe}/metrics`)
    expect(down.status).toBe(200)
    expect(sample(down.text, 'keylime_verifier_agents', { state: 'get_quote' })).toBeUndefined()
    expect(sample(down.text, 'keylime_verifier_loop_agents')).toBeGreaterThanOrEqual(2)

    const passedBeforeRestart =
      sample(down.text, 'keylime_verifier_loop_attestations_total', { result: 'pass' }) ?? 0
    pg.start()
    await waitFor(async () => (await get(`${probe}/readyz`)).status === 200, 30_000, 'ready again')
    expect(c.current.exited, c.current.stderr).toBe(false)
    // recovered, not only ready: the counters move on
    await waitFor(
      async () =>
        (sample((await get(`${probe}/metrics`)).text, 'keylime_verifier_loop_attestations_total', {
          result: 'pass',
        }) ?? 0) >=
        passedBeforeRestart + 2,
      30_000,
      'attestations after the restart',
    )
  }, 180_000)
})
