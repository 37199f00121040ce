import { createHmac } from 'node:crypto'
import Fastify from 'fastify'
import { afterEach, describe, expect, it } from 'vitest'
import {
  activationAuthTag,
  RegistrarConnection,
  RegistrationError,
  withBackoff,
} from '../../../src/agent/registration.ts'
import { createLogger } from '../../../src/common/log.ts'

const log = createLogger('agent-test', 'silent')
let close: (() => Promise<void>) | null = null
afterEach(async () => {
  await close?.()
  close = null
})

// A scripted registrar endpoint to observe the agent's HTTP behaviour (retries, versions, bodies).
async function scriptedRegistrar(script: { version: number; post: number[]; put: number[] }) {
  const app = Fastify()
  const seen: { method: string; url: string; body: unknown }[] = []
  let posts = 0
  let puts = 0
  app.get('/version', async (_req, reply) =>
    script.version === 200
      ? {
          code: 200,
          status: 'Success',
          results: { current_version: '2.6', supported_versions: ['2.0', '2.6'] },
        }
      : reply.code(script.version).send(),
  )
  app.post('/v:ver/agents/:id', async (req, reply) => {
    seen.push({ method: 'POST', url: req.url, body: req.body })
    const code = script.post[posts++] ?? 200
    return reply.code(code).send({
      code,
      status: code === 200 ? 'Success' : 'nope',
      results: code === 200 ? { blob: 'QkxPQg==' } : {},
    })
  })
  app.put('/v:ver/agents/:id', async (req, reply) => {
    seen.push({ method: 'PUT', url: req.url, body: req.body })
    const code = script.put[puts++] ?? 200
    return reply.code(code).send({ code, status: code === 200 ? 'Success' : 'bad tag', results: {} })
  })
  await app.listen({ host: '127.0.0.1', port: 0 })
  close = () => app.close()
  const addr = app.server.address()
  return { port: typeof addr === 'object' && addr ? addr.port : 0, seen }
}

const req = {
  uuid: 'd432fbb3-d2f1-4a97-9ef7-75bd81c00000',
  ekTpm: 'RUs=',
  ekCert: null,
  aikTpm: 'QUs=',
  mtlsCert: 'disabled',
  ip: '127.0.0.1',
  port: 9002,
}
const policy = { initialDelayMs: 10, maxRetries: 5, maxDelayMs: 25 }

describe('registration', () => {
  it('negotiates the version, retries 5xx with capped exponential backoff, then registers and activates', async () => {
    const r = await scriptedRegistrar({ version: 200, post: [503, 500, 200], put: [200] })
    const conn = new RegistrarConnection({ ip: '127.0.0.1', port: r.port, log })
    const delays: number[] = []
    const sleep = async (ms: number) => {
      delays.push(ms)
    }
    const blob = await withBackoff('registration', policy, log, () => conn.register(req), sleep)
    expect(blob).toBe('QkxPQg==')
    expect(delays).toEqual([10, 20])
    await conn.activate(req.uuid, 'ab'.repeat(48))
    expect(r.seen.map((s) => `${s.method} ${s.url}`)).toEqual([
      `POST /v2.6/agents/${req.uuid}`,
      `POST /v2.6/agents/${req.uuid}`,
      `POST /v2.6/agents/${req.uuid}`,
      `PUT /v2.6/agents/${req.uuid}`,
    ])
    expect(r.seen[0]?.body).toEqual({
      aik_tpm: 'QUs=',
      ek_tpm: 'RUs=',
      ekcert: null,
      mtls_cert: 'disabled',
      ip: '127.0.0.1',
      port: 9002,
    })
    expect(r.seen[3]?.body).toEqual({ auth_tag: 'ab'.repeat(48) })
  })

  it('treats 403 as final and gives up after max retries on 5xx', async () => {
    const r = await scriptedRegistrar({ version: 200, post: [403, 503, 503, 503], put: [] })
    const conn = new RegistrarConnection({ ip: '127.0.0.1', port: r.port, log })
    const sleep = async () => undefined
    const e1 = await withBackoff('registration', policy, log, () => conn.register(req), sleep).catch((e) => e)
    expect(e1).toBeInstanceOf(RegistrationError)
    expect((e1 as RegistrationError).httpStatus).toBe(403)
    const p2 = { ...policy, maxRetries: 2 }
    const e2 = await withBackoff('registration', p2, log, () => conn.register(req), sleep).catch((e) => e)
    expect((e2 as RegistrationError).httpStatus).toBe(503)
    expect(r.seen).toHaveLength(4)
  })

  it("retries a registrar's 429 (rate limit) on registration and activation like a 5xx", async () => {
    const r = await scriptedRegistrar({ version: 200, post: [429, 200], put: [429, 429, 200] })
    const conn = new RegistrarConnection({ ip: '127.0.0.1', port: r.port, log })
    const sleep = async () => undefined
    await withBackoff('registration', policy, log, () => conn.register(req), sleep)
    await withBackoff('activation', policy, log, () => conn.activate(req.uuid, 'ab'.repeat(48)), sleep)
    expect(r.seen.map((s) => s.method)).toEqual(['POST', 'POST', 'PUT', 'PUT', 'PUT'])
  })

  it('falls back to trying versions newest-first when /version fails', async () => {
    const r = await scriptedRegistrar({ version: 500, post: [404, 200], put: [] })
    const conn = new RegistrarConnection({ ip: '127.0.0.1', port: r.port, log })
    await conn.register(req)
    expect(r.seen.map((s) => s.url)).toEqual([`/v2.6/agents/${req.uuid}`, `/v2.5/agents/${req.uuid}`])
    expect(conn.version).toBe('2.5')
  })

  it('fails fast on an unreachable registrar with a retryable typed error', async () => {
    const conn = new RegistrarConnection({ ip: '127.0.0.1', port: 1, log, timeoutMs: 2_000 })
    const e = await conn.register(req).catch((x) => x)
    expect(e).toBeInstanceOf(RegistrationError)
    expect((e as RegistrationError).retryable).toBe(true)
  })

  it('computes auth_tag = HMAC-SHA384(b64(challenge), uuid)', () => {
    const challenge = Buffer.from('abcdefghijklmnopqrstuvwxyz012345')
    const expected = createHmac('sha384', 'YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXowMTIzNDU=')
      .update(req.uuid)
      .digest('hex')
    expect(activationAuthTag(challenge, req.uuid)).toBe(expected)
  })
})
