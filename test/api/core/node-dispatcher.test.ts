/**
 * The agents' HTTP client over node:http and node:https (no undici): a real TLS server with a certificate from a
 * real CA. The server is trusted by its chain only (hostnames unchecked), connections are kept alive, a pinned
 * certificate is refused rather than ignored, and oversized replies are cut off.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http'
import { createServer, type Server } from 'node:https'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type JsonDispatcher, nodeHttpDispatcher } from '../../../src/api/client.ts'
import { createCa, issueCertificate } from '../../../src/crypto/ca.ts'

const root = mkdtempSync(join(tmpdir(), 'kl-node-dispatcher-'))
let caPem: string
let otherCaPem: string
let tlsServer: Server
let plainServer: HttpServer
let tlsOrigin: string
let plainOrigin: string
/** The client port of each request the TLS server saw: the same port twice means a kept connection. */
const clientPorts: number[] = []

function answer(url: string | undefined, res: import('node:http').ServerResponse): void {
  if (url === '/big') res.writeHead(200).end('x'.repeat((1 << 20) + 1))
  else
    res
      .writeHead(201, { 'content-type': 'application/json', location: '/v3.0/agents/a/attestations/1' })
      .end(JSON.stringify({ url }))
}

beforeAll(async () => {
  const ca = await createCa(join(root, 'ca'))
  const server = await issueCertificate(ca, { commonName: 'not-the-host-name', usage: 'server' })
  caPem = ca.certPem
  otherCaPem = (await createCa(join(root, 'other'))).certPem
  tlsServer = createServer({ cert: server.certPem, key: server.privateKeyPem }, (req, res) => {
    clientPorts.push(req.socket.remotePort ?? 0)
    req.resume().on('end', () => answer(req.url, res))
  })
  plainServer = createHttpServer((req, res) => req.resume().on('end', () => answer(req.url, res)))
  await new Promise<void>((r) => tlsServer.listen(0, '127.0.0.1', r))
  await new Promise<void>((r) => plainServer.listen(0, '127.0.0.1', r))
  tlsOrigin = `https://127.0.0.1:${(tlsServer.address() as AddressInfo).port}`
  plainOrigin = `http://127.0.0.1:${(plainServer.address() as AddressInfo).port}`
})

afterAll(async () => {
  tlsServer.closeAllConnections()
  await new Promise<void>((r) => tlsServer.close(() => r()))
  await new Promise<void>((r) => plainServer.close(() => r()))
  rmSync(root, { recursive: true, force: true })
})

const get = (d: JsonDispatcher, origin: string, path: string) =>
  d.request({ origin, path, method: 'POST', headers: {}, body: '{}', signal: AbortSignal.timeout(5000) })

describe('nodeHttpDispatcher', () => {
  it('trusts a server by its CA chain whatever its name, and keeps the connection alive', async () => {
    const d = nodeHttpDispatcher({ ca: caPem })
    try {
      clientPorts.length = 0
      const first = await get(d, tlsOrigin, '/one')
      expect(first.statusCode).toBe(201)
      expect(first.headers.location).toBe('/v3.0/agents/a/attestations/1')
      expect(JSON.parse(await first.body.text())).toEqual({ url: '/one' })
      await get(d, tlsOrigin, '/two')
      expect(clientPorts).toHaveLength(2)
      expect(clientPorts[1]).toBe(clientPorts[0])
    } finally {
      await d.close()
    }
  })

  it('refuses a server whose chain does not reach the configured CA', async () => {
    const d = nodeHttpDispatcher({ ca: otherCaPem })
    try {
      await expect(get(d, tlsOrigin, '/one')).rejects.toThrow(/certificate/i)
    } finally {
      await d.close()
    }
  })

  it('accepts any server only when told to (insecure)', async () => {
    const d = nodeHttpDispatcher({ insecure: true })
    try {
      expect((await get(d, tlsOrigin, '/one')).statusCode).toBe(201)
    } finally {
      await d.close()
    }
  })

  it('refuses a pinned server certificate instead of ignoring it', () => {
    expect(() => nodeHttpDispatcher({ pinnedServerCert: caPem })).toThrow(/pinned/)
  })

  it('cuts off a reply above 1 MiB', async () => {
    const d = nodeHttpDispatcher({ ca: caPem })
    try {
      await expect(get(d, tlsOrigin, '/big')).rejects.toThrow(/larger than/)
    } finally {
      await d.close()
    }
  })

  it('speaks plain HTTP and refuses other schemes', async () => {
    const d = nodeHttpDispatcher()
    const plain = await get(d, plainOrigin, '/plain')
    expect(plain.statusCode).toBe(201)
    expect(JSON.parse(await plain.body.text())).toEqual({ url: '/plain' })
    await expect(get(d, 'ftp://127.0.0.1:21', '/')).rejects.toThrow(/http: and https:/)
  })
})
