/**
 * The pull agent's HTTP surface (keylime-api.md §0.2, §1): routes under every served `/v2.x` prefix, query and body
 * checks with upstream's rules and texts, the v2 envelope, and upstream's 400/405 answers for unknown versions, paths
 * and methods. Served by the agent's own lean HTTP layer (`http-server.ts`), not fastify; the typebox schemas only
 * document the routes (OpenAPI, `route-docs.ts`, loaded on demand), the checks below are written out with the same
 * patterns. Transport (HTTPS + mTLS) is chosen by the runtime.
 */
import type { ServerOptions } from 'node:https'
import type { Logger } from 'pino'
import { CHALLENGE_PATTERN, MASK_PATTERN, NONCE_PATTERN } from '../api/agent/query-rules.ts'
import type {
  AgentInfoResults,
  IdentityQuoteResults,
  IntegrityQuoteResults,
  RevocationBody,
  UkeyBody,
  VkeyBody,
} from '../api/agent/schemas.ts'
import { ok } from '../api/envelope.ts'
import type { ProbeOptions } from '../api/http-common.ts'
import { AgentHttpServer, type Answer, envelope, type Route } from './http-server.ts'
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

const bad = (status: string, code = 400, headers?: Record<string, string>): Answer =>
  envelope(code, status, headers)

/** A string field of a query or body; `oneOf` lists the only values allowed. */
interface StringField {
  name: string
  optional?: boolean
  pattern?: RegExp
  oneOf?: readonly string[]
}

/**
 * The first problem of a query or body made of string fields, worded as schema validation words it
 * (`querystring.nonce is required`, `body must be object`): whole-value check, then every required field in order,
 * then each field's type and form. Extra fields are allowed. Null when all fields fit.
 */
function firstProblem(
  where: 'querystring' | 'body',
  value: unknown,
  fields: readonly StringField[],
): { field: string; detail: string } | null {
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    return { field: '', detail: `${where} must be object` }
  const record = value as Record<string, unknown>
  for (const f of fields)
    if (!f.optional && record[f.name] === undefined)
      return { field: f.name, detail: `${where}.${f.name} is required` }
  for (const f of fields) {
    const v = record[f.name]
    if (v === undefined) continue
    const at = `${where}.${f.name}`
    if (typeof v !== 'string') return { field: f.name, detail: `${at} must be string` }
    if (f.pattern && !f.pattern.test(v))
      return { field: f.name, detail: `${at} must match pattern "${f.pattern.source}"` }
    if (f.oneOf && !f.oneOf.includes(v)) return { field: f.name, detail: `${at} must be equal to constant` }
  }
  return null
}

/** The query's fields as schema validation sees them: a repeated parameter is a list (not a string). */
function queryRecord(query: URLSearchParams, fields: readonly StringField[]): Record<string, unknown> {
  const record: Record<string, unknown> = {}
  for (const f of fields) {
    const all = query.getAll(f.name)
    if (all.length > 0) record[f.name] = all.length === 1 ? all[0] : all
  }
  return record
}

/**
 * Checks a query or body; on a problem, the 400 worded as the Rust agent words it per field (`*`: any field), with
 * the schema detail in parentheses.
 */
function check(
  where: 'querystring' | 'body',
  value: unknown,
  fields: readonly StringField[],
  wording: Record<string, string>,
): Answer | null {
  const problem = firstProblem(where, value, fields)
  if (!problem) return null
  const text = wording[problem.field] ?? wording['*']
  return bad(text ? `${text} (${problem.detail})` : `Malformed Request Parameter: ${problem.detail}`)
}

const IDENTITY_QUERY: StringField[] = [{ name: 'nonce', pattern: new RegExp(NONCE_PATTERN) }]
const INTEGRITY_QUERY: StringField[] = [
  { name: 'nonce', pattern: new RegExp(NONCE_PATTERN) },
  { name: 'mask', pattern: new RegExp(MASK_PATTERN) },
  { name: 'partial', oneOf: ['0', '1'] },
  { name: 'ima_ml_entry', optional: true },
]
const VERIFY_QUERY: StringField[] = [{ name: 'challenge', pattern: new RegExp(CHALLENGE_PATTERN) }]
const UKEY_BODY: StringField[] = [
  { name: 'encrypted_key' },
  { name: 'auth_tag' },
  { name: 'payload', optional: true },
]
const VKEY_BODY: StringField[] = [{ name: 'encrypted_key' }]
const REVOCATION_BODY: StringField[] = [{ name: 'msg' }, { name: 'signature' }]
const MASK_MESSAGE = 'Mask must be a hexadecimal PCR mask naming PCRs 0-23 only'

function timedQuotes(services: AgentServices, metrics: AgentMetrics): AgentServices {
  return {
    ...services,
    identityQuote: (nonce, apiVersion) =>
      metrics.timeQuote('identity', () => services.identityQuote(nonce, apiVersion)),
    integrityQuote: (params) => metrics.timeQuote('integrity', () => services.integrityQuote(params)),
  }
}

export function buildAgentApp(opts: BuildAgentAppOptions): AgentHttpServer {
  const svc = opts.metrics ? timedQuotes(opts.services, opts.metrics) : opts.services
  const served = opts.apiVersions
  const latest = served[served.length - 1] as string
  const versions = (min?: string) => (min ? served.filter((v) => versionAtLeast(v, min)) : served)
  const routes: Route[] = [
    {
      method: 'GET',
      url: '/version',
      doc: 'GET /version',
      handler: () => answer(ok({ supported_version: latest, supported_versions: served })),
    },
  ]
  /** Registers a route under each served prefix; the handler gets the prefix's version. */
  const versioned = (
    route: Omit<Route, 'url' | 'doc' | 'handler'> & {
      path: string
      minVersion?: string
      handler: (req: Parameters<Route['handler']>[0], apiVersion: string) => Answer | Promise<Answer>
    },
  ) => {
    const { path, minVersion, handler, ...rest } = route
    for (const v of versions(minVersion))
      routes.push({
        ...rest,
        url: `/v${v}${path}`,
        doc: `${rest.method} ${path}`,
        handler: (req) => handler(req, v),
      })
  }

  versioned({
    method: 'GET',
    path: '/agent/info',
    minVersion: '2.2',
    handler: (_req, v) => answer(ok(svc.info(v))),
  })
  versioned({
    method: 'GET',
    path: '/keys/pubkey',
    handler: () => answer(ok({ pubkey: svc.pubkeyPem() })),
  })
  versioned({
    method: 'GET',
    path: '/quotes/identity',
    handler: async (req, v) => {
      const q = queryRecord(req.query, IDENTITY_QUERY)
      const refused = check('querystring', q, IDENTITY_QUERY, { nonce: NONCE_MESSAGE })
      if (refused) return refused
      return answer(ok(await svc.identityQuote(q.nonce as string, v)))
    },
  })
  versioned({
    method: 'GET',
    path: '/quotes/integrity',
    handler: async (req, v) => {
      const q = queryRecord(req.query, INTEGRITY_QUERY)
      const refused = check('querystring', q, INTEGRITY_QUERY, {
        nonce: NONCE_MESSAGE,
        mask: MASK_MESSAGE,
        partial: "Partial must be '0' or '1'",
      })
      if (refused) return refused
      const pcrs = parsePcrMask(q.mask as string)
      if (pcrs === null) return bad(MASK_MESSAGE)
      const rawEntry = (q.ima_ml_entry as string | undefined) ?? '0'
      // as upstream: an unparsable entry number means "from the start"
      const entry = /^\d+$/.test(rawEntry) ? Number.parseInt(rawEntry, 10) : 0
      return answer(
        ok(
          await svc.integrityQuote({
            nonce: q.nonce as string,
            pcrs,
            partial: q.partial === '1',
            imaMlEntry: Number.isSafeInteger(entry) ? entry : 0,
            apiVersion: v,
          }),
        ),
      )
    },
  })
  versioned({
    method: 'POST',
    path: '/keys/ukey',
    bodyLimit: opts.payloadLimit ?? 4 * 1024 * 1024,
    handler: async (req) => {
      const refused = check('body', req.body, UKEY_BODY, {
        '*': 'Body must be JSON with string encrypted_key and auth_tag',
        payload: 'payload must be a string',
      })
      if (refused) return refused
      const b = req.body as UkeyBody
      await svc.postUkey({
        encrypted_key: b.encrypted_key,
        auth_tag: b.auth_tag,
        ...(b.payload !== undefined ? { payload: b.payload } : {}),
      })
      return answer(ok({}))
    },
  })
  versioned({
    method: 'POST',
    path: '/keys/vkey',
    handler: async (req) => {
      const refused = check('body', req.body, VKEY_BODY, {
        '*': 'Body must be JSON with string encrypted_key',
      })
      if (refused) return refused
      await svc.postVkey({ encrypted_key: (req.body as VkeyBody).encrypted_key })
      return answer(ok({}))
    },
  })
  versioned({
    method: 'GET',
    path: '/keys/verify',
    handler: (req) => {
      const q = queryRecord(req.query, VERIFY_QUERY)
      const refused = check('querystring', q, VERIFY_QUERY, {
        challenge: 'Challenge must be a non-empty alphanumeric string',
      })
      if (refused) return refused
      const hmac = svc.verify(q.challenge as string)
      if (hmac === null) return bad('Bootstrap key not yet available.')
      return answer(ok({ hmac }))
    },
  })
  versioned({
    method: 'POST',
    path: '/notifications/revocation',
    handler: (req) => {
      const refused = check('body', req.body, REVOCATION_BODY, {
        '*': 'Body must be JSON with string msg and signature',
      })
      if (refused) return refused
      const b = req.body as RevocationBody
      svc.postRevocation({ msg: b.msg, signature: b.signature })
      return answer(ok({}))
    },
  })

  return new AgentHttpServer({
    routes,
    notFound: (method, path) => {
      if (method !== 'GET' && method !== 'POST')
        return bad(`Method ${method} not allowed`, 405, { Allow: 'GET, POST' })
      const m = /^\/v(\d+(?:\.\d+)?)(\/.*)?$/.exec(path)
      if (m) {
        const version = m[1] as string
        const rest = (m[2] ?? '').replace(/\/+$/, '')
        if (!served.includes(version)) return bad(`API version not supported: v${version}`)
        const known = ROUTES.find((r) => r.path === rest)
        if (known && known.method !== method)
          return bad(`Method ${method} not allowed on ${rest}, use ${known.method}`, 405, {
            Allow: known.method,
          })
      }
      return bad(NOT_IMPLEMENTED)
    },
    https: opts.https ?? null,
    logger: opts.logger ?? false,
    ...(opts.probes ? { probes: opts.probes } : {}),
    docs: async () => {
      const { AGENT_ROUTE_SCHEMAS, openapiDocument } = await import('./route-docs.ts')
      return { schemas: AGENT_ROUTE_SCHEMAS, openapi: (table) => openapiDocument(table, latest) }
    },
  })
}

const answer = (body: unknown): Answer => ({ status: 200, body })
