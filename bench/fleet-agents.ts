/**
 * Simulated pull agents for the fleet benchmark and the verifier loop tests: ONE server answers for many agents, each
 * reached at its own loopback address (127.0.x.y, all routed to `lo` on Linux), so the verifier sees N distinct
 * agents and N connections. Each agent is a SoftQuoter (software AK, PCR banks, TPM clock) that produces wire-exact
 * integrity quotes with PCR 16 bound to its payload pubkey. With `tls`, each connection is mTLS as with a real agent:
 * the agent's own server certificate (chosen by the address the verifier dialled), the verifier's client
 * certificate required and checked against the given CA, TLS session tickets on.
 */

import { constants, createHash, generateKeyPairSync, type KeyObject, privateDecrypt } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import {
  type AddressInfo,
  createServer as createNetServer,
  type Server as NetServer,
  type Socket,
} from 'node:net'
import { createSecureContext, type SecureContext, TLSSocket } from 'node:tls'
import { formatImaNgEntry } from '../src/evidence/ima/index.ts'
import { SoftQuoter } from './fleet-quoter.ts'

export interface SimAgent {
  id: string
  ip: string
  quoter: SoftQuoter
  pubkeyPem: string
  /** When true the agent drops connections (unreachable). */
  down: boolean
  quotes: number
  /** V values received (decrypted), base64. */
  vKeys: string[]
  revocations: { msg: string; signature: string }[]
  /** IMA ascii_runtime_measurements lines (empty: no IMA list is sent). */
  imaLines: string[]
  /** API versions this agent serves (others get 400 "API version not supported"). */
  apiVersions: string[]
}

/** Records an ima-ng measurement of `content` at `path` and extends PCR 10 like the kernel. */
export function simMeasure(agent: SimAgent, path: string, content: string): void {
  const e = formatImaNgEntry(path, createHash('sha256').update(content).digest(), 'sha256')
  agent.imaLines.push(e.line)
  agent.quoter.extendDigest(10, e.templateDigests[agent.quoter.hashAlg])
}

export interface SimFleet {
  port: number
  agents: SimAgent[]
  byIp: Map<string, SimAgent>
  close(): Promise<void>
}

/** Address of agent i: 127.0.0.2 onward, skipping .0/.255 octets. */
export function simAgentIp(i: number): string {
  const n = i + 2
  const b = Math.floor(n / 254)
  const c = (n % 254) + 1
  return `127.${Math.floor(b / 254)}.${b % 254}.${c}`
}

function reply(res: ServerResponse, code: number, status: string, results: unknown): void {
  const body = JSON.stringify({ code, status, results })
  res.writeHead(code, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
  res.end(body)
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')))
    req.on('error', reject)
  })
}

const REASONS: Record<number, string> = { 200: 'OK', 400: 'Bad Request', 404: 'Not Found' }
/** Connections served by `serveLean`, ended by the fleet's close(). */
const leanSockets = new Set<Socket>()

/**
 * A minimal HTTP/1.1 server on one connection: requests one at a time (pipelined ones wait their turn), bodies by
 * content-length, each reply one write; `connection: close` ends the connection after the reply. Anything it does
 * not handle (chunked bodies, bad heads) drops the connection.
 */
function serveLean(
  hint: boolean,
  socket: Socket,
  answer: (
    method: string,
    target: string,
    body: string,
  ) => { code: number; status: string; results: unknown } | null,
): void {
  leanSockets.add(socket)
  // as node:http's server does (its keep-alive hint below too, `keepAliveTimeout` 120 s): a reply written behind an
  // unacknowledged segment must not wait for the peer's ACK
  socket.setNoDelay(true)
  socket.once('close', () => leanSockets.delete(socket))
  socket.on('error', () => socket.destroy())
  let pending = ''
  socket.on('data', (chunk: Buffer) => {
    pending += chunk.toString('latin1')
    for (;;) {
      const end = pending.indexOf('\r\n\r\n')
      if (end < 0) {
        if (pending.length > 64 * 1024) socket.destroy()
        return
      }
      const lines = pending.slice(0, end).split('\r\n')
      const [method, target, version] = (lines[0] as string).split(' ')
      let length = 0
      let close = version !== 'HTTP/1.1'
      for (let i = 1; i < lines.length; i++) {
        const line = lines[i] as string
        const colon = line.indexOf(':')
        const name = line.slice(0, colon).trim().toLowerCase()
        const value = line
          .slice(colon + 1)
          .trim()
          .toLowerCase()
        if (name === 'content-length') length = Number(value)
        else if (name === 'transfer-encoding') length = Number.NaN
        else if (name === 'connection') close = value === 'close' || (close && value !== 'keep-alive')
      }
      if (method === undefined || target === undefined || !Number.isSafeInteger(length) || length < 0) {
        socket.destroy()
        return
      }
      if (pending.length < end + 4 + length) return
      const body = Buffer.from(pending.slice(end + 4, end + 4 + length), 'latin1').toString('utf8')
      pending = pending.slice(end + 4 + length)
      let r: ReturnType<typeof answer>
      try {
        r = answer(method, target, body)
      } catch (err) {
        r = { code: 400, status: (err as Error).message, results: {} }
      }
      if (r === null) {
        socket.destroy()
        return
      }
      const json = JSON.stringify({ code: r.code, status: r.status, results: r.results })
      socket.write(
        `HTTP/1.1 ${r.code} ${REASONS[r.code] ?? 'Unknown'}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(json)}\r\n${close ? 'connection: close' : hint ? 'connection: keep-alive\r\nkeep-alive: timeout=120' : 'connection: keep-alive'}\r\n\r\n${json}`,
      )
      if (close) {
        socket.end()
        return
      }
    }
  })
}

export interface SimFleetOptions {
  count: number
  port?: number
  /** Share one AK and payload key across agents (fast setup); default false. */
  shareKeys?: boolean
  /** Share only the RSA payload key (V is encrypted to it once per agent); each agent keeps its own AK. */
  sharePayloadKey?: boolean
  akType?: 'rsa' | 'ecc'
  idPrefix?: string
  /** mTLS: agent i serves `certs[i % certs.length]`; clients must present a certificate chained to `clientCa`. */
  tls?: { certs: { cert: string; key: string }[]; clientCa: string }
  /**
   * 'lean': each connection answered by a minimal HTTP/1.1 reader and writer (one request at a time, bodies by
   * content-length, one write per reply) instead of node:http, whose per-request objects cost the fleet benchmark's
   * simulated agents more CPU than the quote's signature. Default 'node'.
   */
  http?: 'node' | 'lean'
  /**
   * 'lean' only: false leaves out the `keep-alive: timeout=120` hint, as agents whose server sends none (the
   * verifier then closes idle connections by its own timeout). Default true.
   */
  keepAliveHint?: boolean
}

export async function startSimFleet(opts: SimFleetOptions): Promise<SimFleet> {
  const hint = opts.keepAliveHint ?? true
  const agents: SimAgent[] = []
  const byIp = new Map<string, SimAgent>()
  const privByAgent = new Map<SimAgent, KeyObject>()
  let sharedQuoter: SoftQuoter | null = null
  let sharedPayload: { pem: string; priv: KeyObject } | null = null
  for (let i = 0; i < opts.count; i++) {
    let payload: { pem: string; priv: KeyObject }
    if ((opts.shareKeys || opts.sharePayloadKey) && sharedPayload) payload = sharedPayload
    else {
      const kp = generateKeyPairSync('rsa', { modulusLength: 2048 })
      payload = { pem: kp.publicKey.export({ type: 'spki', format: 'pem' }) as string, priv: kp.privateKey }
    }
    sharedPayload = payload
    const akType = opts.akType ?? 'rsa'
    if (opts.shareKeys && !sharedQuoter) sharedQuoter = new SoftQuoter({ keyType: akType })
    const quoter = opts.shareKeys && sharedQuoter ? sharedQuoter : new SoftQuoter({ keyType: akType })
    quoter.bindPubkey(payload.pem)
    const a: SimAgent = {
      id: `${opts.idPrefix ?? 'sim'}-${i}`,
      ip: simAgentIp(i),
      quoter,
      pubkeyPem: payload.pem,
      down: false,
      quotes: 0,
      vKeys: [],
      revocations: [],
      imaLines: [],
      apiVersions: ['2.1', '2.2', '2.3', '2.4', '2.5', '2.6'],
    }
    agents.push(a)
    byIp.set(a.ip, a)
    privByAgent.set(a, payload.priv)
  }

  /** One request to `agent`: its reply, or null when the agent is down (the connection is dropped). */
  const answer = (
    agent: SimAgent | undefined,
    method: string,
    target: string,
    body: string,
  ): { code: number; status: string; results: unknown } | null => {
    if (!agent) return { code: 404, status: 'unknown agent address', results: {} }
    if (agent.down) return null
    const q = target.indexOf('?')
    const pathname = q < 0 ? target : target.slice(0, q)
    const params = new URLSearchParams(q < 0 ? '' : target.slice(q + 1))
    if (pathname === '/version')
      return {
        code: 200,
        status: 'Success',
        results: {
          supported_version: agent.apiVersions[agent.apiVersions.length - 1],
          supported_versions: agent.apiVersions,
        },
      }
    const m = /^\/v(\d+\.\d+)(\/.*)$/.exec(pathname)
    if (!m) return { code: 400, status: 'Not Implemented', results: {} }
    if (!agent.apiVersions.includes(m[1] as string))
      return { code: 400, status: `API version not supported: v${m[1]}`, results: {} }
    const path = m[2]
    if (method === 'GET' && path === '/quotes/integrity') {
      const nonce = params.get('nonce') ?? ''
      const maskText = params.get('mask') ?? '0x0'
      const mask = Number.parseInt(maskText.replace(/^0x/i, ''), 16) || 0
      const pcrs = [16]
      for (let p = 0; p < 24; p++) if (p !== 16 && mask & (1 << p)) pcrs.push(p)
      agent.quotes++
      const results: Record<string, unknown> = {
        quote: agent.quoter.quote(nonce, pcrs),
        hash_alg: agent.quoter.hashAlg,
        enc_alg: 'rsa',
        sign_alg: agent.quoter.privateKey.asymmetricKeyType === 'ec' ? 'ecdsa' : 'rsassa',
      }
      if (params.get('partial') !== '1') results.pubkey = agent.pubkeyPem
      if (agent.imaLines.length > 0) {
        let entry = Number(params.get('ima_ml_entry') ?? '0') || 0
        if (entry > agent.imaLines.length) entry = 0
        const lines = agent.imaLines.slice(entry)
        results.ima_measurement_list = lines.length > 0 ? `${lines.join('\n')}\n` : ''
        results.ima_measurement_list_entry = entry
      }
      return { code: 200, status: 'Success', results }
    }
    if (method === 'POST' && path === '/keys/vkey') {
      const v = privateDecrypt(
        {
          key: privByAgent.get(agent) as KeyObject,
          padding: constants.RSA_PKCS1_OAEP_PADDING,
          oaepHash: 'sha1',
        },
        Buffer.from((JSON.parse(body) as { encrypted_key: string }).encrypted_key, 'base64'),
      )
      agent.vKeys.push(v.toString('base64'))
      return { code: 200, status: 'Success', results: {} }
    }
    if (method === 'POST' && path === '/notifications/revocation') {
      agent.revocations.push(JSON.parse(body))
      return { code: 200, status: 'Success', results: {} }
    }
    return { code: 400, status: 'Not Implemented', results: {} }
  }

  /** Agent of each TLS connection, by the address its raw socket was dialled at. */
  const agentOfSocket = new WeakMap<object, SimAgent>()
  const server: Server = createServer(async (req, res) => {
    const agent =
      agentOfSocket.get(req.socket) ?? byIp.get(req.socket.localAddress?.replace(/^::ffff:/, '') ?? '')
    let r: ReturnType<typeof answer>
    try {
      r = answer(agent, req.method ?? 'GET', req.url ?? '/', req.method === 'POST' ? await readBody(req) : '')
    } catch (err) {
      r = { code: 400, status: (err as Error).message, results: {} }
    }
    if (r === null) req.socket.destroy()
    else reply(res, r.code, r.status, r.results)
  })
  server.keepAliveTimeout = 120_000
  server.maxConnections = 100_000
  let listener: Server | NetServer = server
  if (opts.tls) {
    const tls = opts.tls
    const contexts = new Map<number, SecureContext>()
    const contextFor = (i: number): SecureContext => {
      const k = i % tls.certs.length
      let c = contexts.get(k)
      if (!c) {
        const pair = tls.certs[k] as { cert: string; key: string }
        // a session id context lets clients resume sessions although a client certificate is required
        c = createSecureContext({
          cert: pair.cert,
          key: pair.key,
          ca: tls.clientCa,
          sessionIdContext: 'sim-agent',
        })
        contexts.set(k, c)
      }
      return c
    }
    const indexOf = new Map(agents.map((a, i) => [a, i]))

    listener = createNetServer((raw: Socket) => {
      const agent = byIp.get(raw.localAddress?.replace(/^::ffff:/, '') ?? '')
      if (!agent) {
        raw.destroy()
        return
      }
      const secure = new TLSSocket(raw, {
        isServer: true,
        secureContext: contextFor(indexOf.get(agent) as number),
        requestCert: true,
        rejectUnauthorized: true,
        ALPNProtocols: ['http/1.1'],
      })
      secure.on('error', () => secure.destroy())
      agentOfSocket.set(secure, agent)
      if (opts.http === 'lean')
        serveLean(hint, secure, (method, target, body) => answer(agent, method, target, body))
      else server.emit('connection', secure)
    })
    listener.maxConnections = 100_000
  } else if (opts.http === 'lean') {
    listener = createNetServer((raw: Socket) => {
      const agent = byIp.get(raw.localAddress?.replace(/^::ffff:/, '') ?? '')
      serveLean(hint, raw, (method, target, body) => answer(agent, method, target, body))
    })
    listener.maxConnections = 100_000
  }
  await new Promise<void>((resolve) => listener.listen(opts.port ?? 0, '0.0.0.0', resolve))
  const port = (listener.address() as AddressInfo).port
  return {
    port,
    agents,
    byIp,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        for (const socket of leanSockets) socket.destroy()
        if (listener !== server) listener.close()
        server.close(() => resolve())
      }),
  }
}
