/**
 * undici JSON client for Keylime's v2 REST APIs: one connection pool per client (keep-alive reuse), mTLS with a
 * client certificate, server identity by CA chain or a pinned certificate (hostnames are never checked, as
 * upstream), timeouts on connect/headers/body, and envelope decoding: a non-2xx answer becomes `PeerError`.
 * undici is loaded on a client's first request, and a caller that passes `nodeHttpDispatcher()` never loads it: the
 * agents' calls to the registrar and verifier would otherwise keep ~10 MiB of undici, and the JIT it needs, resident
 * on every machine.
 * Replies are checked with a typebox schema (its compiler loaded on the first such check) or with a plain
 * `ReplyCheck` function, which is what the agents use so that typebox is never loaded there.
 */
import { X509Certificate } from 'node:crypto'
import { request as httpRequest } from 'node:http'
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https'
import type { TLSSocket } from 'node:tls'
import type { Static, TSchema } from '@sinclair/typebox'
import type { TypeCheck } from '@sinclair/typebox/compiler'
import type { buildConnector, Dispatcher } from 'undici'
import { KeylimeError } from '../common/errors.ts'
import type { V2Envelope } from './envelope.ts'
import type { ReplyCheck } from './reply-check.ts'

/** The peer answered with an error status, garbage, or not at all (`status` undefined). */
export class PeerError extends KeylimeError {
  readonly status: number | undefined
  /** Parsed JSON body when there was one, else the raw text (truncated), else undefined. */
  readonly body: unknown
  /** The envelope's `status` text when the peer sent an envelope. */
  readonly peerStatus: string | undefined

  constructor(
    message: string,
    opts: { status?: number; body?: unknown; peerStatus?: string; cause?: unknown },
  ) {
    super('ERR_PEER', message, { statusCode: 502, cause: opts.cause })
    this.status = opts.status
    this.body = opts.body
    this.peerStatus = opts.peerStatus
  }
}

export interface ClientTls {
  /** PEM CA certificate(s) the server certificate must chain to. */
  ca?: string | string[]
  /** PEM of the exact server certificate to accept (e.g. an agent's self-signed `mtls_cert`). */
  pinnedServerCert?: string
  /** Client certificate + key (mTLS). */
  cert?: string
  key?: string
  keyPassphrase?: string
  /** Skip server verification entirely (upstream `trusted_server_ca = all`). */
  insecure?: boolean
}

export interface JsonClientOptions {
  /** `http://host:port` or `https://host:port` */
  baseUrl: string
  tls?: ClientTls
  /** Per-request timeout (connect, headers and body each), default 60 s as upstream `request_timeout`. */
  timeoutMs?: number
  /** Max sockets to the peer (default 16). */
  connections?: number
  /** Share a dispatcher across clients; the client then does not close it. */
  dispatcher?: JsonDispatcher
}

/** The part of an HTTP client `JsonClient` uses: undici's `Dispatcher` is one, `nodeHttpDispatcher()` another. */
export interface JsonDispatcher {
  request(options: {
    origin: string
    path: string
    method: string
    headers: Record<string, string>
    body?: string
    signal: AbortSignal
  }): Promise<{
    statusCode: number
    headers: Record<string, string | string[] | undefined>
    body: { text(): Promise<string> }
  }>
  close(): Promise<void>
}

/** Largest reply `nodeHttpDispatcher` reads; a Keylime envelope or a push-mode answer is far smaller. */
const NODE_HTTP_MAX_REPLY_BYTES = 1 << 20

/**
 * A dispatcher over node:http and node:https, for the agents: undici parses HTTP with WebAssembly, which needs the
 * JIT the agents' units turn off (`--jitless`), and would stay resident on every attested machine. Plain HTTP opens
 * one connection per request (the pull agent's few registrar calls); HTTPS keeps up to `connections` connections
 * alive (the push agent's calls to the verifier and registrar). Server identity is checked as `createDispatcher`
 * does (CA chain, hostnames unchecked) except for a pinned certificate, which only the services need and is refused
 * here rather than ignored. Replies above 1 MiB are refused.
 */
export function nodeHttpDispatcher(
  tls: ClientTls | undefined = undefined,
  opts: { connections?: number } = {},
): JsonDispatcher {
  if (tls?.pinnedServerCert !== undefined)
    throw new Error('nodeHttpDispatcher does not check pinned server certificates: use createDispatcher')
  let tlsAgent: HttpsAgent | undefined
  const agentFor = (origin: string): HttpsAgent | false => {
    if (origin.startsWith('http:')) return false
    tlsAgent ??= new HttpsAgent({
      keepAlive: true,
      maxSockets: opts.connections ?? 2,
      ...clientTlsOptions(tls, !tls?.insecure),
    })
    return tlsAgent
  }
  return {
    request: (o) =>
      new Promise((resolve, reject) => {
        if (!o.origin.startsWith('http:') && !o.origin.startsWith('https:')) {
          reject(new Error(`nodeHttpDispatcher serves http: and https: origins only, not ${o.origin}`))
          return
        }
        const body = o.body === undefined ? undefined : Buffer.from(o.body, 'utf8')
        const agent = agentFor(o.origin)
        const req = (agent === false ? httpRequest : httpsRequest)(
          o.origin + o.path,
          {
            method: o.method,
            signal: o.signal,
            agent,
            headers: body ? { ...o.headers, 'content-length': String(body.length) } : o.headers,
          },
          (res) => {
            const chunks: Buffer[] = []
            let size = 0
            res.on('data', (c: Buffer) => {
              size += c.length
              if (size > NODE_HTTP_MAX_REPLY_BYTES)
                req.destroy(new Error(`reply larger than ${NODE_HTTP_MAX_REPLY_BYTES} bytes`))
              else chunks.push(c)
            })
            res.on('error', reject)
            res.on('end', () => {
              const text = Buffer.concat(chunks).toString('utf8')
              resolve({
                statusCode: res.statusCode ?? 0,
                headers: res.headers,
                body: { text: async () => text },
              })
            })
          },
        )
        req.on('error', reject)
        req.end(body)
      }),
    close: async () => tlsAgent?.destroy(),
  }
}

/** What `results` must fit: a typebox schema or a plain check. */
export type ResultsShape = TSchema | ReplyCheck<unknown>
/** The type of results that fit a shape. */
export type ResultsOf<S> = S extends TSchema ? Static<S> : S extends ReplyCheck<infer T> ? T : unknown

export interface JsonRequest<S extends ResultsShape | undefined> {
  query?: Record<string, string | number | boolean | undefined>
  body?: unknown
  /** What `results` must fit; a reply that does not fit raises PeerError. */
  results?: S
  headers?: Record<string, string>
}

export interface JsonResponse<T> {
  status: number
  envelope: V2Envelope<T>
  results: T
}

const caListOf = (tls: ClientTls | undefined): string[] =>
  tls?.ca === undefined ? [] : Array.isArray(tls.ca) ? tls.ca : [tls.ca]

/** TLS client options of a profile, for both dispatchers: hostnames are never checked (as upstream). */
function clientTlsOptions(tls: ClientTls | undefined, rejectUnauthorized: boolean) {
  const caList = caListOf(tls)
  return {
    ...(caList.length > 0 ? { ca: caList } : {}),
    ...(tls?.cert ? { cert: tls.cert } : {}),
    ...(tls?.key ? { key: tls.key } : {}),
    ...(tls?.keyPassphrase ? { passphrase: tls.keyPassphrase } : {}),
    minVersion: 'TLSv1.2' as const,
    rejectUnauthorized,
    checkServerIdentity: () => undefined,
  }
}

function pemToDer(pem: string): Buffer {
  return new X509Certificate(pem).raw
}

/**
 * Builds the undici Agent for a TLS profile. Hostname checks are disabled; the server is trusted when its chain
 * verifies against `ca`, or when it presents exactly `pinnedServerCert` (checked on the finished handshake, since
 * OpenSSL does not accept a non-self-signed leaf as a trust anchor).
 */
export async function createDispatcher(
  tls: ClientTls | undefined,
  pinnedDer: Buffer | undefined,
  opts: { timeoutMs: number; connections: number },
): Promise<Dispatcher> {
  const loaded = await import('undici')
  // Bundled (dist/), the CommonJS package arrives as the default export of its chunk; from source, as named exports.
  const undici = (loaded as unknown as { default?: typeof loaded }).default ?? loaded
  const timeout = opts.timeoutMs
  const caList = caListOf(tls)
  const tlsOptions = {
    ...clientTlsOptions(tls, !tls?.insecure && pinnedDer === undefined),
    timeout,
  }
  const base = undici.buildConnector(tlsOptions)
  const connect: buildConnector.connector = (options, callback) =>
    base(options, (err, socket) => {
      if (err || !socket || !pinnedDer || options.protocol !== 'https:') {
        if (err) callback(err, null)
        else callback(null, socket as NonNullable<typeof socket>)
        return
      }
      const tlsSocket = socket as TLSSocket
      const peer = tlsSocket.getPeerCertificate()
      const chained = caList.length > 0 && tlsSocket.authorized
      if (chained || (peer?.raw && pinnedDer.equals(peer.raw))) {
        callback(null, socket)
        return
      }
      socket.destroy()
      callback(
        new Error('server certificate is neither the pinned certificate nor chained to a trusted CA'),
        null,
      )
    })
  return new undici.Agent({
    connections: opts.connections,
    headersTimeout: timeout,
    bodyTimeout: timeout,
    keepAliveTimeout: 30000,
    connect,
  })
}

const compiled = new WeakMap<TSchema, TypeCheck<TSchema>>()
/** Null when `value` fits, else the first problem; typebox's compiler is loaded on the first schema checked. */
async function misfit(shape: ResultsShape, value: unknown): Promise<string | null> {
  if (typeof shape === 'function') return shape(value)
  let c = compiled.get(shape)
  if (!c) {
    const { TypeCompiler } = await import('@sinclair/typebox/compiler')
    c = TypeCompiler.Compile(shape)
    compiled.set(shape, c)
  }
  if (c.Check(value)) return null
  const first = c.Errors(value).First()
  return first ? `${first.path || '/'}: ${first.message}` : ''
}

export class JsonClient {
  readonly baseUrl: string
  private dispatcher: JsonDispatcher | Promise<JsonDispatcher> | null
  private readonly makeDispatcher: () => Promise<JsonDispatcher>
  private readonly ownsDispatcher: boolean
  private readonly timeoutMs: number

  constructor(opts: JsonClientOptions) {
    this.baseUrl = opts.baseUrl.replace(/\/+$/, '')
    this.timeoutMs = opts.timeoutMs ?? 60000
    this.ownsDispatcher = opts.dispatcher === undefined
    this.dispatcher = opts.dispatcher ?? null
    // a malformed pinned certificate fails here, not at the first request
    const pinnedDer = opts.tls?.pinnedServerCert ? pemToDer(opts.tls.pinnedServerCert) : undefined
    const settings = { timeoutMs: this.timeoutMs, connections: opts.connections ?? 16 }
    this.makeDispatcher = () => createDispatcher(opts.tls, pinnedDer, settings)
  }

  private dispatcherNow(): Promise<JsonDispatcher> {
    this.dispatcher ??= this.makeDispatcher()
    return Promise.resolve(this.dispatcher)
  }

  async request<S extends ResultsShape | undefined = undefined>(
    method: 'GET' | 'POST' | 'PUT' | 'DELETE' | 'PATCH',
    path: string,
    req: JsonRequest<S> = {},
  ): Promise<JsonResponse<ResultsOf<S>>> {
    const url = new URL(this.baseUrl + path)
    for (const [k, v] of Object.entries(req.query ?? {}))
      if (v !== undefined) url.searchParams.set(k, String(v))
    let status: number
    let text: string
    try {
      const dispatcher = await this.dispatcherNow()
      const res = await dispatcher.request({
        origin: url.origin,
        path: url.pathname + url.search,
        method,
        headers: {
          accept: 'application/json',
          ...(req.body !== undefined ? { 'content-type': 'application/json' } : {}),
          ...req.headers,
        },
        ...(req.body !== undefined ? { body: JSON.stringify(req.body) } : {}),
        signal: AbortSignal.timeout(this.timeoutMs),
      })
      status = res.statusCode
      text = await res.body.text()
    } catch (err) {
      throw new PeerError(`${method} ${url.pathname}: ${(err as Error).message}`, { cause: err })
    }
    let json: unknown
    if (text !== '') {
      try {
        json = JSON.parse(text)
      } catch {
        json = undefined
      }
    }
    const env = json as Partial<V2Envelope<unknown>> | undefined
    const peerStatus = typeof env?.status === 'string' ? env.status : undefined
    if (status < 200 || status >= 300) {
      throw new PeerError(
        `${method} ${url.pathname} answered ${status}${peerStatus ? `: ${peerStatus}` : ''}`,
        {
          status,
          body: json ?? (text === '' ? undefined : text.slice(0, 2000)),
          ...(peerStatus !== undefined ? { peerStatus } : {}),
        },
      )
    }
    if (json === undefined || typeof json !== 'object' || json === null) {
      throw new PeerError(`${method} ${url.pathname} answered ${status} without a JSON envelope`, {
        status,
        body: text.slice(0, 2000),
      })
    }
    const results = (env?.results ?? null) as unknown
    if (req.results !== undefined) {
      const problem = await misfit(req.results, results)
      if (problem !== null)
        throw new PeerError(
          `${method} ${url.pathname}: reply does not fit the expected schema${problem ? ` (${problem})` : ''}`,
          { status, body: json },
        )
    }
    return {
      status,
      envelope: json as V2Envelope<ResultsOf<S>>,
      results: results as ResultsOf<S>,
    }
  }

  async close(): Promise<void> {
    if (this.ownsDispatcher && this.dispatcher !== null) await (await this.dispatcher).close()
  }
}
