/**
 * The push routes of a `mode = push` verifier (keylime-api.md §4): `/v3[.0]/sessions`, the legacy
 * `/v3[.0]/agents/:id/session` routes and `/v3[.0]/agents/:id/attestations`. Sessions are PUBLIC; creating and
 * patching attestations needs the agent's own bearer token, checked before the body is read (an IMA list can be
 * large); reading attestations is ADMIN. Errors are JSON:API documents, never the v2 envelope.
 */
import type { FastifyError, FastifyReply, FastifyRequest, RouteHandlerMethod } from 'fastify'
import { AgentIdParams, AuthErrorBody } from '../../api/schemas.ts'
import {
  DATABASE_RETRY_AFTER_SECONDS,
  databaseUnavailableReason,
  type KeylimeServer,
  versionedPaths,
} from '../../api/server.ts'
import {
  AgentSessionParams,
  AttestationParams,
  JsonApiDocument,
  JsonApiErrors,
  JsonApiRequest,
  SessionIdParams,
} from '../../api/verifier/push-schemas.ts'
import type { Logger } from '../../common/log.ts'
import { JSON_API_TYPE, PushApiError } from './json-api.ts'
import type { PushVerifier } from './push-verifier.ts'
import { addressKey } from './rate-limits.ts'
import type { AuthMethod, ProvidedAuth } from './sessions.ts'

type Attrs = Record<string, unknown>
const attrsOf = (req: FastifyRequest): Attrs => (req.body as JsonApiRequest).data.attributes

function sendError(reply: FastifyReply, err: PushApiError): FastifyReply {
  if (err.retryAfterSeconds !== undefined) reply.header('Retry-After', String(err.retryAfterSeconds))
  return reply.code(err.status).type(JSON_API_TYPE).send({ errors: err.items })
}

/** Route-level error handler: JSON:API errors for ours, the schema's and the database's; 500 for the rest. */
function jsonApiErrors(log: Logger | undefined) {
  return (error: FastifyError | Error, _req: FastifyRequest, reply: FastifyReply) => {
    if (error instanceof PushApiError) return sendError(reply, error)
    const e = error as FastifyError
    if (e.validation) return sendError(reply, new PushApiError(400, e.message))
    if (e instanceof SyntaxError || e.code === 'ERR_REQUEST_SCHEMA')
      return sendError(reply, new PushApiError(400, e.message || 'Malformed request'))
    if (e.code === 'FST_ERR_CTP_BODY_TOO_LARGE')
      return sendError(reply, new PushApiError(413, 'Request body too large'))
    if (databaseUnavailableReason(error) !== null)
      return sendError(
        reply,
        new PushApiError(503, 'database unavailable', { retryAfterSeconds: DATABASE_RETRY_AFTER_SECONDS }),
      )
    log?.error({ err: error }, 'push request failed')
    return sendError(reply, new PushApiError(500, 'Internal Server Error'))
  }
}

export interface PushRouteOptions {
  push: PushVerifier
  log?: Logger
  /** Body limit of evidence submissions (quote and logs; a whole IMA list may be tens of MB). */
  evidenceBodyLimit: number
}

export function addPushRoutes(app: KeylimeServer, opts: PushRouteOptions): void {
  const { push } = opts
  const errorHandler = jsonApiErrors(opts.log)
  const route = (r: {
    method: 'GET' | 'POST' | 'PATCH'
    path: string
    schema: Record<string, unknown>
    handler: RouteHandlerMethod
    onRequest?: (req: FastifyRequest, reply: FastifyReply) => Promise<void>
    admin?: boolean
    bodyLimit?: number
  }) => {
    for (const url of versionedPaths(r.path, false, true))
      app.route({
        method: r.method,
        url,
        schema: r.schema,
        ...(r.admin ? { config: { admin: true } } : {}),
        ...(r.onRequest ? { onRequest: r.onRequest } : {}),
        ...(r.bodyLimit ? { bodyLimit: r.bodyLimit } : {}),
        errorHandler,
        handler: r.handler,
      })
  }
  const json = (reply: FastifyReply, code: number, body: unknown) =>
    reply.code(code).type(JSON_API_TYPE).send(body)

  // ------------------------------------------------------------------ sessions (PUBLIC)
  const limitAddress = async (req: FastifyRequest, reply: FastifyReply) => {
    const wait = push.limits.perIp.check(addressKey(req.ip), Date.now())
    if (wait !== null) push.metrics.session('rate_limited')
    if (wait !== null)
      await sendError(
        reply,
        new PushApiError(429, 'Rate limit exceeded. Please try again later.', { retryAfterSeconds: wait }),
      )
  }
  const createSession = async (agentId: unknown, supported: unknown) => {
    if (typeof agentId !== 'string' || agentId === '')
      throw new PushApiError(400, 'agent_id is required', { pointer: '/data/attributes/agent_id' })
    const wait = push.limits.perAgent.check(`agent:${agentId}`, Date.now())
    if (wait !== null) push.metrics.session('rate_limited')
    if (wait !== null)
      throw new PushApiError(429, 'Rate limit exceeded for this agent. Please try again later.', {
        retryAfterSeconds: wait,
      })
    return push.sessions.create(agentId, Array.isArray(supported) ? (supported as AuthMethod[]) : [])
  }
  const sessionSchema = (summary: string, params?: unknown) => ({
    summary,
    ...(params ? { params } : {}),
    body: JsonApiRequest,
    response: {
      200: JsonApiDocument,
      400: JsonApiErrors,
      401: JsonApiDocument,
      404: JsonApiErrors,
      429: JsonApiErrors,
    },
  })
  route({
    method: 'POST',
    path: '/sessions',
    schema: sessionSchema('Open a push session: a TPM proof-of-possession challenge'),
    onRequest: limitAddress,
    handler: async (req, reply) => {
      const a = attrsOf(req)
      return json(reply, 200, await createSession(a.agent_id, a.authentication_supported))
    },
  })
  route({
    method: 'POST',
    path: '/agents/:agent_id/session',
    schema: sessionSchema('Open a push session (legacy route)', AgentIdParams),
    onRequest: limitAddress,
    handler: async (req, reply) => {
      const a = attrsOf(req)
      const { agent_id } = req.params as AgentIdParams
      return json(reply, 200, await createSession(agent_id, a.authentication_supported))
    },
  })
  const answer = async (sessionId: string, agentId: unknown, provided: unknown, reply: FastifyReply) => {
    if (typeof agentId !== 'string' || agentId === '')
      throw new PushApiError(400, 'agent_id is required', { pointer: '/data/attributes/agent_id' })
    const r = await push.sessions.answer(
      sessionId,
      agentId,
      Array.isArray(provided) ? (provided as ProvidedAuth[]) : [],
    )
    return json(reply, r.status, r.body)
  }
  route({
    method: 'PATCH',
    path: '/sessions/:session_id',
    schema: sessionSchema('Answer the challenge (TPM2_Certify of the AK by itself)', SessionIdParams),
    handler: async (req, reply) => {
      const a = attrsOf(req)
      return answer((req.params as SessionIdParams).session_id, a.agent_id, a.authentication_provided, reply)
    },
  })
  route({
    method: 'PATCH',
    path: '/agents/:agent_id/session/:token',
    schema: sessionSchema(
      'Answer the challenge (legacy route; the last segment is the session id)',
      AgentSessionParams,
    ),
    handler: async (req, reply) => {
      const p = req.params as AgentSessionParams
      const a = attrsOf(req)
      return answer(p.token, a.agent_id ?? p.agent_id, a.authentication_provided, reply)
    },
  })
  route({
    method: 'GET',
    path: '/agents/:agent_id/session/:token',
    schema: {
      summary: 'An active session, by its token (legacy route)',
      params: AgentSessionParams,
      response: { 200: JsonApiDocument, 404: JsonApiErrors },
    },
    handler: async (req, reply) => {
      const p = req.params as AgentSessionParams
      const who = await push.sessions.authenticate(`Bearer ${p.token}`).catch(() => null)
      if (!who || who.agentId !== p.agent_id)
        throw new PushApiError(404, `Agent with ID '${p.agent_id}' not found`)
      return json(reply, 200, {
        data: {
          type: 'session',
          id: who.sessionId,
          attributes: { agent_id: who.agentId, active: true, token_expires_at: who.tokenExpiresAt },
        },
      })
    },
  })

  // ------------------------------------------------------------------ attestations
  /**
   * When the request's token expires (Keylime TS: sent as `meta.token_expires_at` with every 201 and 202, so an
   * agent whose token passing attestations extended keeps using it instead of authenticating again at the old expiry).
   */
  const tokenExpiry = new WeakMap<FastifyRequest, string>()
  const withTokenExpiry = (req: FastifyRequest, body: unknown) => {
    const until = tokenExpiry.get(req)
    const doc = body as { meta?: Record<string, unknown> }
    return until === undefined ? body : { ...doc, meta: { ...doc.meta, token_expires_at: until } }
  }
  /** AGENT_ONLY (§0.5): the bearer token of the agent in the path, checked before the body is read. */
  const agentOnly = async (req: FastifyRequest, reply: FastifyReply) => {
    try {
      const who = await push.sessions.authenticate(req.headers.authorization)
      const agentId = (req.params as { agent_id?: string }).agent_id
      if (who.agentId !== agentId) throw new PushApiError(403, 'the token belongs to another agent')
      tokenExpiry.set(req, who.tokenExpiresAt)
    } catch (err) {
      if (err instanceof PushApiError) {
        await sendError(reply, err)
        return
      }
      throw err
    }
  }
  const agentErrors = {
    400: JsonApiErrors,
    401: JsonApiErrors,
    403: JsonApiErrors,
    404: JsonApiErrors,
    409: JsonApiErrors,
    422: JsonApiErrors,
    429: JsonApiErrors,
    503: JsonApiErrors,
  }
  route({
    method: 'POST',
    path: '/agents/:agent_id/attestations',
    schema: {
      summary: 'Start an attestation: capabilities in, evidence requested out',
      params: AgentIdParams,
      body: JsonApiRequest,
      response: { 201: JsonApiDocument, ...agentErrors },
    },
    onRequest: agentOnly,
    handler: async (req, reply) => {
      const { agent_id } = req.params as AgentIdParams
      const r = await push.attestations.create(agent_id, attrsOf(req))
      return reply
        .header('Location', r.location)
        .code(201)
        .type(JSON_API_TYPE)
        .send(withTokenExpiry(req, r.body))
    },
  })
  route({
    method: 'PATCH',
    path: '/agents/:agent_id/attestations/:index',
    schema: {
      summary: 'Submit the requested evidence (`latest` or the index); verified after the 202',
      params: AttestationParams,
      body: JsonApiRequest,
      response: { 202: JsonApiDocument, ...agentErrors },
    },
    bodyLimit: opts.evidenceBodyLimit,
    onRequest: agentOnly,
    handler: async (req, reply) => {
      const p = req.params as AttestationParams
      const r = await push.attestations.submit(p.agent_id, p.index, attrsOf(req))
      return json(reply, 202, withTokenExpiry(req, r.body))
    },
  })
  const adminErrors = { 401: AuthErrorBody, 403: AuthErrorBody, 404: JsonApiErrors }
  route({
    method: 'GET',
    path: '/agents/:agent_id/attestations',
    admin: true,
    schema: {
      summary: "An agent's attestations",
      params: AgentIdParams,
      response: { 200: JsonApiDocument, ...adminErrors },
    },
    handler: async (req, reply) =>
      json(reply, 200, await push.attestations.list((req.params as AgentIdParams).agent_id)),
  })
  route({
    method: 'GET',
    path: '/agents/:agent_id/attestations/:index',
    admin: true,
    schema: {
      summary: 'One attestation (`latest` or the index), verdict and failure reason included',
      params: AttestationParams,
      response: { 200: JsonApiDocument, ...adminErrors },
    },
    handler: async (req, reply) => {
      const p = req.params as AttestationParams
      return json(reply, 200, await push.attestations.get(p.agent_id, p.index))
    },
  })
}
