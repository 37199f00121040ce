/**
 * The pull agent's HTTP surface (keylime-api.md §0.2, §1): routes under every served `/v2.x` prefix, query
 * validation with upstream's rules, the v2 envelope, and upstream's 400/405 answers for unknown versions, paths and
 * methods. Transport (HTTPS + mTLS) is chosen by `server.ts`; this file only needs the services below.
 */
import type { ServerOptions } from 'node:https'
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyServerOptions } from 'fastify'
import {
  type AgentInfoResults,
  type IdentityQuoteResults,
  type IntegrityQuoteResults,
  NONCE_MAX_LENGTH,
  type RevocationBody,
  type UkeyBody,
  type VkeyBody,
} from '../api/agent/schemas.ts'
import { errorEnvelope, ok } from '../api/envelope.ts'
import { KeylimeError } from '../common/errors.ts'
import type { Logger } from '../common/log.ts'

export interface IntegrityQuoteParams {
  nonce: string
  pcrs: number[]
  /** false: include the payload pubkey (partial=0). */
  partial: boolean
  imaMlEntry: number
  apiVersion: string
}

/** What the routes call; implemented by the agent runtime (`runtime.ts`) and by tests. */
export interface AgentServices {
  info(apiVersion: string): AgentInfoResults
  pubkeyPem(): string
  identityQuote(nonce: string, apiVersion: string): Promise<IdentityQuoteResults>
  integrityQuote(params: IntegrityQuoteParams): Promise<IntegrityQuoteResults>
  postUkey(body: UkeyBody): Promise<void>
  postVkey(body: VkeyBody): Promise<void>
  /** hex HMAC-SHA384(K, challenge), or null before K and its payload are ready; throws (422) if it was refused. */
  verify(challenge: string): string | null
  /** Queues a revocation notification; verification happens asynchronously. */
  postRevocation(body: RevocationBody): void
}

export interface BuildAgentAppOptions {
  services: AgentServices
  /** Versions served, e.g. ['2.1', …, '2.6']. */
  apiVersions: string[]
  logger?: Logger | false
  https?: ServerOptions | null
  bodyLimit?: number
}

const ALNUM = /^[A-Za-z0-9]+$/
const NOT_IMPLEMENTED = 'Not Implemented: Use /v2.1, /v2.2, ... or /version interfaces'

type RouteDef = { method: 'GET' | 'POST'; path: string; minVersion?: string }
const ROUTES: RouteDef[] = [
  { method: 'GET', path: '/agent/info', minVersion: '2.2' },
  { method: 'GET', path: '/keys/pubkey' },
  { method: 'POST', path: '/keys/ukey' },
  { method: 'POST', path: '/keys/vkey' },
  { method: 'GET', path: '/keys/verify' },
  { method: 'GET', path: '/quotes/identity' },
  { method: 'GET', path: '/quotes/integrity' },
  { method: 'POST', path: '/notifications/revocation' },
]

function versionAtLeast(v: string, min: string): boolean {
  const [a1, a2] = v.split('.').map(Number) as [number, number]
  const [b1, b2] = min.split('.').map(Number) as [number, number]
  return a1 > b1 || (a1 === b1 && a2 >= b2)
}

/** Parses upstream's `mask` (hex, `0x` optional) into PCR indexes; null when invalid or naming PCR > 23. */
export function parsePcrMask(mask: string): number[] | null {
  if (!ALNUM.test(mask)) return null
  const hex = mask.replace(/^0x/i, '')
  if (hex.length === 0 || hex.length > 8 || !/^[0-9a-fA-F]+$/.test(hex)) return null
  const bits = Number.parseInt(hex, 16)
  if (bits > 0xffffff) return null
  const pcrs: number[] = []
  for (let i = 0; i < 24; i++) if (bits & (1 << i)) pcrs.push(i)
  return pcrs
}

function isNonce(v: unknown): v is string {
  return typeof v === 'string' && v.length > 0 && v.length <= NONCE_MAX_LENGTH && ALNUM.test(v)
}

function bad(reply: FastifyReply, status: string, code = 400): FastifyReply {
  return reply.code(code).send(errorEnvelope(code, status))
}

export function buildAgentApp(opts: BuildAgentAppOptions): FastifyInstance {
  const app = Fastify({
    // per-request logs would repeat every verifier poll; handler errors still go to the agent's logger
    ...(opts.logger ? { loggerInstance: opts.logger.child({}, { level: 'warn' }) } : { logger: false }),
    bodyLimit: opts.bodyLimit ?? 4 * 1024 * 1024,
    routerOptions: { ignoreTrailingSlash: true },
    ...(opts.https ? { https: opts.https } : {}),
  } as FastifyServerOptions) as unknown as FastifyInstance
  const svc = opts.services
  const served = opts.apiVersions

  app.setErrorHandler((err, req, reply) => {
    const e = err as { statusCode?: number; code?: string; message: string }
    if (err instanceof KeylimeError && err.statusCode && err.statusCode < 500) {
      return bad(reply, err.message, err.statusCode)
    }
    if (e.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') return bad(reply, 'Unsupported Content-Type', 415)
    if (e.code === 'FST_ERR_CTP_BODY_TOO_LARGE') return bad(reply, 'Request body too large', 413)
    if (typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
      return bad(reply, `Bad Request: ${e.message}`, e.statusCode)
    }
    req.log.error({ err }, 'request failed')
    return bad(reply, 'Internal Server Error', 500)
  })

  app.get('/version', async () =>
    ok({ supported_version: served[served.length - 1] as string, supported_versions: served }),
  )

  for (const version of served) {
    const prefix = `/v${version}`
    const has = (r: RouteDef) => !r.minVersion || versionAtLeast(version, r.minVersion)
    const route = (r: RouteDef) => ROUTES.find((x) => x.path === r.path && has(x))

    if (route({ method: 'GET', path: '/agent/info' })) {
      app.get(`${prefix}/agent/info`, async () => ok(svc.info(version)))
    }
    app.get(`${prefix}/keys/pubkey`, async () => ok({ pubkey: svc.pubkeyPem() }))

    app.get(`${prefix}/quotes/identity`, async (req, reply) => {
      const q = req.query as Record<string, unknown>
      if (!isNonce(q.nonce)) return bad(reply, 'Nonce must be alphanumeric and at most 64 characters')
      return ok(await svc.identityQuote(q.nonce, version))
    })

    app.get(`${prefix}/quotes/integrity`, async (req, reply) => {
      const q = req.query as Record<string, unknown>
      if (!isNonce(q.nonce)) return bad(reply, 'Nonce must be alphanumeric and at most 64 characters')
      const pcrs = typeof q.mask === 'string' ? parsePcrMask(q.mask) : null
      if (pcrs === null) return bad(reply, 'Mask must be a hexadecimal PCR mask naming PCRs 0-23 only')
      if (q.partial !== '0' && q.partial !== '1') return bad(reply, "Partial must be '0' or '1'")
      const rawEntry = typeof q.ima_ml_entry === 'string' ? q.ima_ml_entry : '0'
      const entry = /^\d+$/.test(rawEntry) ? Number.parseInt(rawEntry, 10) : 0
      return ok(
        await svc.integrityQuote({
          nonce: q.nonce,
          pcrs,
          partial: q.partial === '1',
          imaMlEntry: Number.isSafeInteger(entry) ? entry : 0,
          apiVersion: version,
        }),
      )
    })

    app.post(`${prefix}/keys/ukey`, async (req, reply) => {
      const b = req.body as Record<string, unknown> | null
      if (
        !b ||
        typeof b !== 'object' ||
        typeof b.encrypted_key !== 'string' ||
        typeof b.auth_tag !== 'string'
      ) {
        return bad(reply, 'Body must be JSON with string encrypted_key and auth_tag')
      }
      if (b.payload !== undefined && typeof b.payload !== 'string')
        return bad(reply, 'payload must be a string')
      await svc.postUkey({
        encrypted_key: b.encrypted_key,
        auth_tag: b.auth_tag,
        ...(typeof b.payload === 'string' ? { payload: b.payload } : {}),
      })
      return ok({})
    })

    app.post(`${prefix}/keys/vkey`, async (req, reply) => {
      const b = req.body as Record<string, unknown> | null
      if (!b || typeof b !== 'object' || typeof b.encrypted_key !== 'string') {
        return bad(reply, 'Body must be JSON with string encrypted_key')
      }
      await svc.postVkey({ encrypted_key: b.encrypted_key })
      return ok({})
    })

    app.get(`${prefix}/keys/verify`, async (req, reply) => {
      const q = req.query as Record<string, unknown>
      if (typeof q.challenge !== 'string' || !ALNUM.test(q.challenge) || q.challenge.length > 1024) {
        return bad(reply, 'Challenge must be a non-empty alphanumeric string')
      }
      const hmac = svc.verify(q.challenge)
      if (hmac === null) return bad(reply, 'Bootstrap key not yet available.')
      return ok({ hmac })
    })

    app.post(`${prefix}/notifications/revocation`, async (req, reply) => {
      const b = req.body as Record<string, unknown> | null
      if (!b || typeof b !== 'object' || typeof b.msg !== 'string' || typeof b.signature !== 'string') {
        return bad(reply, 'Body must be JSON with string msg and signature')
      }
      svc.postRevocation({ msg: b.msg, signature: b.signature })
      return ok({})
    })
  }

  app.setNotFoundHandler((req, reply) => {
    const path = req.url.split('?')[0] ?? ''
    if (req.method !== 'GET' && req.method !== 'POST') {
      reply.header('Allow', 'GET, POST')
      return bad(reply, `Method ${req.method} not allowed`, 405)
    }
    const m = /^\/v(\d+(?:\.\d+)?)(\/.*)?$/.exec(path)
    if (m) {
      const version = m[1] as string
      const rest = (m[2] ?? '').replace(/\/+$/, '')
      if (!served.includes(version)) return bad(reply, `API version not supported: v${version}`)
      const known = ROUTES.find((r) => r.path === rest)
      if (known && known.method !== req.method) {
        reply.header('Allow', known.method)
        return bad(reply, `Method ${req.method} not allowed on ${rest}, use ${known.method}`, 405)
      }
    }
    return bad(reply, NOT_IMPLEMENTED)
  })

  return app
}
