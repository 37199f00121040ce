/**
 * The one fastify factory behind the registrar, the verifier and the agent (keylime-api.md §0): HTTP or HTTPS with
 * an optional client certificate, sanitised request ids, JSON bodies whatever their Content-Type, typebox route
 * schemas (a type provider types the handlers), small body limits unless a route asks for more, the admin check
 * before a body is read, an OpenAPI document at `/openapi.json`, and one error mapper: every error a handler or
 * fastify itself raises becomes the `{code, status, results}` envelope (router-level 404/405 keep upstream's empty
 * bodies), 5xx bodies stay generic, and an unreachable database is a 503 with `Retry-After`.
 */
import { randomUUID } from 'node:crypto'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { ServerOptions as HttpsServerOptions } from 'node:https'
import { Socket } from 'node:net'
import { TLSSocket } from 'node:tls'
import { fastifySwagger } from '@fastify/swagger'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import Fastify, {
  type FastifyBaseLogger,
  type FastifyError,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
  type FastifySchema,
  type FastifySchemaValidationError,
  type HTTPMethods,
  LogController,
  type RawServerDefault,
  type RouteGenericInterface,
  type RouteHandlerMethod,
} from 'fastify'
import { KeylimeError } from '../common/errors.ts'
import type { Logger } from '../common/log.ts'
import { errorEnvelope } from './envelope.ts'
import {
  answerClientError,
  authErrorBody,
  type ClientCertStatus,
  type ProbeOptions,
  SMALL_BODY_LIMIT,
  sanitizeRequestId,
  sharedReadiness,
  socketCertificateStatus,
} from './http-common.ts'
import type { Admission } from './rate-limit.ts'
import { V2_PREFIXES } from './versions.ts'

/** A request body or parameter that does not fit the route's schema: a 400 with the v2 envelope. */
export class RequestSchemaError extends KeylimeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_REQUEST_SCHEMA', message, { statusCode: 400, ...options })
  }
}

type SchemaErrorDataVar = 'body' | 'headers' | 'params' | 'querystring'

export {
  authErrorBody,
  type ClientCertStatus,
  type ProbeOptions,
  READINESS_TIMEOUT_MS,
  type ReadinessCheck,
  SMALL_BODY_LIMIT,
  sanitizeRequestId,
} from './http-common.ts'

export const V3_PREFIXES = ['3', '3.0'] as const

/** Longest path parameter the router matches; longer ones answer 414 (ids are validated far below this). */
const MAX_PARAM_LENGTH = 2048
/** Seconds a client is asked to wait when the database is unreachable. */
export const DATABASE_RETRY_AFTER_SECONDS = 5

export type KeylimeServer = FastifyInstance<
  RawServerDefault,
  IncomingMessage,
  ServerResponse,
  FastifyBaseLogger,
  TypeBoxTypeProvider
>

/** Decides whether a request may reach an ADMIN route; answers the refusal itself (§0.5). */
export type AdminCheck = (request: FastifyRequest, reply: FastifyReply) => Promise<void>

export interface KeylimeServerOptions {
  logger?: Logger | false
  /** HTTPS listener options (see `tlsServerOptions`); null/undefined for plain HTTP. */
  https?: HttpsServerOptions | null
  /** Body limit in bytes of routes that do not set their own (413 above it). Default `SMALL_BODY_LIMIT`. */
  bodyLimit?: number
  /** Close keep-alive sockets on `close()` so tests and shutdown never hang. */
  forceCloseConnections?: boolean
  /** The ADMIN check run in `onRequest` of routes with `config.admin` (default `requireAdmin`). */
  adminCheck?: AdminCheck
  /** Message of a 400 for an `agent_id` path parameter that does not fit `AgentId`. */
  agentIdMessage?: string
  /** Answer for paths no route matches (default: upstream's empty 404, or 405 when other methods exist). */
  notFound?: (request: FastifyRequest, reply: FastifyReply) => void
  /** OpenAPI `info` and the path prefixes the document lists (every prefix serves the same routes). */
  openapi?: { title: string; version: string; documentedPrefixes: readonly string[] }
  /** `/healthz`, `/readyz` (unauthenticated) and `/metrics` (an ADMIN route on this listener); see `addProbeRoutes`. */
  probes?: ProbeOptions
}

/** One registered route, as tests and the OpenAPI check see it. */
export interface RouteEntry {
  method: string
  url: string
  schema: FastifySchema | undefined
  admin: boolean
  bodyLimit: number | undefined
}

interface RoutePattern {
  regex: RegExp
  methods: Set<string>
}

declare module 'fastify' {
  interface FastifyInstance {
    keylimeRoutes: RoutePattern[]
    keylimeRouteTable: RouteEntry[]
  }
  interface FastifyContextConfig {
    /** ADMIN route (§0.5): the server's admin check runs before the body is read. */
    admin?: boolean
  }
}

function patternRegex(path: string): RegExp {
  const body = path
    .split('/')
    .map((seg) => (seg.startsWith(':') ? '[^/]+' : seg.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')))
    .join('/')
  return new RegExp(`^${body}/?$`)
}

/** Creates a fastify instance with Keylime's conventions (call before registering routes). */
export function createKeylimeServer(opts: KeylimeServerOptions = {}): KeylimeServer {
  const app = Fastify({
    ...(opts.logger ? { loggerInstance: opts.logger } : { logger: false }),
    ...(opts.https ? { https: opts.https } : {}),
    bodyLimit: opts.bodyLimit ?? SMALL_BODY_LIMIT,
    routerOptions: { ignoreTrailingSlash: true, maxParamLength: MAX_PARAM_LENGTH },
    forceCloseConnections: opts.forceCloseConnections ?? true,
    return503OnClosing: true,
    exposeHeadRoutes: false,
    // wire data is checked as sent: a number is not a string (lists that upstream also takes as one string say so
    // in their schema and are normalised by the handler)
    ajv: { customOptions: { coerceTypes: false } },
    schemaErrorFormatter: (errors, dataVar) =>
      new RequestSchemaError(validationMessage(errors, dataVar, opts.agentIdMessage)),
    frameworkErrors: (error, _request, reply: FastifyReply) => {
      if (error.code === 'FST_ERR_MAX_PARAM_LENGTH') {
        reply.code(414).send(errorEnvelope(414, 'URI Too Long: a path parameter is too long'))
        return
      }
      reply.code(400).send(errorEnvelope(400, 'Malformed Request Parameter: the URL is not valid'))
    },
    clientErrorHandler: answerClientError,
    // fastify's two lines per request are replaced by one access line at debug level (`accessLog` below)
    logController: new LogController({ disableRequestLogging: true }),
    // the id a log line carries is the one the response echoes: the caller's sanitised X-Request-ID, else a fresh one
    genReqId: (req) => sanitizeRequestId(req.headers['x-request-id']) ?? randomUUID(),
  }).withTypeProvider<TypeBoxTypeProvider>() as unknown as KeylimeServer
  app.decorate('keylimeRoutes', [] as RoutePattern[])
  app.decorate('keylimeRouteTable', [] as RouteEntry[])
  // responses go out as the handler built them; the response schemas document the API (OpenAPI)
  app.setSerializerCompiler(() => (data) => JSON.stringify(data))

  const adminCheck = opts.adminCheck ?? requireAdmin
  app.addHook('onRoute', (route) => {
    const methods = [route.method].flat()
    if (route.config?.admin) {
      const own = route.onRequest === undefined ? [] : [route.onRequest].flat()
      route.onRequest = [refuseBeforeBody(adminCheck), ...own]
    }
    const documented = opts.openapi?.documentedPrefixes
    if (documented && /^\/v\d/.test(route.url) && !documented.some((p) => route.url.startsWith(`/v${p}/`)))
      route.schema = { ...route.schema, hide: true }
    if (route.url === '/openapi.json') return
    for (const m of methods)
      app.keylimeRouteTable.push({
        method: m,
        url: route.url,
        schema: route.schema,
        admin: route.config?.admin === true,
        bodyLimit: route.bodyLimit,
      })
    const regex = patternRegex(route.url.replace(/\/+$/, '') || '/')
    const existing = app.keylimeRoutes.find((r) => r.regex.source === regex.source)
    if (existing) for (const m of methods) existing.methods.add(m)
    else app.keylimeRoutes.push({ regex, methods: new Set(methods) })
  })
  if (opts.openapi) {
    const { title, version } = opts.openapi
    // the plugin's setup is synchronous; calling it directly registers its route collector before any route
    fastifySwagger(app as unknown as FastifyInstance, { openapi: { info: { title, version } } }, (err) => {
      if (err) throw err
    })
    app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger())
  }

  acceptJsonBodiesOfAnyContentType(app)
  if (opts.probes) addProbeRoutes(app, opts.probes, { metricsAdmin: true })

  // callback hooks, not async ones: every request passes them, and an async hook costs a promise each
  app.addHook('onRequest', (request, reply, done) => {
    reply.header('X-Request-ID', request.id)
    done()
  })
  if (opts.logger) addAccessLog(app)

  app.setNotFoundHandler(
    opts.notFound ??
      ((request, reply) => {
        const path = (request.url.split('?')[0] ?? '').replace(/\/+$/, '') || '/'
        const allowed = new Set<string>()
        for (const r of app.keylimeRoutes) if (r.regex.test(path)) for (const m of r.methods) allowed.add(m)
        if (allowed.size > 0) {
          reply
            .code(405)
            .header('Allow', [...allowed].sort().join(', '))
            .send()
          return
        }
        reply.code(404).send()
      }),
  )

  app.setErrorHandler((error: FastifyError | KeylimeError | Error, request, reply) => {
    // pino's error serializer writes the type, message, stack and the chain of causes
    if (unreadBody(error)) closeSoonAfterAnswer(request, reply)
    const unavailable = databaseUnavailableReason(error)
    if (unavailable !== null) {
      request.log.error({ err: error }, 'database unavailable')
      reply
        .code(503)
        .header('Retry-After', String(DATABASE_RETRY_AFTER_SECONDS))
        .send(errorEnvelope(503, `Service Unavailable: database unavailable (${unavailable})`))
      return
    }
    const status = errorStatus(error)
    if (status >= 500) {
      request.log.error({ err: error }, 'request failed')
      reply
        .code(status)
        .send(errorEnvelope(status, status === 503 ? 'Service Unavailable' : 'Internal Server Error'))
      return
    }
    reply.code(status).send(errorEnvelope(status, publicMessage(error, status)))
  })
  return app
}

const ACCESS_LOG_LEVELS = new Set(['debug', 'trace'])
/** Paths polled by kubelets and Prometheus every few seconds: never access-logged. */
const PROBE_PATHS = new Set(['/healthz', '/readyz', '/metrics'])

/**
 * One access line per answered request at `debug` (`KEYLIME_LOG_LEVEL=debug` turns them on): method, path without
 * the query, status, milliseconds, with the request id the response echoed (pino's `reqId`). At the default level
 * the hook costs one level check per request; probes are skipped either way.
 */
function addAccessLog(app: KeylimeServer): void {
  app.addHook('onResponse', (request, reply, done) => {
    if (ACCESS_LOG_LEVELS.has(request.log.level)) logAccess(request, reply)
    done()
  })
}

function logAccess(request: FastifyRequest, reply: FastifyReply): void {
  const path = request.url.split('?')[0] ?? ''
  if (PROBE_PATHS.has(path)) return
  request.log.debug(
    {
      method: request.method,
      path,
      status: reply.statusCode,
      ms: Math.round(reply.elapsedTime * 10) / 10,
      remote: request.ip,
    },
    'request',
  )
}

/** Names the first field that does not fit: `body.accept_tpm_hash_algs must be array`. */
export function validationMessage(
  errors: FastifySchemaValidationError[],
  dataVar: SchemaErrorDataVar,
  agentIdMessage?: string,
): string {
  const e = errors[0]
  if (!e) return `Malformed Request Parameter: ${dataVar} is not valid`
  const path = e.instancePath.split('/').filter(Boolean)
  if (e.keyword === 'required' && typeof e.params.missingProperty === 'string')
    path.push(e.params.missingProperty)
  if (dataVar === 'params' && path[0] === 'agent_id' && agentIdMessage) return agentIdMessage
  const field = [dataVar, ...path].join('.')
  const why = e.keyword === 'required' ? 'is required' : (e.message ?? 'is not valid')
  return `Malformed Request Parameter: ${field} ${why}`
}

function errorStatus(error: unknown): number {
  if (error instanceof KeylimeError) return error.statusCode ?? 500
  const e = error as FastifyError
  if (e.validation) return 400
  if (e instanceof SyntaxError) return 400
  const s = typeof e.statusCode === 'number' ? e.statusCode : 500
  return s >= 400 && s < 600 ? s : 500
}

function publicMessage(error: unknown, status: number): string {
  const e = error as FastifyError
  if (e instanceof KeylimeError || e.validation) return e.message
  switch (e.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return 'Request body too large'
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return 'Unsupported Content-Type'
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return 'Malformed Request Parameter: body length does not match Content-Length'
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return 'Malformed Request Parameter: empty body'
  }
  if (e instanceof SyntaxError) return 'Malformed Request Parameter'
  return e.message || (status === 404 ? 'Not Found' : 'Bad Request')
}

/**
 * For error handlers of their own (the verifier's JSON:API routes): a request whose body was refused unread (too
 * large, wrong length) has its connection dropped soon after the answer, as the server's own handler does.
 */
export function dropConnectionAfterUnreadBody(
  error: unknown,
  request: FastifyRequest,
  reply: FastifyReply,
): void {
  if (unreadBody(error)) closeSoonAfterAnswer(request, reply)
}

function unreadBody(error: unknown): boolean {
  const code = (error as { code?: unknown }).code
  return code === 'FST_ERR_CTP_BODY_TOO_LARGE' || code === 'FST_ERR_CTP_INVALID_CONTENT_LENGTH'
}

const DATABASE_ERROR_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EAI_AGAIN',
  'SQLITE_BUSY',
  'SQLITE_LOCKED',
  'SQLITE_READONLY',
  'SQLITE_CANTOPEN',
  'SQLITE_FULL',
  'SQLITE_PROTOCOL',
  // PostgreSQL: shut down by an administrator, crashed, starting up, too many connections
  '57P01',
  '57P02',
  '57P03',
  '53300',
  // MySQL/MariaDB (mysql2): connection lost or killed, server shutting down, too many connections, a read-only
  // server (a replica during failover), disk full
  'PROTOCOL_CONNECTION_LOST',
  'ER_CONNECTION_KILLED',
  'ER_SERVER_SHUTDOWN',
  'ER_CON_COUNT_ERROR',
  'ER_TOO_MANY_USER_CONNECTIONS',
  'ER_OPTION_PREVENTS_STATEMENT',
  'ER_READ_ONLY_MODE',
  'ER_DISK_FULL',
  'ER_RECORD_FILE_FULL',
])

/**
 * The reason (an error code, never a message that could carry a connection string) when an error means the
 * database cannot be reached or written now; null for any other error.
 */
export function databaseUnavailableReason(error: unknown): string | null {
  let e: unknown = error
  for (let depth = 0; depth < 5 && e instanceof Error; depth++) {
    const code = (e as { code?: unknown }).code
    if (typeof code === 'string') {
      if (DATABASE_ERROR_CODES.has(code) || code.startsWith('SQLITE_IOERR')) return code
      // PostgreSQL class 08: connection exceptions
      if (/^08[0-9A-Z]{3}$/.test(code)) return code
    }
    if (
      /Connection terminated|timeout exceeded when trying to connect|connection is in closed state|Can't write in closed state/.test(
        e.message,
      )
    )
      return 'connection lost'
    e = (e as { cause?: unknown }).cause
  }
  return null
}

/**
 * Runs the admin check in `onRequest`, before fastify reads a body: a refused caller's upload is never buffered or
 * parsed, and the connection is dropped soon after the refusal.
 */
function refuseBeforeBody(check: AdminCheck): AdminCheck {
  return async (request, reply) => {
    await check(request, reply)
    if (reply.sent && hasBody(request)) closeSoonAfterAnswer(request, reply)
  }
}

/** How long a refused request's remaining body is read and discarded before the connection is dropped. */
const LINGER_MS = 1000

/**
 * A body that was refused or cut off is not buffered: node discards what keeps arriving, and the connection is
 * dropped shortly after the answer unless the upload ends first. Closing at once would reset the connection with
 * unread data, and the client could lose the answer itself.
 */
function closeSoonAfterAnswer(request: FastifyRequest, reply: FastifyReply): void {
  // fastify asks for `Connection: close` after a body error; node would then close before the client read the answer
  reply.removeHeader('connection')
  const raw = request.raw
  const socket = raw.socket
  // an injected request has no connection to drop
  if (!(socket instanceof Socket)) return
  const linger = () => {
    if (raw.complete) return
    const timer = setTimeout(() => socket.destroy(), LINGER_MS)
    timer.unref()
    raw.once('end', () => clearTimeout(timer))
  }
  if (reply.raw.writableFinished) linger()
  else reply.raw.once('finish', linger)
}

function hasBody(request: FastifyRequest): boolean {
  const h = request.headers
  return (
    (h['content-length'] !== undefined && h['content-length'] !== '0') || h['transfer-encoding'] !== undefined
  )
}

// ---- health, readiness, metrics ----

/**
 * Registers `GET /healthz` (the process answers), `GET /readyz` (the service's checks; 503 when one fails) and,
 * with a registry, `GET /metrics` in Prometheus text format. Concurrent `/readyz` calls share one run of the
 * checks, so a burst of probes costs one database round trip. `metricsAdmin` makes `/metrics` an ADMIN route (the
 * service listeners); the plain probe listener serves it openly.
 */
export function addProbeRoutes(
  app: KeylimeServer,
  probes: ProbeOptions,
  opts: { metricsAdmin: boolean },
): void {
  const readiness = sharedReadiness(probes.readiness)
  app.get('/healthz', { schema: { hide: true } }, async (_request, reply) =>
    reply.header('Cache-Control', 'no-store').send({ status: 'ok' }),
  )
  app.get('/readyz', { schema: { hide: true } }, async (request, reply) => {
    const answer = await readiness((err) => request.log.warn({ err }, 'readiness check failed'))
    return reply.code(answer.status).header('Cache-Control', 'no-store').send(answer.body)
  })
  const registry = probes.metrics
  if (registry)
    app.route({
      method: 'GET',
      url: '/metrics',
      schema: { hide: true },
      ...(opts.metricsAdmin ? { config: { admin: true } } : {}),
      handler: async (_request, reply) =>
        reply.header('Content-Type', registry.contentType).send(await registry.metrics()),
    })
}

export interface ProbeListenerOptions extends ProbeOptions {
  host: string
  port: number
  logger?: Logger | false
}

/**
 * The plain-HTTP probe listener (`metrics_port`): only `/healthz`, `/readyz` and `/metrics`, unauthenticated, for
 * kubelet probes and Prometheus, which cannot present the services' client certificates. No other route exists on
 * it, so it never reaches an admin action or agent data.
 */
export async function startProbeListener(opts: ProbeListenerOptions): Promise<KeylimeServer> {
  const app = createKeylimeServer({ ...(opts.logger ? { logger: opts.logger } : {}) })
  addProbeRoutes(app, { readiness: opts.readiness, metrics: opts.metrics }, { metricsAdmin: false })
  await app.listen({ host: opts.host, port: opts.port })
  return app
}

/** A refusal's body and media type, as the API the request addressed words its errors. */
export type RefusalRenderer = (
  request: FastifyRequest,
  status: number,
  detail: string,
) => { body: unknown; contentType?: string }

const v2Refusal: RefusalRenderer = (_request, status, detail) => ({ body: errorEnvelope(status, detail) })

/**
 * An `onRequest` hook that refuses, before any body is read, the requests `applies` selects once their source address
 * has used its budget: 429 with `Retry-After`, in the v2 envelope unless `render` words it otherwise. `what` names
 * the requests in the message.
 */
export function rateLimitHook(
  admit: (address: string) => Admission,
  applies: (request: FastifyRequest) => boolean,
  what: string,
  render: RefusalRenderer = v2Refusal,
) {
  return async (request: FastifyRequest, reply: FastifyReply): Promise<void> => {
    if (!applies(request)) return
    const admission = admit(request.ip)
    if (admission.admitted) return
    const refusal = render(
      request,
      429,
      `Too many ${what} requests from this address; retry in ${admission.retryAfterSeconds} s`,
    )
    if (refusal.contentType !== undefined) reply.header('Content-Type', refusal.contentType)
    await reply.code(429).header('Retry-After', String(admission.retryAfterSeconds)).send(refusal.body)
  }
}

/** The port a started listener is bound to. */
export function boundPort(app: KeylimeServer | FastifyInstance): number {
  const addr = app.server.address()
  return addr && typeof addr === 'object' ? addr.port : 0
}

// ---- route registration ----

type KeylimeHandler<S extends FastifySchema> = RouteHandlerMethod<
  RawServerDefault,
  IncomingMessage,
  ServerResponse,
  RouteGenericInterface,
  unknown,
  S,
  TypeBoxTypeProvider
>

export interface VersionedRoute<S extends FastifySchema> {
  method: HTTPMethods | HTTPMethods[]
  /** Path after the version prefix, e.g. `/agents/:agent_id`. */
  path: string
  /** Register under `/v2` and every `/v2.x` (default true). */
  v2?: boolean | readonly string[]
  /** Register under `/v3` and `/v3.0` (default false). */
  v3?: boolean
  schema: S
  /** ADMIN route: the server's admin check runs in `onRequest`, before any body is read. */
  admin?: boolean
  /** The route's own authorization, run in `onRequest` (before any body is read) where `admin` does not fit. */
  onRequest?: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
  /** Body limit in bytes when larger than the server's default (policy uploads). */
  bodyLimit?: number
  /** Route-specific wording of schema errors (upstream's texts for the same failures). */
  schemaErrorFormatter?: (errors: FastifySchemaValidationError[], dataVar: SchemaErrorDataVar) => Error
  handler: KeylimeHandler<S>
}

/** Every prefixed path of a route: `/v2/agents`, `/v2.0/agents` … (and `/v3`, `/v3.0` when asked). */
export function versionedPaths(path: string, v2: boolean | readonly string[] = true, v3 = false): string[] {
  const v2list = v2 === true ? V2_PREFIXES : v2 === false ? [] : v2
  return [...v2list, ...(v3 ? V3_PREFIXES : [])].map((v) => `/v${v}${path === '/' ? '' : path}`)
}

/** Registers a route under each version prefix (other methods on the same path then answer 405). */
export function addVersionedRoute<S extends FastifySchema>(
  app: KeylimeServer,
  route: VersionedRoute<S>,
): void {
  for (const url of versionedPaths(route.path, route.v2 ?? true, route.v3 ?? false))
    addRoute(app, { ...route, url })
}

/** Registers one route at an exact URL (e.g. the unversioned `GET /version`). */
export function addRoute<S extends FastifySchema>(
  app: KeylimeServer,
  route: Omit<VersionedRoute<S>, 'path' | 'v2' | 'v3'> & { url: string },
): void {
  app.route({
    method: route.method,
    url: route.url,
    schema: route.schema,
    ...(route.admin ? { config: { admin: true } } : {}),
    ...(route.onRequest ? { onRequest: route.onRequest } : {}),
    ...(route.bodyLimit !== undefined ? { bodyLimit: route.bodyLimit } : {}),
    ...(route.schemaErrorFormatter ? { schemaErrorFormatter: route.schemaErrorFormatter } : {}),
    handler: route.handler as RouteHandlerMethod,
  })
}

// ---- TLS ----

export interface TlsServerMaterial {
  certPem: string | Buffer
  keyPem: string | Buffer
  /** CA certificates a client certificate must chain to (`trusted_client_ca`). Empty: no client auth possible. */
  trustedClientCaPems: (string | Buffer)[]
  keyPassphrase?: string | undefined
}

/** HTTPS options as upstream: TLS ≥ 1.2, client certificate requested but optional at the handshake. */
export function tlsServerOptions(m: TlsServerMaterial): HttpsServerOptions {
  return {
    cert: m.certPem,
    key: m.keyPem,
    ...(m.keyPassphrase ? { passphrase: m.keyPassphrase } : {}),
    ...(m.trustedClientCaPems.length > 0 ? { ca: m.trustedClientCaPems } : {}),
    minVersion: 'TLSv1.2',
    requestCert: true,
    rejectUnauthorized: false,
  }
}

/** Whether the request came with a client certificate chained to the listener's trusted CA. */
export function clientCertificateStatus(request: FastifyRequest): ClientCertStatus {
  return socketCertificateStatus(request.raw.socket)
}

/** The client certificate's subject (`CN=…, O=…`) for audit lines; null without one. */
export function callerSubject(request: FastifyRequest): string | null {
  const socket = request.raw.socket
  if (!(socket instanceof TLSSocket)) return null
  const subject = socket.getPeerCertificate()?.subject as Record<string, string | string[]> | undefined
  if (!subject || Object.keys(subject).length === 0) return null
  return Object.entries(subject)
    .map(([k, v]) => `${k}=${[v].flat().join('+')}`)
    .join(', ')
}

/**
 * ADMIN routes (§0.5): a client certificate chained to `trusted_client_ca`. No certificate -> 401; a
 * certificate from another CA -> 403. Plain HTTP never reaches admin handlers (400, empty, as upstream).
 */
export async function requireAdmin(request: FastifyRequest, reply: FastifyReply): Promise<void> {
  const status = clientCertificateStatus(request)
  if (status === 'trusted') return
  if (status === 'plain-http') {
    await reply.code(400).send()
    return
  }
  if (status === 'none') {
    await reply.code(401).send(authErrorBody(401, 'Client certificate required for this action'))
    return
  }
  await reply.code(403).send(authErrorBody(403, 'Client certificate is not trusted by this server'))
}

/**
 * Upstream's servers parse a request body as JSON whatever its Content-Type (upstream's tenant sends none); an empty
 * body is "no body", and malformed JSON is a 400.
 */
function acceptJsonBodiesOfAnyContentType(app: KeylimeServer): void {
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('*', { parseAs: 'string' }, (_req, body, done) => {
    const text = typeof body === 'string' ? body : body.toString('utf8')
    if (text.trim() === '') return done(null, undefined)
    try {
      done(null, JSON.parse(text))
    } catch {
      done(new RequestSchemaError('Malformed Request Parameter: body is not valid JSON'), undefined)
    }
  })
}
