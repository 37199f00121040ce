/**
 * The agent's own HTTP layer (no fastify): what it answers beyond the routes (probes, request ids, bad URLs, body
 * limits, handler failures), its plain probe listener, and that loading the agent never loads fastify.
 */
import { spawnSync } from 'node:child_process'
import { get as httpGet, request as httpRequest } from 'node:http'
import pino from 'pino'
import { Registry } from 'prom-client'
import { afterAll, describe, expect, it } from 'vitest'
import { type AgentServices, buildAgentApp } from '../../../src/agent/app.ts'
import { type AgentHttpServer, startAgentProbeListener } from '../../../src/agent/http-server.ts'
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

  it('loading the agent never loads fastify (the registrar and verifier factory does)', () => {
    const loaded = (modules: string[]) => {
      const script = `
        for (const m of ${JSON.stringify(modules)}) await import(m)
        const { createRequire } = await import('node:module')
        const cache = createRequire(import.meta.url).cache
        console.log(Object.keys(cache).some((k) => k.includes('/node_modules/fastify/')))`
      const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
        encoding: 'utf8',
        timeout: 60_000,
      })
      expect(r.status, r.stderr).toBe(0)
      return r.stdout.trim()
    }
    const root = new URL('../../../', import.meta.url).pathname
    expect(loaded([`${root}src/cli/commands/agent.ts`, `${root}src/agent/main.ts`])).toBe('false')
    expect(loaded([`${root}src/api/server.ts`])).toBe('true')
  }, 120_000)
})
