/**
 * Connections from the verifier to pull agents, built for fleets: per agent the verifier keeps only its origin, the
 * SHA-256 of its pinned `mtls_cert` and, when it closes connections, a TLS session to resume.
 *
 * - One HTTP/1.1 client (`agent-http.ts`; one connection per agent, requests to one agent one after another) and one TLS
 *   client context (the verifier's certificate and key, `trusted_server_ca`) for the whole fleet. A context per agent
 *   (what `ca: [mtls_cert]` in the connect options costs) held the verifier's key and CA store once per agent. The
 *   agent's certificate is checked on the finished handshake: exactly its pinned certificate, or a chain to
 *   `trusted_server_ca` when one is configured; hostnames are not checked (keylime-api.md §0.1).
 * - Connection policy (docs/performance.md): keep-alive while the quote interval is at most
 *   `KEEP_ALIVE_MAX_INTERVAL_MS` (an idle TLS connection costs ~30-40 KB on each side; a new handshake costs CPU
 *   on each attestation), closed after each reply for longer intervals, then resumed from the agent's TLS session
 *   (no certificate exchange, no signature). At most `maxOpenConnections` stay open: past that, replies close
 *   their connection whatever the interval.
 */
import { createHash, X509Certificate } from 'node:crypto'
import { connect as netConnect, type Socket } from 'node:net'
import {
  type ConnectionOptions,
  createSecureContext,
  type SecureContext,
  connect as tlsConnect,
} from 'node:tls'
import type { Dispatcher } from 'undici'
import { AgentClient, type ResponseBudget } from '../api/agent/client.ts'
import { AgentHttp } from './agent-http.ts'

export interface VerifierClientTls {
  cert: string
  key: string
  /** Extra CAs accepted for agent server certificates (`trusted_server_ca`), besides the pinned `mtls_cert`. */
  trustedServerCa: string[]
}

export interface AgentEndpoint {
  agentId: string
  ip: string
  port: number
  apiVersion: string
  /** PEM of the agent's self-signed server cert; null/`disabled` -> plain HTTP. */
  mtlsCert: string | null
}

/** Longest quote interval at which connections stay open between attestations. */
export const KEEP_ALIVE_MAX_INTERVAL_MS = 10_000

export interface ConnectionLimits {
  maxResponseBytes: number
  memoryLimit: number
  /** The loop's quote interval: decides keep-alive vs close-and-resume. */
  quoteIntervalMs: number
  /** Connections kept open at most; past it each reply closes its connection. */
  maxOpenConnections: number
  /** Extra time a connection falling idle stays open (the loop's lag; see `AgentHttpOptions.idleGraceMs`). */
  idleGraceMs: () => number
}

const DEFAULT_LIMITS: ConnectionLimits = {
  maxResponseBytes: Number.POSITIVE_INFINITY,
  memoryLimit: Number.POSITIVE_INFINITY,
  quoteIntervalMs: 2000,
  maxOpenConnections: 50_000,
  idleGraceMs: () => 0,
}

/** What the verifier keeps per TLS origin between attestations. */
interface Pin {
  /** SHA-256 of the pinned certificate's DER; null when `mtls_cert` does not parse (every handshake fails). */
  fingerprint: Buffer | null
  /** The last TLS session with this agent, taken only from a trusted handshake. */
  session: Buffer | null
}

interface Entry {
  client: AgentClient
  origin: string
  apiVersion: string
  /** The `mtls_cert` text it was built for (the agent record's own string, not a copy). */
  mtlsCert: string | null
  /** The endpoint as given: an unchanged one reuses the client without building its origin again. */
  ip: string
  port: number
  givenMtlsCert: string | null
}

function fingerprintOf(pem: string): Buffer | null {
  try {
    return createHash('sha256').update(new X509Certificate(pem).raw).digest()
  } catch {
    return null
  }
}

export class AgentConnections {
  private readonly http: AgentHttp
  private readonly entries = new Map<string, Entry>()
  /** By `host:port`. */
  private readonly pins = new Map<string, Pin>()
  private readonly context: SecureContext | null
  private readonly budget: ResponseBudget
  private readonly limits: ConnectionLimits
  private readonly keepAlive: boolean
  private open = 0

  constructor(
    private readonly tls: VerifierClientTls | null,
    private readonly timeoutMs: number,
    limits: Partial<ConnectionLimits> = {},
  ) {
    this.limits = { ...DEFAULT_LIMITS, ...limits }
    this.budget = { limit: this.limits.memoryLimit, used: 0 }
    this.keepAlive = this.limits.quoteIntervalMs <= KEEP_ALIVE_MAX_INTERVAL_MS
    this.context = tls
      ? createSecureContext({
          cert: tls.cert,
          key: tls.key,
          minVersion: 'TLSv1.2',
          ...(tls.trustedServerCa.length > 0 ? { ca: tls.trustedServerCa } : {}),
        })
      : null
    this.http = new AgentHttp({
      // open across a whole interval when keeping connections, else only for the steps of one attestation
      keepAliveTimeoutMs: this.keepAlive ? this.limits.quoteIntervalMs * 2 + 5000 : 1000,
      // the lag only stretches connections kept across intervals, never the short hold between steps
      idleGraceMs: this.keepAlive ? this.limits.idleGraceMs : () => 0,
      connect: (https, host, port, callback) => this.connect(https, host, port, callback),
    })
  }

  /** The client's `connect`, `disconnect` and `connectionError` events (benchmarks count churn). */
  get dispatcherEvents(): Pick<AgentHttp, 'on'> {
    return this.http
  }

  /** Open connections to agents now. */
  get openConnections(): number {
    return this.open
  }

  client(ep: AgentEndpoint): AgentClient {
    const existing = this.entries.get(ep.agentId)
    // the loop asks once per attestation, with the agent record's own strings: compared before anything is built
    if (
      existing &&
      existing.ip === ep.ip &&
      existing.port === ep.port &&
      existing.apiVersion === ep.apiVersion &&
      existing.givenMtlsCert === ep.mtlsCert
    )
      return existing.client
    const useTls =
      this.tls !== null && ep.mtlsCert !== null && ep.mtlsCert !== '' && ep.mtlsCert !== 'disabled'
    const host = ep.ip.includes(':') ? `[${ep.ip}]` : ep.ip
    const origin = `${useTls ? 'https' : 'http'}://${host}:${ep.port}`
    const mtlsCert = useTls ? ep.mtlsCert : null
    if (
      existing &&
      existing.origin === origin &&
      existing.apiVersion === ep.apiVersion &&
      existing.mtlsCert === mtlsCert
    )
      return existing.client
    if (existing) this.release(ep.agentId)
    if (mtlsCert !== null)
      this.pins.set(`${ep.ip}:${ep.port}`, { fingerprint: fingerprintOf(mtlsCert), session: null })
    const client = new AgentClient({
      baseUrl: origin,
      apiVersion: ep.apiVersion,
      timeoutMs: this.timeoutMs,
      // AgentHttp implements the dispatch() and close() that AgentClient calls
      dispatcher: this.http as unknown as Dispatcher,
      maxResponseBytes: this.limits.maxResponseBytes,
      responseBudget: this.budget,
      keepConnection: () => this.keepAlive && this.open < this.limits.maxOpenConnections,
    })
    this.entries.set(ep.agentId, {
      client,
      origin,
      apiVersion: ep.apiVersion,
      mtlsCert,
      ip: ep.ip,
      port: ep.port,
      givenMtlsCert: ep.mtlsCert,
    })
    return client
  }

  release(agentId: string): void {
    const e = this.entries.get(agentId)
    if (!e) return
    this.entries.delete(agentId)
    const url = new URL(e.origin)
    this.pins.delete(`${url.hostname.replace(/^\[|\]$/g, '')}:${url.port}`)
  }

  async close(): Promise<void> {
    this.entries.clear()
    this.pins.clear()
    await this.http.close()
  }

  private connect(
    https: boolean,
    host: string,
    port: number,
    callback: (err: Error | null, socket: Socket | null) => void,
  ): void {
    let done = false
    const finish = (err: Error | null, socket: Socket | null) => {
      if (done) return
      done = true
      if (err !== null) {
        socket?.destroy()
        callback(err, null)
      } else callback(null, socket as Socket)
    }
    let socket: Socket
    if (https) {
      const pin = this.pins.get(`${host}:${port}`)
      if (!pin || this.context === null) {
        callback(new Error(`no pinned certificate for agent ${host}:${port}`), null)
        return
      }
      const tlsOpts: ConnectionOptions = {
        host,
        port,
        secureContext: this.context,
        // checked below: exactly the pinned certificate, or a chain to trusted_server_ca
        rejectUnauthorized: false,
        ALPNProtocols: ['http/1.1'],
        ...(pin.session ? { session: pin.session } : {}),
      }
      const tlsSocket = tlsConnect(tlsOpts)
      socket = tlsSocket
      let trusted = false
      let pendingSession: Buffer | null = null
      tlsSocket.on('session', (session: Buffer) => {
        if (trusted) pin.session = session
        else pendingSession = session
      })
      tlsSocket.once('secureConnect', () => {
        tlsSocket.setTimeout(0)
        // the peer's certificate is read only after a full handshake: a resumed one (at long intervals, every
        // attestation) skips turning it into an object
        const pinned = () => {
          const peer = tlsSocket.getPeerCertificate()
          return (
            pin.fingerprint !== null &&
            peer?.raw !== undefined &&
            createHash('sha256').update(peer.raw).digest().equals(pin.fingerprint)
          )
        }
        trusted =
          // a session is only ever stored from a handshake that passed this check, with this agent
          (tlsSocket.isSessionReused() && pin.session !== null) ||
          pinned() ||
          (this.tls !== null && this.tls.trustedServerCa.length > 0 && tlsSocket.authorized)
        if (!trusted) {
          pin.session = null
          finish(
            new Error('agent certificate is neither its pinned mtls_cert nor chained to a trusted CA'),
            tlsSocket,
          )
          return
        }
        if (pendingSession !== null) pin.session = pendingSession
        finish(null, tlsSocket)
      })
    } else {
      socket = netConnect({ host, port })
      socket.once('connect', () => {
        socket.setTimeout(0)
        finish(null, socket)
      })
    }
    this.open++
    socket.once('close', () => this.open--)
    socket.setNoDelay(true)
    socket.setTimeout(this.timeoutMs, () =>
      finish(new Error(`connecting to ${host}:${port} timed out`), socket),
    )
    socket.once('error', (err) => finish(err, socket))
  }
}
