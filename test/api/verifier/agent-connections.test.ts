/**
 * The verifier's connections to mTLS agents: one client context for the fleet, the agent's pinned certificate (or a
 * chain to trusted_server_ca) checked on each handshake, keep-alive for short quote intervals, close-and-resume
 * (TLS session) for long ones, and the cap on open connections.
 */
import { mkdtempSync, readFileSync } from 'node:fs'
import { createServer, type Server } from 'node:https'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { TLSSocket } from 'node:tls'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ensureTlsDir } from '../../../src/crypto/ca.ts'
import { AgentConnections, type VerifierClientTls } from '../../../src/verifier/agent-connections.ts'

let server: Server
let port: number
let serverCert: string
let caCert: string
let otherCert: string
let clientTls: VerifierClientTls
const seen = { connections: 0, resumed: 0, clientCertOk: 0 }

beforeAll(async () => {
  const tls = await ensureTlsDir(join(mkdtempSync(join(tmpdir(), 'kl-conn-')), 'tls'))
  const read = (p: string) => readFileSync(p, 'utf8')
  serverCert = read(tls.serverCert)
  caCert = read(tls.caCert)
  otherCert = read(tls.clientCert)
  clientTls = { cert: read(tls.clientCert), key: read(tls.clientKey), trustedServerCa: [] }
  server = createServer(
    { cert: serverCert, key: read(tls.serverKey), ca: caCert, requestCert: true, rejectUnauthorized: true },
    (_req, res) => {
      res.setHeader('content-type', 'application/json')
      res.end(JSON.stringify({ code: 200, status: 'Success', results: { supported_version: '2.6' } }))
    },
  )
  server.on('secureConnection', (s: TLSSocket) => {
    seen.connections++
    if (s.isSessionReused()) seen.resumed++
    if (s.authorized) seen.clientCertOk++
  })
  server.keepAliveTimeout = 60_000
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  port = (server.address() as AddressInfo).port
})
afterAll(() => {
  server.closeAllConnections()
  server.close()
})

const endpoint = (mtlsCert: string) => ({ agentId: 'a1', ip: '127.0.0.1', port, apiVersion: '2.6', mtlsCert })

async function twoRequests(conns: AgentConnections, mtlsCert: string) {
  const before = { ...seen }
  const c = conns.client(endpoint(mtlsCert))
  const first = await c.getVersion()
  // let a closed connection finish closing before the next request
  await new Promise((r) => setTimeout(r, 50))
  await c.getVersion()
  await conns.close()
  return {
    version: first.supported_version,
    connections: seen.connections - before.connections,
    resumed: seen.resumed - before.resumed,
    clientCertOk: seen.clientCertOk - before.clientCertOk,
  }
}

describe('agent connections over mTLS', () => {
  it('short interval: one kept-alive connection, the pinned certificate accepted, the client certificate sent', async () => {
    const conns = new AgentConnections(clientTls, 5000, { quoteIntervalMs: 1000 })
    expect(await twoRequests(conns, serverCert)).toEqual({
      version: '2.6',
      connections: 1,
      resumed: 0,
      clientCertOk: 1,
    })
  })

  it('long interval: the connection closes after each reply and the next one resumes the TLS session', async () => {
    const conns = new AgentConnections(clientTls, 5000, { quoteIntervalMs: 60_000 })
    expect(await twoRequests(conns, serverCert)).toEqual({
      version: '2.6',
      connections: 2,
      resumed: 1,
      clientCertOk: 2,
    })
  })

  it('past the cap on open connections, replies close their connection even at a short interval', async () => {
    const conns = new AgentConnections(clientTls, 5000, { quoteIntervalMs: 1000, maxOpenConnections: 0 })
    expect(await twoRequests(conns, serverCert)).toMatchObject({ connections: 2, resumed: 1 })
  })

  it('refuses an agent whose certificate is not its pinned one', async () => {
    const conns = new AgentConnections(clientTls, 5000, { quoteIntervalMs: 1000 })
    await expect(conns.client(endpoint(otherCert)).getVersion()).rejects.toThrow(/pinned mtls_cert/)
    await expect(conns.client(endpoint('not a certificate')).getVersion()).rejects.toThrow(/pinned mtls_cert/)
    await conns.close()
  })

  it('accepts a certificate chained to trusted_server_ca in place of the pinned one', async () => {
    const conns = new AgentConnections({ ...clientTls, trustedServerCa: [caCert] }, 5000, {
      quoteIntervalMs: 1000,
    })
    expect((await conns.client(endpoint(otherCert)).getVersion()).supported_version).toBe('2.6')
    await conns.close()
  })
})
