/**
 * The verifier's HTTP/1.1 client to agents (through AgentConnections and AgentClient, as the loop uses it) against
 * raw TCP servers that answer byte for byte as scripted: reply framings, kept and closed connections, the agent's
 * keep-alive hint, timeouts, oversized and malformed replies, connection failures.
 */
import { connect, createServer, type Server, type Socket } from 'node:net'
import type { Dispatcher } from 'undici'
import { afterEach, describe, expect, it } from 'vitest'
import { AgentClient, AgentClientError } from '../../../src/api/agent/client.ts'
import { AgentConnections } from '../../../src/verifier/agent-connections.ts'
import { AgentHttp } from '../../../src/verifier/agent-http.ts'

const VERSION = JSON.stringify({ code: 200, status: 'Success', results: { supported_version: '2.6' } })

interface Scripted {
  port: number
  connections: number
  requests: string[]
  close(): Promise<void>
}

const servers: Server[] = []
const opened: AgentConnections[] = []
afterEach(async () => {
  await Promise.all(opened.splice(0).map((c) => c.close()))
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))))
})

/** A server that calls `answer` with each complete request head (and the socket) on every connection. */
async function scripted(answer: (socket: Socket, head: string, n: number) => void): Promise<Scripted> {
  const state = { connections: 0, requests: [] as string[] }
  const sockets = new Set<Socket>()
  const server = createServer((socket) => {
    state.connections++
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => {})
    let buf = ''
    socket.on('data', (d) => {
      buf += d.toString('latin1')
      for (;;) {
        const end = buf.indexOf('\r\n\r\n')
        if (end < 0) return
        const head = buf.slice(0, end)
        const length = Number(/content-length: (\d+)/i.exec(head)?.[1] ?? 0)
        if (buf.length < end + 4 + length) return
        state.requests.push(buf.slice(0, end + 4 + length))
        buf = buf.slice(end + 4 + length)
        answer(socket, head, state.requests.length)
      }
    })
  })
  servers.push(server)
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const port = (server.address() as { port: number }).port
  return {
    port,
    get connections() {
      return state.connections
    },
    requests: state.requests,
    close: async () => {
      for (const s of sockets) s.destroy()
    },
  }
}

function client(
  port: number,
  o: { timeoutMs?: number; intervalMs?: number; maxResponseBytes?: number } = {},
) {
  const conns = new AgentConnections(null, o.timeoutMs ?? 2000, {
    quoteIntervalMs: o.intervalMs ?? 1000,
    ...(o.maxResponseBytes === undefined ? {} : { maxResponseBytes: o.maxResponseBytes }),
  })
  opened.push(conns)
  return {
    conns,
    agent: conns.client({ agentId: 'a', ip: '127.0.0.1', port, apiVersion: '2.6', mtlsCert: null }),
  }
}

const ok = (body: string, extra = '') =>
  `HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n${extra}\r\n${body}`

async function failure(p: Promise<unknown>): Promise<AgentClientError> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  )
  expect(err).toBeInstanceOf(AgentClientError)
  return err as AgentClientError
}

describe('agent HTTP client: replies', () => {
  it('reads content-length replies split at any byte, and keeps the connection for the next request', async () => {
    const s = await scripted((socket) => {
      const reply = Buffer.from(ok(VERSION))
      // one byte at a time for the head and the first body bytes, then the rest
      let i = 0
      const drip = () => {
        if (i < 120) {
          socket.write(reply.subarray(i, i + 1))
          i++
          setImmediate(drip)
        } else socket.write(reply.subarray(i))
      }
      drip()
    })
    const { agent } = client(s.port)
    expect((await agent.getVersion()).supported_version).toBe('2.6')
    expect((await agent.getVersion()).supported_version).toBe('2.6')
    expect(s.connections).toBe(1)
    expect(s.requests[0]).toMatch(
      /^GET \/version HTTP\/1\.1\r\nhost: 127\.0\.0\.1:\d+\r\nconnection: keep-alive\r\n/,
    )
  })

  it('reads chunked replies (extensions, trailers, chunks split across packets)', async () => {
    const s = await scripted((socket) => {
      const a = VERSION.slice(0, 10)
      const b = VERSION.slice(10)
      socket.write('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n')
      socket.write(`${a.length.toString(16)};ext=1\r\n${a}\r\n${b.length.toString(16)}\r`)
      setTimeout(() => socket.write(`\n${b}\r\n0\r\nx-trailer: 1\r\n\r\n`), 5)
    })
    const { agent } = client(s.port)
    expect((await agent.getVersion()).supported_version).toBe('2.6')
    expect((await agent.getVersion()).supported_version).toBe('2.6')
    expect(s.connections).toBe(1)
  })

  it('reads a reply delimited by the connection closing, then opens a new connection', async () => {
    const s = await scripted((socket) => socket.end(`HTTP/1.1 200 OK\r\n\r\n${VERSION}`))
    const { agent } = client(s.port)
    expect((await agent.getVersion()).supported_version).toBe('2.6')
    expect((await agent.getVersion()).supported_version).toBe('2.6')
    expect(s.connections).toBe(2)
  })

  it("skips an interim 100 reply and passes the agent's error status and envelope on", async () => {
    const body = JSON.stringify({ code: 400, status: 'API version not supported', results: {} })
    const s = await scripted((socket) =>
      socket.write(
        `HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 400 Bad Request\r\ncontent-length: ${body.length}\r\n\r\n${body}`,
      ),
    )
    const { agent } = client(s.port)
    const err = await failure(agent.getVersion())
    expect(err.httpStatus).toBe(400)
    expect(err.isVersionNotSupported).toBe(true)
  })

  it('sends a POST body with its length and type', async () => {
    const s = await scripted((socket) =>
      socket.write(ok(JSON.stringify({ code: 200, status: 'Success', results: {} }))),
    )
    const { agent } = client(s.port)
    await agent.postVkey('a€b')
    const req = s.requests[0] as string
    const body = JSON.stringify({ encrypted_key: 'a€b' })
    expect(req).toMatch(/^POST \/v2\.6\/keys\/vkey HTTP\/1\.1\r\n/)
    expect(req).toContain(`content-length: ${Buffer.byteLength(body)}\r\n`)
    expect(req).toContain('content-type: application/json\r\n')
    expect(Buffer.from(req, 'latin1').toString('utf8').endsWith(body)).toBe(true)
  })

  it('closes the connection after the reply when the agent says so, or when bytes follow the reply', async () => {
    const s = await scripted((socket, _h, n) =>
      socket.write(n === 1 ? ok(VERSION, 'connection: close\r\n') : `${ok(VERSION)}HTTP/1.1 200 OK\r\n`),
    )
    const { agent } = client(s.port)
    await agent.getVersion()
    await agent.getVersion()
    await agent.getVersion()
    expect(s.connections).toBe(3)
  })
})

describe('agent HTTP client: connections', () => {
  it("honours the agent's keep-alive timeout hint, less a second", async () => {
    const s = await scripted((socket) => socket.write(ok(VERSION, 'keep-alive: timeout=1\r\n')))
    const { agent, conns } = client(s.port)
    await agent.getVersion()
    // timeout=1: kept for 0 s, i.e. closed after the reply
    await new Promise((r) => setTimeout(r, 50))
    expect(conns.openConnections).toBe(0)
    await agent.getVersion()
    expect(s.connections).toBe(2)
  })

  it('closes an unused connection after the keep-alive timeout', async () => {
    // our own timeout is 2 x interval + 5 s, too long to wait for here: the agent's hint of 2 s keeps it 1 s
    const s = await scripted((socket) => socket.write(ok(VERSION, 'keep-alive: timeout=2\r\n')))
    const { agent, conns } = client(s.port)
    await agent.getVersion()
    expect(conns.openConnections).toBe(1)
    await new Promise((r) => setTimeout(r, 1300))
    expect(conns.openConnections).toBe(0)
  })

  it("a connection falling idle stays open longer by the loop's lag, unless the agent said how long it keeps it", async () => {
    // AgentHttp as AgentConnections builds it, with an own idle timeout short enough to wait for here
    const idleClosedAfter = async (extra: string, graceMs: number) => {
      const s = await scripted((socket) => socket.write(ok(VERSION, extra)))
      const http = new AgentHttp({
        keepAliveTimeoutMs: 200,
        idleGraceMs: () => graceMs,
        connect: (_https, host, port, callback) => {
          const socket = connect({ host, port })
          socket.once('connect', () => callback(null, socket))
          socket.once('error', (err) => callback(err, null))
        },
      })
      const agent = new AgentClient({
        baseUrl: `http://127.0.0.1:${s.port}`,
        apiVersion: '2.6',
        dispatcher: http as unknown as Dispatcher,
        keepConnection: () => true,
      })
      const closed = new Promise<number>((r) => http.on('disconnect', () => r(performance.now())))
      await agent.getVersion()
      const idleFrom = performance.now()
      const after = (await closed) - idleFrom
      await http.close()
      return after
    }
    const plain = await idleClosedAfter('', 0)
    expect(plain).toBeGreaterThan(150)
    expect(plain).toBeLessThan(500)
    // 600 ms late: kept 200 + 600 ms
    const late = await idleClosedAfter('', 600)
    expect(late).toBeGreaterThan(750)
    expect(late).toBeLessThan(1300)
    // the agent keeps it 2 s: closed 1 s after the reply however late the loop is
    const hinted = await idleClosedAfter('keep-alive: timeout=2\r\n', 5000)
    expect(hinted).toBeGreaterThan(950)
    expect(hinted).toBeLessThan(1500)
  })

  it('waits the whole request timeout for a reply on a connection whose idle timeout is shorter', async () => {
    // the hint keeps the connection 1 s unused; the reply to the second request comes after 1.4 s, within 2.5 s
    const s = await scripted((socket, _h, n) => {
      const reply = ok(VERSION, 'keep-alive: timeout=2\r\n')
      if (n === 1) socket.write(reply)
      else setTimeout(() => socket.write(reply), 1400)
    })
    const { agent } = client(s.port, { timeoutMs: 2500 })
    await agent.getVersion()
    expect((await agent.getVersion()).supported_version).toBe('2.6')
    expect(s.connections).toBe(1)
  })

  it('keeps an unused connection for its idle timeout although the request timeout is shorter', async () => {
    const s = await scripted((socket) => socket.write(ok(VERSION, 'keep-alive: timeout=2\r\n')))
    const { agent, conns } = client(s.port, { timeoutMs: 300 })
    await agent.getVersion()
    await new Promise((r) => setTimeout(r, 650))
    expect(conns.openConnections).toBe(1)
    await new Promise((r) => setTimeout(r, 700))
    expect(conns.openConnections).toBe(0)
  })

  it('runs two requests to one agent one after the other on one connection', async () => {
    const s = await scripted((socket) => setTimeout(() => socket.write(ok(VERSION)), 20))
    const { agent } = client(s.port)
    const [a, b] = await Promise.all([agent.getVersion(), agent.getVersion()])
    expect([a.supported_version, b.supported_version]).toEqual(['2.6', '2.6'])
    expect(s.connections).toBe(1)
  })

  it('a kept connection the agent closed meanwhile fails the request as unreachable, the next one reconnects', async () => {
    const s = await scripted((socket, _h, n) => {
      if (n === 2) socket.destroy()
      else socket.write(ok(VERSION))
    })
    const { agent } = client(s.port)
    await agent.getVersion()
    const err = await failure(agent.getVersion())
    expect(err.httpStatus).toBeUndefined()
    expect(err.message).toMatch(/unreachable/)
    expect((await agent.getVersion()).supported_version).toBe('2.6')
    expect(s.connections).toBe(2)
  })

  it('an agent that does not listen is unreachable', async () => {
    const s = await scripted(() => {})
    const port = s.port
    await new Promise((r) => (servers.pop() as Server).close(r))
    const { agent } = client(port)
    const err = await failure(agent.getVersion())
    expect(err.httpStatus).toBeUndefined()
  })

  it('times out an agent that does not answer, or answers a byte at a time past the timeout', async () => {
    const silent = await scripted(() => {})
    const err = await failure(client(silent.port, { timeoutMs: 300 }).agent.getVersion())
    expect(err.message).toMatch(/in time/)
    const drip = await scripted((socket) => {
      const t = setInterval(() => (socket.destroyed ? clearInterval(t) : socket.write('H')), 50)
    })
    const t0 = Date.now()
    const slow = await failure(client(drip.port, { timeoutMs: 300 }).agent.getVersion())
    expect(slow.message).toMatch(/in time/)
    expect(Date.now() - t0).toBeLessThan(2000)
  })

  it('stops reading a reply over the size cap, and fails it as too large', async () => {
    const big = JSON.stringify({
      code: 200,
      status: 'Success',
      results: { supported_version: 'x'.repeat(5000) },
    })
    const declared = await scripted((socket) => socket.write(ok(big)))
    expect(
      (await failure(client(declared.port, { maxResponseBytes: 1000 }).agent.getVersion())).isTooLarge,
    ).toBe(true)
    const chunked = await scripted((socket) =>
      socket.write(
        `HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n${big.length.toString(16)}\r\n${big}\r\n0\r\n\r\n`,
      ),
    )
    expect(
      (await failure(client(chunked.port, { maxResponseBytes: 1000 }).agent.getVersion())).isTooLarge,
    ).toBe(true)
  })

  it('refuses malformed replies: not HTTP, bad framing, conflicting lengths, oversized heads', async () => {
    const replies = [
      'SSH-2.0-OpenSSH\r\n\r\n',
      'HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n',
      'HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello',
      'HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n',
      'HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n',
      'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n',
      'HTTP/1.1 200 OK\r\nno colon here\r\n\r\n',
      `HTTP/1.1 200 OK\r\nx-big: ${'a'.repeat(20_000)}\r\n\r\n`,
    ]
    for (const reply of replies) {
      const s = await scripted((socket) => socket.write(reply))
      const err = await failure(client(s.port).agent.getVersion())
      expect(err.isTooLarge).toBe(false)
    }
  })

  it('fails queued and running requests when the connections are closed', async () => {
    const s = await scripted(() => {})
    const { agent, conns } = client(s.port, { timeoutMs: 10_000 })
    const running = failure(agent.getVersion())
    const queued = failure(agent.getVersion())
    await new Promise((r) => setTimeout(r, 50))
    await conns.close()
    await running
    await queued
  })
})
