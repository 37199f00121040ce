/**
 * The verifier's REST API v2 (keylime-api.md §0, §3) on the shared server factory. Routes are registered under every
 * `/v2.x` prefix, each with its typebox schema. Authorization is the spec's split (§0.5): PUBLIC routes answer
 * anyone; every other route needs an admin, i.e. a TLS client certificate that chained to the trusted client CA
 * during the handshake, checked before the request body is read.
 */
import type { TLSSocket } from 'node:tls'
import { Type } from '@sinclair/typebox'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { envelope, errorEnvelope } from '../api/envelope.ts'
import { SourceRateLimiter } from '../api/rate-limit.ts'
import {
  AgentIdParams,
  AuthErrorBody,
  Envelope,
  ErrorEnvelope,
  NoBody,
  PolicyNameParams,
} from '../api/schemas.ts'
import {
  addRoute,
  addVersionedRoute,
  callerSubject,
  createKeylimeServer,
  type KeylimeServer,
  type ProbeOptions,
  rateLimitHook,
  validationMessage,
} from '../api/server.ts'
import {
  AgentList,
  AgentListQuery,
  AgentStatus,
  BulkAgents,
  EnrollBody,
  MbPolicyBody,
  MbPolicyNames,
  MbPolicyShow,
  RuntimePolicyBody,
  RuntimePolicyNames,
  RuntimePolicyShow,
  VerifyEvidenceBody,
  VerifyEvidenceResults,
  VerifyIdentityQuery,
  VerifyIdentityResults,
  VersionResults,
} from '../api/verifier/schemas.ts'
import { CURRENT_API_VERSION, KNOWN_API_VERSIONS } from '../api/versions.ts'
import { KeylimeError } from '../common/errors.ts'
import type { Logger } from '../common/log.ts'
import { akKeyObject, isQuoteHashAlg, verifyQuote } from '../evidence/quote/index.ts'
import {
  type ActionAudit,
  agentStatus,
  deleteAgent,
  deleteMbPolicy,
  deleteRuntimePolicy,
  enrolAgent,
  reactivateAgent,
  requireAgent,
  requireMbPolicy,
  requireRuntimePolicy,
  saveMbPolicy,
  saveRuntimePolicy,
  stopAgent,
} from './management.ts'
import { addPushRoutes } from './push/routes.ts'
import { refusalOfApi, registerV3ManagementRoutes } from './v3-management.ts'
import type { VerifierService } from './verifier-service.ts'

export type Identity = 'admin' | 'anonymous'

export interface VerifierAppOptions {
  service: VerifierService
  log?: Logger
  /** fastify https options (key, cert, ca, requestCert) when serving TLS. */
  https?: Record<string, unknown>
  /** Who is calling; default: a TLS client certificate the handshake authorized = admin. */
  identify?: (req: FastifyRequest) => Identity
  /** `/healthz`, `/readyz` and (admin) `/metrics` on this listener. */
  probes?: ProbeOptions
}

class ApiError extends KeylimeError {
  constructor(statusCode: number, message: string) {
    super('ERR_VERIFIER_API', message, { statusCode })
  }
}

export function tlsIdentity(req: FastifyRequest): Identity {
  const socket = req.raw.socket as Partial<TLSSocket>
  return socket.encrypted === true && socket.authorized === true ? 'admin' : 'anonymous'
}

function forbidden(reply: FastifyReply): FastifyReply {
  return reply.code(403).send({
    errors: [{ status: '403', title: 'Forbidden', detail: 'Action requires an admin client certificate' }],
  })
}

type SchemaErrors = Parameters<typeof validationMessage>[0]
type DataVar = Parameters<typeof validationMessage>[1]

const AGENT_ID_MESSAGE = 'agent_id not not valid'

/** Schema errors of a route as upstream words them, e.g. `Exception error: 'ak_tpm'` for a missing key. */
function upstreamWording(bodyMessage: (errors: SchemaErrors) => string) {
  return (errors: SchemaErrors, dataVar: DataVar) =>
    new ApiError(
      400,
      dataVar === 'body' ? bodyMessage(errors) : validationMessage(errors, dataVar, AGENT_ID_MESSAGE),
    )
}
const fieldOf = (errors: SchemaErrors) =>
  validationMessage(errors, 'body').replace(/^Malformed Request Parameter: /, '')
const missingKey = (errors: SchemaErrors): string | null => {
  const e = errors[0]
  return e?.keyword === 'required' && e.instancePath === '' && typeof e.params.missingProperty === 'string'
    ? e.params.missingProperty
    : null
}

export async function buildVerifierApp(opts: VerifierAppOptions): Promise<KeylimeServer> {
  const { service } = opts
  const repo = service.repo
  const o = service.options
  const identify = opts.identify ?? tlsIdentity
  const requireAdmin = async (req: FastifyRequest, reply: FastifyReply) => {
    if (identify(req) !== 'admin') forbidden(reply)
  }
  const app = createKeylimeServer({
    ...(opts.log ? { logger: opts.log } : {}),
    ...(opts.https ? { https: opts.https } : {}),
    bodyLimit: o.maxBodySize,
    agentIdMessage: AGENT_ID_MESSAGE,
    adminCheck: requireAdmin,
    openapi: { title: 'Keylime verifier', version: CURRENT_API_VERSION, documentedPrefixes: ['2.6', '3.0'] },
    ...(opts.probes ? { probes: opts.probes } : {}),
  })

  // The public evidence route runs real verification for anyone: a per-source rate limit, decided before the body
  // is read, keeps one caller from taking the verifier's time from attestations.
  const evidenceLimiter =
    o.evidenceRateLimit.limit > 0
      ? new SourceRateLimiter({ limit: o.evidenceRateLimit.limit, windowMs: o.evidenceRateLimit.windowMs })
      : null
  if (evidenceLimiter)
    app.addHook(
      'onRequest',
      rateLimitHook(
        (ip) => evidenceLimiter.admit(ip, Date.now()),
        (req) => req.method === 'POST' && req.routeOptions.url?.endsWith('/verify/evidence') === true,
        'evidence',
        refusalOfApi,
      ),
    )

  /** One info line per admin action: who (certificate subject), what, on which agent or policy. */
  const audit = (req: FastifyRequest, action: string, fields: Record<string, unknown>) =>
    opts.log?.info({ audit: action, by: callerSubject(req), ...fields }, 'admin action')
  const auditOf =
    (req: FastifyRequest): ActionAudit =>
    (action, fields) =>
      audit(req, action, fields)
  const ok = (reply: FastifyReply, results: unknown, code = 200) =>
    reply.code(code).send(envelope(code, 'Success', results))

  const push = service.push
  const versionRoute = (url: string) =>
    addRoute(app, {
      method: 'GET',
      url,
      schema: {
        summary: 'API versions (410 Gone in push mode)',
        response: { 200: Envelope(VersionResults) },
      },
      handler: async (_req, reply) =>
        push
          ? (reply as FastifyReply).code(410).send()
          : envelope(200, 'Success', {
              current_version: CURRENT_API_VERSION,
              supported_versions: [...KNOWN_API_VERSIONS],
            }),
    })
  versionRoute('/version')
  versionRoute('/versions')
  if (push) {
    // upstream's push verifier: `/` redirects to the v3 root, which answers as a probe
    addRoute(app, {
      method: 'GET',
      url: '/',
      schema: { summary: 'Redirect to /v3.0/' },
      handler: async (_req, reply) => reply.redirect('/v3.0/', 307),
    })
    addVersionedRoute(app, {
      method: 'GET',
      path: '/',
      v2: false,
      v3: true,
      schema: { summary: 'API 3.0 root' },
      handler: async (_req, reply) => reply.code(200).send({ data: null, meta: { api_version: '3.0' } }),
    })
    addPushRoutes(app, {
      push,
      ...(opts.log ? { log: opts.log } : {}),
      evidenceBodyLimit: Math.max(o.maxEvidenceSize, o.maxAgentResponseBytes),
    })
  }

  const adminErrors = { 400: ErrorEnvelope, 403: AuthErrorBody, 404: ErrorEnvelope, 409: ErrorEnvelope }
  const Empty = Envelope(Type.Object({}))

  addVersionedRoute(app, {
    method: 'GET',
    path: '/',
    schema: { summary: 'Version root (not implemented, as upstream)', response: { 405: ErrorEnvelope } },
    handler: async (_req, reply) =>
      reply.code(405).send(errorEnvelope(405, 'Not Implemented: Use /agents/ interface instead')),
  })

  // ------------------------------------------------------------------------------ agents
  addVersionedRoute(app, {
    method: 'POST',
    path: '/agents/:agent_id',
    admin: true,
    bodyLimit: o.maxUploadSize,
    schema: {
      summary: 'Enrol an agent with its policies',
      params: AgentIdParams,
      body: EnrollBody,
      response: { 200: Empty, ...adminErrors },
    },
    schemaErrorFormatter: upstreamWording((errors) => {
      const key = missingKey(errors)
      return key !== null ? `Exception error: '${key}'` : `Exception error: ${fieldOf(errors)}`
    }),
    handler: async (req, reply) => {
      await enrolAgent(service, req.params.agent_id, req.body, auditOf(req))
      return ok(reply, {})
    },
  })

  addVersionedRoute(app, {
    method: 'GET',
    path: '/agents/:agent_id',
    admin: true,
    schema: {
      summary: 'Status of an agent',
      params: AgentIdParams,
      response: { 200: Envelope(AgentStatus), ...adminErrors },
    },
    handler: async (req, reply) =>
      ok(reply, await agentStatus(service, await requireAgent(service, req.params.agent_id))),
  })

  addVersionedRoute(app, {
    method: 'GET',
    path: '/agents',
    admin: true,
    schema: {
      summary: 'List agents (ids, or status objects with `bulk`)',
      querystring: AgentListQuery,
      response: { 200: Envelope(Type.Union([AgentList, BulkAgents])), ...adminErrors },
    },
    handler: async (req, reply) => {
      // upstream's tenant always sends `verifier=`; empty means no filter, as upstream
      const verifier = req.query.verifier || undefined
      if (req.query.bulk !== undefined) {
        const rows = await repo.listAgents(verifier)
        const out: Record<string, unknown> = {}
        for (const r of rows) out[r.agent_id] = await agentStatus(service, r)
        return ok(reply, out)
      }
      const ids = await repo.listAgentIds(verifier)
      return ok(reply, { uuids: ids.map((i) => [i]) })
    },
  })

  addVersionedRoute(app, {
    method: 'DELETE',
    path: '/agents/:agent_id',
    admin: true,
    schema: {
      summary: 'Delete an agent (202 while another verifier finishes it)',
      params: AgentIdParams,
      response: { 200: Empty, 202: Empty, ...adminErrors },
    },
    handler: async (req, reply) =>
      ok(reply, {}, await deleteAgent(service, req.params.agent_id, auditOf(req))),
  })

  addVersionedRoute(app, {
    method: 'PUT',
    path: '/agents/:agent_id/reactivate',
    admin: true,
    schema: {
      summary: 'Restart attestation of an agent from START',
      params: AgentIdParams,
      body: NoBody,
      response: { 200: Empty, ...adminErrors },
    },
    handler: async (req, reply) => {
      // upstream answers 400 here (its `.one()` raises), not 404
      await reactivateAgent(service, req.params.agent_id, 400, auditOf(req))
      return ok(reply, {})
    },
  })

  addVersionedRoute(app, {
    method: 'PUT',
    path: '/agents/:agent_id/stop',
    admin: true,
    schema: {
      summary: 'Stop attesting an agent (state TENANT_FAILED)',
      params: AgentIdParams,
      body: NoBody,
      response: { 200: Empty, ...adminErrors },
    },
    handler: async (req, reply) => {
      await stopAgent(service, req.params.agent_id, auditOf(req))
      return ok(reply, {})
    },
  })

  // ------------------------------------------------------------------------------ runtime policies
  addVersionedRoute(app, {
    method: 'GET',
    path: '/allowlists',
    admin: true,
    schema: {
      summary: 'Runtime policy names',
      response: { 200: Envelope(RuntimePolicyNames), ...adminErrors },
    },
    handler: async (_req, reply) => ok(reply, { 'runtimepolicy names': await repo.listAllowlistNames() }),
  })
  addVersionedRoute(app, {
    method: 'GET',
    path: '/allowlists/:name',
    admin: true,
    schema: {
      summary: 'A runtime policy',
      params: PolicyNameParams,
      response: { 200: Envelope(RuntimePolicyShow), ...adminErrors },
    },
    handler: async (req, reply) => {
      const p = await requireRuntimePolicy(service, req.params.name)
      return ok(reply, { name: p.name, tmp_policy: null, runtime_policy: p.ima_policy })
    },
  })
  for (const method of ['POST', 'PUT'] as const) {
    addVersionedRoute(app, {
      method,
      path: '/allowlists/:name',
      admin: true,
      bodyLimit: o.maxUploadSize,
      schema: {
        summary: method === 'POST' ? 'Add a runtime policy' : 'Replace a runtime policy',
        params: PolicyNameParams,
        body: RuntimePolicyBody,
        response: { 201: Empty, 401: ErrorEnvelope, ...adminErrors },
      },
      schemaErrorFormatter: upstreamWording((errors) => `Runtime policy is malformatted: ${fieldOf(errors)}`),
      handler: async (req, reply) => {
        const mode = method === 'POST' ? 'create' : 'replace'
        await saveRuntimePolicy(service, req.params.name, req.body, mode, auditOf(req))
        return ok(reply, {}, 201)
      },
    })
  }
  addVersionedRoute(app, {
    method: 'DELETE',
    path: '/allowlists/:name',
    admin: true,
    schema: {
      summary: 'Delete a runtime policy not in use',
      params: PolicyNameParams,
      response: { 204: Type.Null(), ...adminErrors },
    },
    handler: async (req, reply) => {
      await deleteRuntimePolicy(service, req.params.name, auditOf(req))
      return reply.code(204).send(null)
    },
  })

  // ------------------------------------------------------------------------------ measured-boot policies
  addVersionedRoute(app, {
    method: 'GET',
    path: '/mbpolicies',
    admin: true,
    schema: {
      summary: 'Measured-boot policy names',
      response: { 200: Envelope(MbPolicyNames), ...adminErrors },
    },
    handler: async (_req, reply) => ok(reply, { 'mbpolicy names': await repo.listMbPolicyNames() }),
  })
  addVersionedRoute(app, {
    method: 'GET',
    path: '/mbpolicies/:name',
    admin: true,
    schema: {
      summary: 'A measured-boot policy',
      params: PolicyNameParams,
      response: { 200: Envelope(MbPolicyShow), ...adminErrors },
    },
    handler: async (req, reply) => {
      const p = await requireMbPolicy(service, req.params.name)
      return ok(reply, { name: p.name, mb_policy: p.mb_policy })
    },
  })
  for (const method of ['POST', 'PUT'] as const) {
    addVersionedRoute(app, {
      method,
      path: '/mbpolicies/:name',
      admin: true,
      bodyLimit: o.maxUploadSize,
      schema: {
        summary: method === 'POST' ? 'Add a measured-boot policy' : 'Replace a measured-boot policy',
        params: PolicyNameParams,
        body: MbPolicyBody,
        response: { 201: Empty, ...adminErrors },
      },
      schemaErrorFormatter: upstreamWording(
        (errors) => `mb_policy (JSON text) is required: ${fieldOf(errors)}`,
      ),
      handler: async (req, reply) => {
        const mode = method === 'POST' ? 'create' : 'replace'
        await saveMbPolicy(service, req.params.name, req.body.mb_policy, mode, auditOf(req))
        return ok(reply, {}, 201)
      },
    })
  }
  addVersionedRoute(app, {
    method: 'DELETE',
    path: '/mbpolicies/:name',
    admin: true,
    schema: {
      summary: 'Delete a measured-boot policy not in use',
      params: PolicyNameParams,
      response: { 204: Type.Null(), ...adminErrors },
    },
    handler: async (req, reply) => {
      await deleteMbPolicy(service, req.params.name, auditOf(req))
      return reply.code(204).send(null)
    },
  })

  // ------------------------------------------------------------------------------ on-demand verification (PUBLIC)
  addVersionedRoute(app, {
    method: 'GET',
    path: '/verify/identity',
    schema: {
      summary: 'Check an identity quote against the enrolled AK',
      querystring: VerifyIdentityQuery,
      response: { 200: Envelope(VerifyIdentityResults), 400: ErrorEnvelope, 404: ErrorEnvelope },
    },
    schemaErrorFormatter: (errors, dataVar) => {
      const e = errors[0]
      return new ApiError(
        400,
        dataVar === 'querystring' && e?.keyword === 'required' && typeof e.params.missingProperty === 'string'
          ? `missing query parameter '${e.params.missingProperty}'`
          : validationMessage(errors, dataVar),
      )
    },
    handler: async (req, reply) => {
      const q = req.query
      const row = await repo.getAgent(q.agent_uuid)
      if (!row?.ak_tpm) throw new ApiError(404, 'agent id not found')
      const hashAlg = q.hash_alg
      if (!isQuoteHashAlg(hashAlg)) return ok(reply, { valid: 0, reason: `unsupported hash_alg ${hashAlg}` })
      const r = verifyQuote({
        akPublic: akKeyObject(new Uint8Array(Buffer.from(row.ak_tpm, 'base64'))),
        quote: q.quote,
        nonce: q.nonce,
        hashAlg,
      })
      if (r.verdict.ok) return ok(reply, { valid: 1 })
      const reason = r.verdict.events.map((e) => String(e.context.message ?? e.eventId)).join('; ')
      return ok(reply, { valid: 0, reason })
    },
  })

  addVersionedRoute(app, {
    method: 'POST',
    path: '/verify/evidence',
    bodyLimit: o.maxEvidenceSize,
    schema: {
      summary: 'Verify TPM evidence against the given policies (stateless)',
      body: VerifyEvidenceBody,
      response: { 200: Envelope(VerifyEvidenceResults), 400: ErrorEnvelope },
    },
    handler: async (req, reply) => {
      const r = await service.verifyEvidence(req.body)
      return reply
        .code(r.statusCode)
        .send(envelope(r.statusCode, r.statusCode === 200 ? 'Success' : 'Bad Request', r.results))
    },
  })

  registerV3ManagementRoutes(app, { service, auditOf, requireAdmin })
  return app
}
