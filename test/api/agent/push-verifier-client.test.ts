/**
 * How the push agent reads the verifier's answers (a real HTTP server in-process): success bodies and `Location`,
 * and each failure as the reaction it calls for: 401 re-authenticate, 429/503 with Retry-After wait as asked,
 * other 4xx refused, 5xx / garbage / unreachable retried with backoff. And `--registrar-url` as agent.conf options.
 */
import { createServer, type Server } from 'node:http'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { registrarUrlOverrides } from '../../../src/agent/push/main.ts'
import { PushVerifierClient, VerifierAnswerError } from '../../../src/agent/push/verifier-client.ts'

let server: Server
let client: PushVerifierClient
const seen: { method: string; url: string; auth?: string; type?: string; body: string }[] = []

const answers: Record<string, (res: import('node:http').ServerResponse) => void> = {
  '/v3.0/ok': (res) =>
    res
      .writeHead(201, {
        'content-type': 'application/vnd.api+json',
        location: '/v3.0/agents/a/attestations/7',
      })
      .end(JSON.stringify({ data: { id: '7', attributes: { stage: 'awaiting_evidence' } } })),
  '/v3.0/expired': (res) =>
    res
      .writeHead(401)
      .end(JSON.stringify({ errors: [{ status: '401', detail: 'Authentication token expired' }] })),
  '/v3.0/slow-down': (res) =>
    res
      .writeHead(429, { 'retry-after': '7' })
      .end(JSON.stringify({ errors: [{ status: '429', title: 'Too Many Requests' }] })),
  '/v3.0/busy': (res) => res.writeHead(503, { 'retry-after': '2' }).end(''),
  '/v3.0/busy-no-hint': (res) => res.writeHead(503).end(''),
  '/v3.0/expired-challenge': (res) =>
    res
      .writeHead(403)
      .end(JSON.stringify({ errors: [{ status: '403', code: 'challenges_expired', detail: 'x' }] })),
  '/v3.0/broken': (res) => res.writeHead(500).end('boom'),
  '/v3.0/not-json': (res) => res.writeHead(200).end('<html>'),
}

beforeAll(async () => {
  server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      seen.push({
        method: req.method ?? '',
        url: req.url ?? '',
        ...(req.headers.authorization ? { auth: req.headers.authorization } : {}),
        ...(req.headers['content-type'] ? { type: req.headers['content-type'] } : {}),
        body: Buffer.concat(chunks).toString(),
      })
      const answer = answers[req.url ?? '']
      if (answer) answer(res)
      else res.writeHead(404).end('')
    })
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()))
  const address = server.address()
  const port = typeof address === 'object' && address ? address.port : 0
  client = new PushVerifierClient({ baseUrl: `http://127.0.0.1:${port}/v3.0`, tls: {}, timeoutMs: 2000 })
})

afterAll(async () => {
  await client.close()
  await new Promise<void>((r) => server.close(() => r()))
})

const failure = (p: Promise<unknown>) =>
  p.then(
    () => {
      throw new Error('expected a failure')
    },
    (err: unknown) => err as VerifierAnswerError,
  )

describe('push agent verifier client', () => {
  it('sends JSON:API with the bearer token and returns body and Location', async () => {
    const r = await client.request('POST', '/ok', {
      token: 'sid.secret',
      body: { data: { type: 'attestation' } },
    })
    expect(r.status).toBe(201)
    expect(r.location).toBe('/v3.0/agents/a/attestations/7')
    expect(r.body).toEqual({ data: { id: '7', attributes: { stage: 'awaiting_evidence' } } })
    const sent = seen.at(-1)
    expect(sent).toMatchObject({
      method: 'POST',
      url: '/v3.0/ok',
      auth: 'Bearer sid.secret',
      type: 'application/vnd.api+json',
    })
    expect(JSON.parse(sent?.body ?? '')).toEqual({ data: { type: 'attestation' } })
    // a Location path is used as is
    await expect(client.request('PATCH', '/v3.0/ok')).resolves.toMatchObject({ status: 201 })
    expect(seen.at(-1)?.url).toBe('/v3.0/ok')
  })

  it('classifies failures by the reaction they need', async () => {
    expect(await failure(client.request('GET', '/expired'))).toMatchObject({
      kind: 'unauthenticated',
      status: 401,
      reason: 'Authentication token expired',
    })
    expect(await failure(client.request('POST', '/slow-down'))).toMatchObject({
      kind: 'throttled',
      retryAfterSeconds: 7,
    })
    expect(await failure(client.request('POST', '/busy'))).toMatchObject({
      kind: 'throttled',
      retryAfterSeconds: 2,
    })
    expect(await failure(client.request('POST', '/busy-no-hint'))).toMatchObject({
      kind: 'transient',
      status: 503,
    })
    expect(await failure(client.request('PATCH', '/expired-challenge'))).toMatchObject({
      kind: 'refused',
      reason: 'challenges_expired',
    })
    expect(await failure(client.request('POST', '/nowhere'))).toMatchObject({ kind: 'refused', status: 404 })
    expect(await failure(client.request('POST', '/broken'))).toMatchObject({ kind: 'transient', status: 500 })
    expect(await failure(client.request('GET', '/not-json'))).toMatchObject({
      kind: 'transient',
      status: 200,
    })
    const down = new PushVerifierClient({ baseUrl: 'http://127.0.0.1:1/v3.0', tls: {}, timeoutMs: 1000 })
    try {
      const err = await failure(down.request('POST', '/sessions'))
      expect(err).toBeInstanceOf(VerifierAnswerError)
      expect(err.kind).toBe('transient')
      expect(err.status).toBeUndefined()
    } finally {
      await down.close()
    }
  })

  it('turns --registrar-url into the registrar options', () => {
    expect(registrarUrlOverrides('https://10.0.0.5:9891')).toEqual({
      registrar_ip: '10.0.0.5',
      registrar_tls_enabled: 'true',
      registrar_tls_port: '9891',
    })
    expect(registrarUrlOverrides('http://[::1]:8890')).toEqual({
      registrar_ip: '::1',
      registrar_tls_enabled: 'false',
      registrar_port: '8890',
    })
    expect(() => registrarUrlOverrides('ftp://x')).toThrow(/http/)
    expect(() => registrarUrlOverrides('not a url')).toThrow(/not a URL/)
  })
})
