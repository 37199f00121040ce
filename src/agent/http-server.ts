/**
 * The agent's HTTP layer on `node:http`/`node:https` alone: a table of exact paths, JSON bodies read up to a per-route
 * limit before parsing, the v2 envelope for every answer a route or the table gives, request ids echoed, and the
 * probes. The agent runs on every attested machine, and fastify with its compiled schemas was most of its memory
 * (docs/agent.md); the agent's few fixed routes need none of its routing or schema compilation. mTLS is enforced at
 * the handshake by the HTTPS options the runtime passes (a client certificate required and verified).
 */
import { randomUUID } from 'node:crypto'
import {
  createServer as createHttpServer,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http'
import { createServer as createHttpsServer, type ServerOptions } from 'node:https'
import { Socket } from 'node:net'
import type { InjectOptions, Response as InjectResponse } from 'light-my-request'
import type { Logger } from 'pino'
import { errorEnvelope } from '../api/envelope.ts'
import {
  answerClientError,
  authErrorBody,
  type ProbeOptions,
  SMALL_BODY_LIMIT,
  sanitizeRequestId,
  sharedReadiness,
  socketCertificateStatus,
} from '../api/http-common.ts'
import { KeylimeError } from '../common/errors.ts'

/** What a handler answers: a status and a body sent as JSON (a string is sent as it is). */
export interface Answer {
  status: number
  body?: unknown
  headers?: Record<string, string>
}

export interface AgentRequest {
  /** The path without the query, percent-decoded, without one trailing slash. */
  path: string
  query: URLSearchParams
  /** The parsed JSON body; undefined when the body was empty (or the route takes none). */
  body: unknown
}

/** The schemas a route is documented with (OpenAPI, and tests that walk every route). */
export interface RouteSchema {
  summary: string
  querystring?: unknown
  body?: unknown
  response: Record<number, unknown>
}

export interface Route {
  method: 'GET' | 'POST'
  url: string
  /** Key of the route's schemas in the documentation (`RouteDocs.schemas`), e.g. `GET /quotes/identity`. */
  doc: string
  /** Bytes a POST body may have (413 above it); default `SMALL_BODY_LIMIT`. */
  bodyLimit?: number
  handler: (request: AgentRequest) => Answer | Promise<Answer>
}

/** A route as the OpenAPI document and the route-walking tests see it. */
export interface RouteTableEntry {
  method: string
  url: string
  schema: RouteSchema | undefined
  bodyLimit?: number
}

/** The routes' documentation, loaded on demand: it needs typebox, which a serving agent does not load. */
export interface RouteDocs {
  schemas: Readonly<Record<string, RouteSchema>>
  openapi(table: readonly RouteTableEntry[]): unknown
}

export interface AgentHttpOptions {
  routes: Route[]
  /** The answer for a method and path no route serves. */
  notFound: (method: string, path: string) => Answer
  https?: ServerOptions | null
  logger?: Logger | false
  /** `/healthz`, `/readyz` and `/metrics` on this listener; `/metrics` needs a trusted client certificate. */
  probes?: ProbeOptions
  /** `/metrics` without a client certificate (the plain probe listener). */
  openMetrics?: boolean
  /** Loads the routes' documentation: `/openapi.json` (built on its first request) and `routeTable()`. */
  docs?: () => Promise<RouteDocs>
}

/** How long a refused request's remaining body is read and discarded before the connection is dropped. */
const LINGER_MS = 1000
const JSON_TYPE = 'application/json; charset=utf-8'
/** As fastify's default, longer than the verifier's idle keep-alive connections. */
const KEEP_ALIVE_TIMEOUT_MS = 72_000

class BodyTooLarge extends Error {}

/** Decodes a path's percent-escapes, leaving an encoded `/` encoded (so it never splits a segment); null if invalid. */
function decodePath(raw: string): string | null {
  try {
    return decodeURIComponent(raw.replace(/%2f/gi, '%252F'))
  } catch {
    return null
  }
}

function readBody(req: IncomingMessage, limit: number): Promise<string> {
  const declared = Number(req.headers['content-length'])
  if (declared > limit) return Promise.reject(new BodyTooLarge())
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    let size = 0
    const onData = (chunk: Buffer) => {
      size += chunk.length
      if (size > limit) {
        req.off('data', onData)
        req.off('end', onEnd)
        // the rest is discarded as it arrives, until the connection is dropped
        req.resume()
        reject(new BodyTooLarge())
        return
      }
      chunks.push(chunk)
    }
    const onEnd = () => resolve(Buffer.concat(chunks).toString('utf8'))
    req.on('data', onData)
    req.on('end', onEnd)
    req.on('error', reject)
  })
}

/**
 * A body that was refused or left unread is not buffered: node discards what keeps arriving, and the connection is
 * dropped shortly after the answer unless the upload ends first. Closing at once would reset the connection with
 * unread data, and the client could lose the answer itself.
 */
function lingerOnUnreadBody(req: IncomingMessage, res: ServerResponse): void {
  const socket = req.socket
  // an injected request has no connection to drop
  if (!(socket instanceof Socket)) return
  res.once('finish', () => {
    if (req.complete) return
    const timer = setTimeout(() => socket.destroy(), LINGER_MS)
    timer.unref()
    req.once('end', () => clearTimeout(timer))
  })
}

export class AgentHttpServer {
  readonly server: Server
  private readonly routes = new Map<string, Route[]>()
  private readonly opts: AgentHttpOptions
  private readonly readiness: ReturnType<typeof sharedReadiness> | null
  private openapiDocument: string | null = null

  constructor(opts: AgentHttpOptions) {
    this.opts = opts
    for (const r of opts.routes) {
      const same = this.routes.get(r.url)
      if (same) same.push(r)
      else this.routes.set(r.url, [r])
    }
    this.readiness = opts.probes ? sharedReadiness(opts.probes.readiness) : null
    this.server = opts.https ? createHttpsServer(opts.https, this.dispatch) : createHttpServer(this.dispatch)
    this.server.keepAliveTimeout = KEEP_ALIVE_TIMEOUT_MS
    this.server.on('clientError', answerClientError)
  }

  /** Every route with its schemas (loading the documentation), as the OpenAPI document and tests see them. */
  async routeTable(): Promise<RouteTableEntry[]> {
    const schemas = this.opts.docs ? (await this.opts.docs()).schemas : {}
    return this.opts.routes.map((r) => ({
      method: r.method,
      url: r.url,
      schema: schemas[r.doc],
      ...(r.bodyLimit !== undefined ? { bodyLimit: r.bodyLimit } : {}),
    }))
  }

  /** The node request listener (also what `inject` drives). */
  readonly dispatch = (req: IncomingMessage, res: ServerResponse): void => {
    const id = sanitizeRequestId(req.headers['x-request-id']) ?? randomUUID()
    res.setHeader('X-Request-ID', id)
    lingerOnUnreadBody(req, res)
    this.answer(req).then(
      (a) => send(res, a),
      (err: unknown) => send(res, this.failure(err, id)),
    )
  }

  private async answer(req: IncomingMessage): Promise<Answer> {
    const method = req.method ?? 'GET'
    const url = req.url ?? '/'
    const q = url.indexOf('?')
    const decoded = decodePath(q === -1 ? url : url.slice(0, q))
    if (decoded === null) return envelope(400, 'Malformed Request Parameter: the URL is not valid')
    const path = decoded.length > 1 && decoded.endsWith('/') ? decoded.slice(0, -1) : decoded
    if (method === 'GET') {
      const probe = await this.probe(path, req)
      if (probe) return probe
    }
    const route = this.routes.get(path)?.find((r) => r.method === method)
    if (!route) return this.opts.notFound(method, path)
    let body: unknown
    if (method === 'POST') {
      const text = await readBody(req, route.bodyLimit ?? SMALL_BODY_LIMIT)
      if (text.trim() !== '') {
        try {
          body = JSON.parse(text)
        } catch {
          return envelope(400, 'Malformed Request Parameter: body is not valid JSON')
        }
      }
    }
    return route.handler({ path, query: new URLSearchParams(q === -1 ? '' : url.slice(q + 1)), body })
  }

  private async probe(path: string, req: IncomingMessage): Promise<Answer | null> {
    const probes = this.opts.probes
    if (path === '/openapi.json' && this.opts.docs) {
      this.openapiDocument ??= JSON.stringify((await this.opts.docs()).openapi(await this.routeTable()))
      return { status: 200, body: this.openapiDocument }
    }
    if (!probes || !this.readiness) return null
    const noStore = { 'Cache-Control': 'no-store' }
    if (path === '/healthz') return { status: 200, body: { status: 'ok' }, headers: noStore }
    if (path === '/readyz') {
      const logger = this.opts.logger
      const answer = await this.readiness((err) => {
        if (logger) logger.warn({ err }, 'readiness check failed')
      })
      return { ...answer, headers: noStore }
    }
    if (path === '/metrics' && probes.metrics) {
      // an ADMIN route on the service listener (keylime-api.md §0.5)
      const cert = this.opts.openMetrics ? 'trusted' : socketCertificateStatus(req.socket)
      if (cert === 'plain-http') return { status: 400 }
      if (cert === 'none')
        return { status: 401, body: authErrorBody(401, 'Client certificate required for this action') }
      if (cert === 'untrusted')
        return { status: 403, body: authErrorBody(403, 'Client certificate is not trusted by this server') }
      return {
        status: 200,
        body: await probes.metrics.metrics(),
        headers: { 'Content-Type': probes.metrics.contentType },
      }
    }
    return null
  }

  private failure(err: unknown, id: string): Answer {
    if (err instanceof BodyTooLarge) return envelope(413, 'Request body too large')
    const status = err instanceof KeylimeError ? (err.statusCode ?? 500) : 500
    if (status >= 400 && status < 500) return envelope(status, (err as Error).message)
    if (this.opts.logger) this.opts.logger.error({ err, reqId: id }, 'request failed')
    return envelope(
      status === 503 ? 503 : 500,
      status === 503 ? 'Service Unavailable' : 'Internal Server Error',
    )
  }

  listen(opts: { host: string; port: number }): Promise<void> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject)
      this.server.listen(opts.port, opts.host, () => {
        this.server.off('error', reject)
        resolve()
      })
    })
  }

  /** The bound port once listening. */
  port(): number {
    const a = this.server.address()
    return a && typeof a === 'object' ? a.port : 0
  }

  /** Stops listening and closes every connection, idle keep-alive ones included, so shutdown never hangs. */
  close(): Promise<void> {
    return new Promise((resolve) => {
      if (!this.server.listening) {
        resolve()
        return
      }
      this.server.close(() => resolve())
      this.server.closeAllConnections()
    })
  }

  /** Sends a request through the handler without a socket (tests); light-my-request is loaded only then. */
  async inject(opts: InjectOptions | string): Promise<InjectResponse> {
    const loaded = await import('light-my-request')
    // bundled, the CommonJS package is its chunk's default export
    const { inject } = (loaded as unknown as { default?: typeof loaded }).default ?? loaded
    return inject(this.dispatch, opts)
  }
}

/** An error answer in the v2 envelope. */
export function envelope(status: number, text: string, headers?: Record<string, string>): Answer {
  return { status, body: errorEnvelope(status, text), ...(headers ? { headers } : {}) }
}

const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat']
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec']
const pad2 = (n: number) => String(n).padStart(2, '0')

/**
 * The `Date` header's IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), as `toUTCString` writes it for years 1000-9999.
 * node's own Date header calls `getMilliseconds` and `toUTCString`, which in Node 20 load ICU's time-zone data
 * (~0.8 MiB resident, docs/agent.md); the UTC getters need none of it.
 */
export function httpDate(ms: number): string {
  const d = new Date(ms)
  return (
    `${DAYS[d.getUTCDay()]}, ${pad2(d.getUTCDate())} ${MONTHS[d.getUTCMonth()]} ${d.getUTCFullYear()} ` +
    `${pad2(d.getUTCHours())}:${pad2(d.getUTCMinutes())}:${pad2(d.getUTCSeconds())} GMT`
  )
}

function send(res: ServerResponse, a: Answer): void {
  if (res.headersSent) return
  res.sendDate = false
  res.setHeader('Date', httpDate(Date.now()))
  res.statusCode = a.status
  for (const [k, v] of Object.entries(a.headers ?? {})) res.setHeader(k, v)
  if (a.body === undefined) {
    res.end()
    return
  }
  const text = typeof a.body === 'string' ? a.body : JSON.stringify(a.body)
  if (!res.hasHeader('Content-Type')) res.setHeader('Content-Type', JSON_TYPE)
  res.setHeader('Content-Length', Buffer.byteLength(text))
  res.end(text)
}

/**
 * The plain-HTTP probe listener (`metrics_port`): only `/healthz`, `/readyz` and `/metrics`, unauthenticated, for
 * kubelet probes and Prometheus, which cannot present a client certificate. No other route exists on it (404; 405
 * for another method on a probe path), so it never reaches agent data.
 */
export async function startAgentProbeListener(
  opts: ProbeOptions & { host: string; port: number; logger?: Logger | false },
): Promise<AgentHttpServer> {
  const probes = new Set(['/healthz', '/readyz', ...(opts.metrics ? ['/metrics'] : [])])
  const app = new AgentHttpServer({
    routes: [],
    notFound: (_method, path) =>
      probes.has(path) ? { status: 405, headers: { Allow: 'GET' } } : { status: 404 },
    probes: { readiness: opts.readiness, metrics: opts.metrics },
    logger: opts.logger ?? false,
    openMetrics: true,
  })
  await app.listen({ host: opts.host, port: opts.port })
  return app
}
