/**
 * Issue #17 item 2 on the verifier: an unauthenticated 100 MB body to an admin route is refused before it is read
 * (fast 403, memory bounded, the event loop stays free), a public route cuts a huge chunked body off at its limit
 * while streaming, and a 10 MB body to a small-limit route is a 413 envelope.
 */
import { connect } from 'node:net'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ADMIN, makeVerifier } from '../../unit/verifier/harness.ts'

let v: Awaited<ReturnType<typeof makeVerifier>>
let port: number
beforeAll(async () => {
  v = await makeVerifier()
  await v.app.listen({ host: '127.0.0.1', port: 0 })
  const a = v.app.server.address()
  if (!a || typeof a === 'string') throw new Error('not listening')
  port = a.port
})
afterAll(() => v.app.close())

interface StreamResult {
  status: number
  body: string
  ms: number
  bytesSent: number
}

/**
 * Streams `total` bytes of `{}` (as a hostile JSON body would be) in 1 MB writes on a raw socket, honouring
 * back-pressure, and stops writing as soon as an answer arrives (a raw socket, because node's HTTP client may drop
 * an answer that arrives while it is still sending). `chunked`: no Content-Length, so the server must count while
 * reading.
 */
function streamBody(
  method: string,
  path: string,
  total: number,
  opts: { headers?: Record<string, string>; chunked?: boolean } = {},
): Promise<StreamResult> {
  const chunk = Buffer.from('{}'.repeat(512 * 1024))
  const started = performance.now()
  return new Promise((resolve, reject) => {
    let sent = 0
    let answer: StreamResult | null = null
    let received = Buffer.alloc(0)
    const socket = connect(port, '127.0.0.1')
    const headers = {
      host: '127.0.0.1',
      ...(opts.chunked ? { 'transfer-encoding': 'chunked' } : { 'content-length': String(total) }),
      ...opts.headers,
    }
    socket.write(
      `${method} ${path} HTTP/1.1\r\n${Object.entries(headers)
        .map(([k, v]) => `${k}: ${v}\r\n`)
        .join('')}\r\n`,
    )
    socket.on('data', (data: Buffer) => {
      received = Buffer.concat([received, data])
      const text = received.toString('utf8')
      const end = text.indexOf('\r\n\r\n')
      if (end < 0 || answer) return
      const head = text.slice(0, end)
      const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? 0)
      if (received.length < end + 4 + length) return
      answer = {
        status: Number(head.split(' ')[1]),
        body: received.subarray(end + 4, end + 4 + length).toString('utf8'),
        ms: performance.now() - started,
        bytesSent: sent,
      }
      resolve(answer)
      socket.destroy()
    })
    socket.on('error', (err: NodeJS.ErrnoException) => {
      // the server drops the connection some time after its answer; writing further then fails
      if (!answer && err.code !== 'EPIPE' && err.code !== 'ECONNRESET') reject(err)
    })
    socket.on('close', () => {
      if (!answer) reject(new Error(`connection closed without an answer after ${sent} bytes`))
    })
    const frame = (b: Buffer) =>
      opts.chunked ? [Buffer.from(`${b.length.toString(16)}\r\n`), b, Buffer.from('\r\n')] : [b]
    const pump = () => {
      while (!answer && sent < total && !socket.destroyed) {
        const n = Math.min(chunk.length, total - sent)
        sent += n
        let drained = true
        for (const part of frame(n === chunk.length ? chunk : chunk.subarray(0, n)))
          drained = socket.write(part)
        if (!drained) {
          socket.once('drain', pump)
          return
        }
      }
      if (sent >= total && opts.chunked && !socket.destroyed) socket.write('0\r\n\r\n')
    }
    pump()
  })
}

const MB = 1024 * 1024

describe('body limits and authentication before the body', () => {
  it('an unauthenticated 100 MB body to an admin route is refused with 403 quickly, memory stays bounded', async () => {
    global.gc?.()
    const rssBefore = process.memoryUsage().rss
    const delay = monitorEventLoopDelay({ resolution: 10 })
    delay.enable()
    const r = await streamBody('POST', '/v2.6/agents/intruder', 100 * MB)
    delay.disable()
    const rssGrowth = process.memoryUsage().rss - rssBefore
    expect(r.status).toBe(403)
    expect(JSON.parse(r.body).errors[0].title).toBe('Forbidden')
    expect(r.ms).toBeLessThan(2000)
    // the refusal came before the upload was done: most of the 100 MB was never sent
    expect(r.bytesSent).toBeLessThan(50 * MB)
    expect(rssGrowth).toBeLessThan(64 * MB)
    expect(delay.max / 1e6).toBeLessThan(250)
    console.info(
      `100 MB unauthenticated: 403 after ${r.ms.toFixed(0)} ms, ${(r.bytesSent / MB).toFixed(0)} MB sent, ` +
        `RSS +${(rssGrowth / MB).toFixed(1)} MB, event-loop delay max ${(delay.max / 1e6).toFixed(1)} ms`,
    )
    expect(await v.service.repo.getAgent('intruder')).toBeFalsy()
  })

  it('a huge chunked body to the public /verify/evidence is cut off at its limit while streaming (413)', async () => {
    const limit = v.options.maxEvidenceSize
    const r = await streamBody('POST', '/v2.6/verify/evidence', 100 * MB, { chunked: true })
    expect(r.status).toBe(413)
    expect(JSON.parse(r.body)).toEqual({ code: 413, status: 'Request body too large', results: {} })
    // the server stopped reading shortly after the limit, not at the end of the upload
    expect(r.bytesSent).toBeLessThan(limit + 40 * MB)
    console.info(`100 MB chunked to /verify/evidence: 413 after ${(r.bytesSent / MB).toFixed(0)} MB sent`)
  })

  it('a 10 MB body to a small-limit admin route is a 413 envelope, answered from Content-Length', async () => {
    expect(v.options.maxBodySize).toBeLessThan(10 * MB)
    const r = await streamBody('PUT', '/v2.6/agents/someone/stop', 10 * MB, { headers: ADMIN })
    expect(r.status).toBe(413)
    expect(JSON.parse(r.body)).toEqual({ code: 413, status: 'Request body too large', results: {} })
    expect(r.ms).toBeLessThan(2000)
  })

  it('policy uploads keep the large limit: a 2 MB runtime policy is read (and judged on its content)', async () => {
    const big = { runtime_policy: Buffer.alloc(2 * MB, 0x41).toString('base64') }
    const r = await v.app.inject({
      method: 'POST',
      url: '/v2.6/allowlists/big',
      headers: ADMIN,
      payload: big,
    })
    expect(r.statusCode).toBe(400)
    expect(r.json().status).toMatch(/^Runtime policy is malformatted/)
  })
})
