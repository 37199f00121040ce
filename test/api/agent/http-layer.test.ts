/**
 * The agent's own HTTP layer (no fastify): what it answers beyond the routes (probes, request ids, bad URLs, body
 * limits, handler failures), its plain probe listener, and that loading the agents never loads fastify, prom-client
 * or typebox.
 */
import { spawnSync } from 'node:child_process'
import { get as httpGet, request as httpRequest } from 'node:http'
import pino from 'pino'
import { Registry } from 'prom-client'
import { afterAll, describe, expect, it } from 'vitest'
import { type AgentServices, buildAgentApp } from '../../../src/agent/app.ts'
import { type AgentHttpServer, httpDate, startAgentProbeListener } from '../../../src/agent/http-server.ts'
import { AGENT_API_VERSIONS } from '../../../src/api/versions.ts'

const services: AgentServices = {
  info: () => ({
    agent_uuid: 'u',
    tpm_hash_alg: 'sha256',
    tpm_enc_alg: 'rsa',
    tpm_sign_alg: 'rsassa',
    ak_handle: 1,
  }),
  pubkeyPem: () => 'PEM',
  identityQuote: async () => {
    throw new Error('TPM said secret-detail')
  },
  integrityQuote: async () => ({ quote: 'r', hash_alg: 'sha256', enc_alg: 'rsa', sign_alg: 'rsassa' }),
  postUkey: async () => undefined,
  postVkey: async () => undefined,
  verify: () => null,
  postRevocation: () => undefined,
}
const logged: Record<string, unknown>[] = []
const logger = pino({ level: 'warn' }, { write: (l: string) => void logged.push(JSON.parse(l)) })
let ready = true
const registry = new Registry()
const probes = { readiness: async () => ({ tpm: ready }), metrics: registry }
const app = buildAgentApp({
  services,
  apiVersions: [...AGENT_API_VERSIONS],
  logger,
  payloadLimit: 1000,
  probes,
})
const opened: AgentHttpServer[] = []
afterAll(async () => {
  await Promise.all([app.close(), ...opened.map((o) => o.close())])
})

function fetchRaw(
  port: number,
  method: string,
  path: string,
): Promise<{ status: number; body: string; allow?: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, method, path, agent: false }, (res) => {
      let body = ''
      res.on('data', (c: Buffer) => {
        body += c.toString()
      })
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          body,
          ...(res.headers.allow ? { allow: res.headers.allow } : {}),
        }),
      )
    })
    req.on('error', reject)
    req.end()
  })
}

describe('the agent HTTP layer', () => {
  it('echoes a sanitised request id or makes one', async () => {
    const given = await app.inject({ url: '/version', headers: { 'x-request-id': 'abc-123<>' } })
    expect(given.headers['x-request-id']).toBe('abc123')
    const fresh = await app.inject({ url: '/nowhere' })
    expect(fresh.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/)
  })

  it('dates every answer (HTTP Date header), written as toUTCString writes it', async () => {
    const before = Math.floor(Date.now() / 1000) * 1000
    for (const url of ['/version', '/nowhere', '/healthz']) {
      const date = String((await app.inject({ url })).headers.date)
      expect(date).toMatch(
        /^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT$/,
      )
      expect(Date.parse(date)).toBeGreaterThanOrEqual(before)
      expect(Date.parse(date)).toBeLessThanOrEqual(Date.now())
    }
    const times = [
      0,
      Date.UTC(2024, 1, 29, 23, 59, 59),
      Date.UTC(2026, 11, 31, 0, 0, 1),
      Date.UTC(9999, 11, 31),
    ]
    for (let i = 0; i < 1000; i++)
      times.push(Date.UTC(1000, 0, 1) + Math.floor(Math.random() * Date.UTC(8999, 0, 1)))
    for (const t of times) expect(httpDate(t), String(t)).toBe(new Date(t).toUTCString())
  })

  it('answers bad percent-encoding in the path with a 400 envelope, and decodes good escapes', async () => {
    const r = await app.inject({ url: '/v2.6/keys/%zz' })
    expect(r.statusCode).toBe(400)
    expect(r.json()).toEqual({
      code: 400,
      status: 'Malformed Request Parameter: the URL is not valid',
      results: {},
    })
    expect((await app.inject({ url: '/v2.6/keys/%70ubkey' })).json().results.pubkey).toBe('PEM')
    // an encoded slash stays inside its segment
    expect((await app.inject({ url: '/v2.6/keys%2Fpubkey' })).statusCode).toBe(400)
  })

  it('refuses a payload over payloadLimit before it reaches the service', async () => {
    const body = JSON.stringify({ encrypted_key: 'a'.repeat(2000), auth_tag: 'b' })
    const r = await app.inject({ method: 'POST', url: '/v2.6/keys/ukey', payload: body })
    expect(r.statusCode).toBe(413)
    expect(r.json()).toEqual({ code: 413, status: 'Request body too large', results: {} })
  })

  it('answers a failing service with a generic 500 and logs the cause', async () => {
    const r = await app.inject({ url: '/v2.6/quotes/identity?nonce=abc' })
    expect(r.statusCode).toBe(500)
    expect(r.json()).toEqual({ code: 500, status: 'Internal Server Error', results: {} })
    expect(r.body).not.toContain('secret-detail')
    expect(logged.some((l) => l.msg === 'request failed' && l.reqId === r.headers['x-request-id'])).toBe(true)
  })

  it('serves /healthz and /readyz, and /metrics only to a trusted client certificate', async () => {
    const health = await app.inject({ url: '/healthz' })
    expect(health.json()).toEqual({ status: 'ok' })
    expect(health.headers['cache-control']).toBe('no-store')
    expect((await app.inject({ url: '/readyz' })).json()).toEqual({ status: 'ready', checks: { tpm: 'ok' } })
    ready = false
    const notReady = await app.inject({ url: '/readyz' })
    ready = true
    expect(notReady.statusCode).toBe(503)
    expect(notReady.json()).toEqual({ status: 'not ready', checks: { tpm: 'failing' } })
    // plain HTTP never reaches an admin route (as the other services)
    const metrics = await app.inject({ url: '/metrics' })
    expect(metrics.statusCode).toBe(400)
    expect(metrics.body).toBe('')
  })

  it('the plain probe listener serves the probes openly and nothing else', async () => {
    const probe = await startAgentProbeListener({ ...probes, host: '127.0.0.1', port: 0 })
    opened.push(probe)
    const port = probe.port()
    const metrics = await new Promise<{ status: number; type: string | undefined }>((resolve, reject) =>
      httpGet({ host: '127.0.0.1', port, path: '/metrics' }, (res) => {
        res.resume()
        resolve({ status: res.statusCode ?? 0, type: res.headers['content-type'] })
      }).on('error', reject),
    )
    expect(metrics).toEqual({ status: 200, type: registry.contentType })
    expect((await fetchRaw(port, 'GET', '/readyz')).status).toBe(200)
    expect((await fetchRaw(port, 'GET', '/v2.6/keys/pubkey')).status).toBe(404)
    expect(await fetchRaw(port, 'POST', '/healthz')).toEqual({ status: 405, body: '', allow: 'GET' })
  })

  // undici too: it needs WebAssembly, which the agents' units turn off (--jitless)
  it('loading the agents never loads fastify, prom-client, typebox or undici (the registrar and verifier do)', () => {
    /** Which of the packages the given modules load (CommonJS ones through the require cache, ES ones by hook). */
    const loaded = (modules: string[]) => {
      const script = `
        const { register, createRequire } = await import('node:module')
        const { MessageChannel } = await import('node:worker_threads')
        const urls = []
        const { port1, port2 } = new MessageChannel()
        port1.on('message', (u) => urls.push(u))
        register('data:text/javascript,' + encodeURIComponent(
          'let port; export function initialize(d) { port = d.port }' +
          'export async function load(u, c, next) { port.postMessage(u); return next(u, c) }'),
          { data: { port: port2 }, transferList: [port2] })
        for (const m of ${JSON.stringify(modules)}) await import(m)
        await new Promise((r) => setTimeout(r, 100))
        port1.close()
        const all = [...urls, ...Object.keys(createRequire(import.meta.url).cache)]
        const names = { fastify: '/node_modules/fastify/', 'prom-client': '/node_modules/prom-client/',
          typebox: '/node_modules/@sinclair/typebox/', undici: '/node_modules/undici/' }
        console.log(JSON.stringify(Object.keys(names).filter((n) => all.some((u) => u.includes(names[n])))))`
      const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
        encoding: 'utf8',
        timeout: 60_000,
      })
      expect(r.status, r.stderr).toBe(0)
      return JSON.parse(r.stdout.trim()) as string[]
    }
    const root = new URL('../../../', import.meta.url).pathname
    expect(
      loaded([
        `${root}src/cli/commands/agent.ts`,
        `${root}src/agent/main.ts`,
        `${root}src/agent/push/main.ts`,
        `${root}src/agent/runtime.ts`,
        `${root}src/agent/registration.ts`,
      ]),
    ).toEqual([])
    // the check sees each of them where they are used
    expect(
      loaded([
        `${root}src/api/server.ts`,
        `${root}src/api/metrics.ts`,
        `${root}src/api/schemas.ts`,
        `${root}src/api/agent/client.ts`,
      ]),
    ).toEqual(['fastify', 'prom-client', 'typebox', 'undici'])
  }, 120_000)
})
