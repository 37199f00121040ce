/**
 * The pull agent's HTTP surface (keylime-api.md §0.2, §1): routes under every served `/v2.x` prefix, query
 * validation with upstream's rules, the v2 envelope, and upstream's 400/405 answers for unknown versions, paths and
 * methods. Transport (HTTPS + mTLS) is chosen by `server.ts`; this file only needs the services below.
 */
import type { ServerOptions } from 'node:https'
import { Type } from '@sinclair/typebox'
import type { FastifyReply, FastifyRequest } from 'fastify'
import {
  AgentInfoResults,
  AgentVersionResults,
  IdentityQuoteQuery,
  IdentityQuoteResults,
  IntegrityQuoteQuery,
  IntegrityQuoteResults,
  PubkeyResults,
  RevocationBody,
  UkeyBody,
  VerifyQuery,
  VerifyResults,
  VkeyBody,
} from '../api/agent/schemas.ts'
import { errorEnvelope, ok } from '../api/envelope.ts'
import { Envelope, ErrorEnvelope } from '../api/schemas.ts'
import {
  addRoute,
  addVersionedRoute,
  createKeylimeServer,
  type KeylimeServer,
  type ProbeOptions,
  RequestSchemaError,
  validationMessage,
} from '../api/server.ts'
import type { Logger } from '../common/log.ts'
import type { AgentMetrics } from './metrics.ts'

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
  /** Body limit of `POST /keys/ukey`, which may carry the encrypted payload (default 4 MiB). */
  payloadLimit?: number
  /** Times quote requests. */
  metrics?: AgentMetrics
  /** `/healthz`, `/readyz` and `/metrics` on this listener (behind its mTLS when that is on). */
  probes?: ProbeOptions
}

const NOT_IMPLEMENTED = 'Not Implemented: Use /v2.1, /v2.2, ... or /version interfaces'
const NONCE_MESSAGE = 'Nonce must be alphanumeric and at most 64 characters'

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
  if (!/^[A-Za-z0-9]+$/.test(mask)) return null
  const hex = mask.replace(/^0x/i, '')
  if (hex.length === 0 || hex.length > 8 || !/^[0-9a-fA-F]+$/.test(hex)) return null
  const bits = Number.parseInt(hex, 16)
  if (bits > 0xffffff) return null
  const pcrs: number[] = []
  for (let i = 0; i < 24; i++) if (bits & (1 << i)) pcrs.push(i)
  return pcrs
}

function bad(reply: FastifyReply, status: string, code = 400): FastifyReply {
  return reply.code(code).send(errorEnvelope(code, status))
}

type SchemaErrors = Parameters<typeof validationMessage>[0]
type DataVar = Parameters<typeof validationMessage>[1]

/** Schema errors worded as the Rust agent words them, per field. */
function wording(byField: Record<string, string>) {
  return (errors: SchemaErrors, dataVar: DataVar) => {
    const e = errors[0]
    const field =
      e?.keyword === 'required' && typeof e.params.missingProperty === 'string'
        ? e.params.missingProperty
        : (e?.instancePath.split('/')[1] ?? '')
    const text = byField[field] ?? byField['*']
    return new RequestSchemaError(
      text
        ? `${text} (${validationMessage(errors, dataVar).replace(/^Malformed Request Parameter: /, '')})`
        : validationMessage(errors, dataVar),
    )
  }
}

const errors = { 400: ErrorEnvelope }

function timedQuotes(services: AgentServices, metrics: AgentMetrics): AgentServices {
  return {
    ...services,
    identityQuote: (nonce, apiVersion) =>
      metrics.timeQuote('identity', () => services.identityQuote(nonce, apiVersion)),
    integrityQuote: (params) => metrics.timeQuote('integrity', () => services.integrityQuote(params)),
  }
}

export function buildAgentApp(opts: BuildAgentAppOptions): KeylimeServer {
  const svc = opts.metrics ? timedQuotes(opts.services, opts.metrics) : opts.services
  const served = opts.apiVersions
  const latest = served[served.length - 1] as string
  const app = createKeylimeServer({
    // per-request logs would repeat every verifier poll; handler errors still go to the agent's logger
    ...(opts.logger ? { logger: opts.logger.child({}, { level: 'warn' }) } : {}),
    ...(opts.https ? { https: opts.https } : {}),
    notFound: (req: FastifyRequest, reply: FastifyReply) => {
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
    },
    openapi: { title: 'Keylime agent (pull)', version: latest, documentedPrefixes: [latest] },
    ...(opts.probes ? { probes: opts.probes } : {}),
  })

  addRoute(app, {
    method: 'GET',
    url: '/version',
    schema: { summary: 'API versions served', response: { 200: Envelope(AgentVersionResults) } },
    handler: async () => ok({ supported_version: latest, supported_versions: served }),
  })

  const versions = (min?: string) => (min ? served.filter((v) => versionAtLeast(v, min)) : served)
  const apiVersionOf = (url: string) => /^\/v(\d+(?:\.\d+)?)\//.exec(url)?.[1] ?? latest

  addVersionedRoute(app, {
    method: 'GET',
    path: '/agent/info',
    v2: versions('2.2'),
    schema: {
      summary: 'Agent identity and TPM algorithms',
      response: { 200: Envelope(AgentInfoResults), ...errors },
    },
    handler: async (req) => ok(svc.info(apiVersionOf(req.url))),
  })
  addVersionedRoute(app, {
    method: 'GET',
    path: '/keys/pubkey',
    v2: served,
    schema: { summary: 'Payload public key (PEM)', response: { 200: Envelope(PubkeyResults), ...errors } },
    handler: async () => ok({ pubkey: svc.pubkeyPem() }),
  })
  addVersionedRoute(app, {
    method: 'GET',
    path: '/quotes/identity',
    v2: served,
    schema: {
      summary: 'Identity quote (PCR 16 bound to the payload key)',
      querystring: IdentityQuoteQuery,
      response: { 200: Envelope(IdentityQuoteResults), ...errors },
    },
    schemaErrorFormatter: wording({ nonce: NONCE_MESSAGE }),
    handler: async (req) => ok(await svc.identityQuote(req.query.nonce, apiVersionOf(req.url))),
  })
  addVersionedRoute(app, {
    method: 'GET',
    path: '/quotes/integrity',
    v2: served,
    schema: {
      summary: 'Integrity quote with the IMA list from an entry and the boot log',
      querystring: IntegrityQuoteQuery,
      response: { 200: Envelope(IntegrityQuoteResults), ...errors },
    },
    schemaErrorFormatter: wording({
      nonce: NONCE_MESSAGE,
      mask: 'Mask must be a hexadecimal PCR mask naming PCRs 0-23 only',
      partial: "Partial must be '0' or '1'",
    }),
    handler: async (req, reply) => {
      const q = req.query
      const pcrs = parsePcrMask(q.mask)
      if (pcrs === null) return bad(reply, 'Mask must be a hexadecimal PCR mask naming PCRs 0-23 only')
      const rawEntry = q.ima_ml_entry ?? '0'
      // as upstream: an unparsable entry number means "from the start"
      const entry = /^\d+$/.test(rawEntry) ? Number.parseInt(rawEntry, 10) : 0
      return ok(
        await svc.integrityQuote({
          nonce: q.nonce,
          pcrs,
          partial: q.partial === '1',
          imaMlEntry: Number.isSafeInteger(entry) ? entry : 0,
          apiVersion: apiVersionOf(req.url),
        }),
      )
    },
  })
  addVersionedRoute(app, {
    method: 'POST',
    path: '/keys/ukey',
    v2: served,
    bodyLimit: opts.payloadLimit ?? 4 * 1024 * 1024,
    schema: {
      summary: 'Deliver the U key share (and the encrypted payload)',
      body: UkeyBody,
      response: { 200: Envelope(Type.Object({})), ...errors },
    },
    schemaErrorFormatter: wording({
      '*': 'Body must be JSON with string encrypted_key and auth_tag',
      payload: 'payload must be a string',
    }),
    handler: async (req) => {
      const b = req.body
      await svc.postUkey({
        encrypted_key: b.encrypted_key,
        auth_tag: b.auth_tag,
        ...(b.payload !== undefined ? { payload: b.payload } : {}),
      })
      return ok({})
    },
  })
  addVersionedRoute(app, {
    method: 'POST',
    path: '/keys/vkey',
    v2: served,
    schema: {
      summary: 'Deliver the V key share',
      body: VkeyBody,
      response: { 200: Envelope(Type.Object({})), ...errors },
    },
    schemaErrorFormatter: wording({ '*': 'Body must be JSON with string encrypted_key' }),
    handler: async (req) => {
      await svc.postVkey({ encrypted_key: req.body.encrypted_key })
      return ok({})
    },
  })
  addVersionedRoute(app, {
    method: 'GET',
    path: '/keys/verify',
    v2: served,
    schema: {
      summary: 'HMAC of a challenge with the bootstrap key K',
      querystring: VerifyQuery,
      response: { 200: Envelope(VerifyResults), ...errors },
    },
    schemaErrorFormatter: wording({ challenge: 'Challenge must be a non-empty alphanumeric string' }),
    handler: async (req, reply) => {
      const hmac = svc.verify(req.query.challenge)
      if (hmac === null) return bad(reply, 'Bootstrap key not yet available.')
      return ok({ hmac })
    },
  })
  addVersionedRoute(app, {
    method: 'POST',
    path: '/notifications/revocation',
    v2: served,
    schema: {
      summary: 'Signed revocation notification (verified asynchronously)',
      body: RevocationBody,
      response: { 200: Envelope(Type.Object({})), ...errors },
    },
    schemaErrorFormatter: wording({ '*': 'Body must be JSON with string msg and signature' }),
    handler: async (req) => {
      svc.postRevocation({ msg: req.body.msg, signature: req.body.signature })
      return ok({})
    },
  })
  return app
}
