/**
 * fastify plumbing shared by the registrar and the verifier (keylime-api.md §0): versioned route registration,
 * upstream's framework-level answers (empty 404/405 bodies, 400 for malformed JSON), the v2 envelope for every
 * handler error (5xx bodies stay generic), body limits, TLS server options and the `requireAdmin` hook.
 */
import type { ServerOptions as HttpsServerOptions } from 'node:https'
import { TLSSocket } from 'node:tls'
import Fastify, {
  type FastifyError,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
  type FastifySchema,
  type HTTPMethods,
  LogController,
  type RouteHandlerMethod,
} from 'fastify'
import { KeylimeError } from '../common/errors.ts'
import type { Logger } from '../common/log.ts'
import { errorEnvelope } from './envelope.ts'
import { V2_PREFIXES } from './versions.ts'

/** A request body or parameter that does not fit the route's schema: a 400 with the v2 envelope. */
export class RequestSchemaError extends KeylimeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_REQUEST_SCHEMA', message, { statusCode: 400, ...options })
  }
}

export const V3_PREFIXES = ['3', '3.0'] as const

export interface KeylimeServerOptions {
  logger?: Logger | false
  /** HTTPS listener options (see `tlsServerOptions`); null/undefined for plain HTTP. */
  https?: HttpsServerOptions | null
  /** Max request body in bytes (413 above it). */
  bodyLimit?: number
  /** Close keep-alive sockets on `close()` so tests and shutdown never hang. */
  forceCloseConnections?: boolean
}

interface RoutePattern {
  regex: RegExp
  methods: Set<string>
}

declare module 'fastify' {
  interface FastifyInstance {
    keylimeRoutes: RoutePattern[]
  }
}

/** Upstream sanitising of `X-Request-ID`: non-word characters stripped, at most 36 kept. */
export function sanitizeRequestId(raw: string | string[] | undefined): string | null {
  const v = Array.isArray(raw) ? raw[0] : raw
  if (v === undefined) return null
  const clean = v.replace(/\W/g, '').slice(0, 36)
  return clean === '' ? null : clean
}

function patternRegex(path: string): RegExp {
  const body = path
    .split('/')
    .map((seg) => (seg.startsWith(':') ? '[^/]+' : seg.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')))
    .join('/')
  return new RegExp(`^${body}/?$`)
}

/** Creates a fastify instance with Keylime's conventions (call before registering routes). */
export function createKeylimeServer(opts: KeylimeServerOptions = {}): FastifyInstance {
  const app = Fastify({
    ...(opts.logger ? { loggerInstance: opts.logger } : { logger: false }),
    ...(opts.https ? { https: opts.https } : {}),
    bodyLimit: opts.bodyLimit ?? 1048576,
    routerOptions: { ignoreTrailingSlash: true, maxParamLength: 200 },
    forceCloseConnections: opts.forceCloseConnections ?? true,
    return503OnClosing: true,
    // per-request access logs would dominate the hot path; handlers log what matters
    logController: new LogController({ disableRequestLogging: true }),
  }) as unknown as FastifyInstance
  app.decorate('keylimeRoutes', [] as RoutePattern[])

  acceptJsonBodiesOfAnyContentType(app)

  app.addHook('onRequest', async (request, reply) => {
    const id = sanitizeRequestId(request.headers['x-request-id'])
    if (id) reply.header('X-Request-ID', id)
  })

  app.setNotFoundHandler((request, reply) => {
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
  })

  app.setErrorHandler((error: FastifyError | KeylimeError | Error, request, reply) => {
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
  if (e.validation) return `Malformed Request Parameter: ${e.message}`
  if (e.code === 'FST_ERR_CTP_BODY_TOO_LARGE') return 'Request body too large'
  if (e instanceof SyntaxError) return 'Malformed Request Parameter'
  return e.message || (status === 404 ? 'Not Found' : 'Bad Request')
}

export interface VersionedRoute {
  method: HTTPMethods | HTTPMethods[]
  /** Path after the version prefix, e.g. `/agents/:agent_id`. */
  path: string
  /** Register under `/v2` and every `/v2.x` (default true). */
  v2?: boolean | readonly string[]
  /** Register under `/v3` and `/v3.0` (default false). */
  v3?: boolean
  schema?: FastifySchema
  preHandler?: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
  handler: RouteHandlerMethod
}

/** Every prefixed path of a route: `/v2/agents`, `/v2.0/agents` … (and `/v3`, `/v3.0` when asked). */
export function versionedPaths(path: string, v2: boolean | readonly string[] = true, v3 = false): string[] {
  const v2list = v2 === true ? V2_PREFIXES : v2 === false ? [] : v2
  return [...v2list, ...(v3 ? V3_PREFIXES : [])].map((v) => `/v${v}${path === '/' ? '' : path}`)
}

/** Registers a route under each version prefix (and records it so other methods on the path answer 405). */
export function addVersionedRoute(app: FastifyInstance, route: VersionedRoute): void {
  const methods = Array.isArray(route.method) ? route.method : [route.method]
  for (const url of versionedPaths(route.path, route.v2 ?? true, route.v3 ?? false)) {
    addRoute(app, { ...route, url, method: methods })
  }
}

/** Registers one unversioned route (e.g. `GET /version`) with the same 405 bookkeeping. */
export function addRoute(
  app: FastifyInstance,
  route: Omit<VersionedRoute, 'path' | 'v2' | 'v3'> & { url: string },
): void {
  const methods = Array.isArray(route.method) ? route.method : [route.method]
  app.route({
    method: methods,
    url: route.url,
    ...(route.schema ? { schema: route.schema } : {}),
    ...(route.preHandler ? { preHandler: route.preHandler } : {}),
    handler: route.handler,
  })
  const regex = patternRegex(route.url.replace(/\/+$/, '') || '/')
  const existing = app.keylimeRoutes.find((r) => r.regex.source === regex.source)
  if (existing) for (const m of methods) existing.methods.add(m)
  else app.keylimeRoutes.push({ regex, methods: new Set(methods) })
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

export type ClientCertStatus = 'plain-http' | 'none' | 'untrusted' | 'trusted'

/** Whether the request came with a client certificate chained to the listener's trusted CA. */
export function clientCertificateStatus(request: FastifyRequest): ClientCertStatus {
  const socket = request.raw.socket
  if (!(socket instanceof TLSSocket)) return 'plain-http'
  const peer = socket.getPeerCertificate()
  if (!peer || Object.keys(peer).length === 0) return 'none'
  return socket.authorized ? 'trusted' : 'untrusted'
}

export function isSecureRequest(request: FastifyRequest): boolean {
  return request.raw.socket instanceof TLSSocket
}

/** The JSON (non-envelope) auth error bodies of keylime-api.md §0.3. */
export function authErrorBody(status: 401 | 403, detail: string) {
  return {
    errors: [{ status: String(status), title: status === 401 ? 'Unauthorized' : 'Forbidden', detail }],
  }
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
export function acceptJsonBodiesOfAnyContentType(app: FastifyInstance): void {
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
