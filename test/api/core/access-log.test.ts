/**
 * Access and error logs of the shared server factory: one line per answered request at debug, carrying the request id
 * that the response echoes (the caller's, sanitised, or a fresh one); probes never logged; nothing at the default
 * level; a 5xx logged with its stack and the chain of causes while the answer stays generic.
 */
import { Writable } from 'node:stream'
import pino from 'pino'
import { describe, expect, it } from 'vitest'
import { createKeylimeServer } from '../../../src/api/server.ts'

function capture(level: string) {
  const lines: Record<string, unknown>[] = []
  const sink = new Writable({
    write(chunk, _enc, done) {
      for (const l of String(chunk).split('\n')) if (l) lines.push(JSON.parse(l))
      done()
    },
  })
  const app = createKeylimeServer({ logger: pino({ level }, sink) })
  app.get('/things/:id', async (request) => ({ id: (request.params as { id: string }).id }))
  app.get('/broken', async () => {
    const refused = Object.assign(new Error('write EPROTO 10.0.0.9:6000'), { code: 'EPROTO' })
    throw new Error('webhook delivery failed', { cause: refused })
  })
  return { app, lines }
}

describe('access log', () => {
  it('one debug line per request with the echoed request id; none for probes', async () => {
    const { app, lines } = capture('debug')
    app.get('/healthz', async () => ({ status: 'ok' }))
    const given = await app.inject({ url: '/things/7?x=secret', headers: { 'x-request-id': 'abc-123<>' } })
    expect(given.headers['x-request-id']).toBe('abc123')
    const fresh = await app.inject({ url: '/things/8' })
    const freshId = String(fresh.headers['x-request-id'])
    expect(freshId).toMatch(/^[0-9a-f-]{36}$/)
    await app.inject({ url: '/healthz' })
    await app.inject({ url: '/nowhere' })
    const access = lines.filter((l) => l.msg === 'request')
    expect(access.map((l) => [l.reqId, l.method, l.path, l.status])).toEqual([
      ['abc123', 'GET', '/things/7', 200],
      [freshId, 'GET', '/things/8', 200],
      [expect.any(String), 'GET', '/nowhere', 404],
    ])
    // the query string (which could carry anything) is not logged
    expect(JSON.stringify(lines)).not.toContain('secret')
    expect(typeof access[0]?.ms).toBe('number')
  })

  it('nothing at the default level', async () => {
    const { app, lines } = capture('info')
    await app.inject({ url: '/things/1' })
    expect(lines).toEqual([])
  })

  it('a 5xx is logged with stack and cause, under the id the response echoes; the answer stays generic', async () => {
    const { app, lines } = capture('info')
    const r = await app.inject({ url: '/broken', headers: { 'x-request-id': 'trace42' } })
    expect(r.statusCode).toBe(500)
    expect(r.headers['x-request-id']).toBe('trace42')
    expect(r.body).not.toContain('EPROTO')
    const failed = lines.find((l) => l.msg === 'request failed') as {
      reqId: string
      err: Record<string, string>
    }
    expect(failed.reqId).toBe('trace42')
    expect(failed.err.message).toBe('webhook delivery failed: write EPROTO 10.0.0.9:6000')
    expect(failed.err.stack).toMatch(/webhook delivery failed\n\s+at [\s\S]*caused by: Error: write EPROTO/)
  })
})
