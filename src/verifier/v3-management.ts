/**
 * The verifier's v3 management routes (keylime-api.md §4.3), which upstream registers but leaves unimplemented:
 * agents (`/v3/agents[/:agent_id]`), IMA policies (`/v3/policies/ima[/:name]`), UEFI reference states
 * (`/v3/refstates/uefi[/:name]`) and `POST /v3/verify/evidence`, with JSON:API bodies (§0.3). They carry the same
 * data and run the same checks as the v2 routes: every operation is the one in `management.ts` or the service's
 * `enrol`/`verifyEvidence`. Authorization is v2's (§0.5): ADMIN for everything but evidence verification, checked
 * before the body is read; reading one agent is upstream's AGENT_OR_ADMIN (an agent reads its own record with its
 * push-session token). They are registered on every verifier, whatever its `mode` (docs/api.md says why).
 *
 * Errors are JSON:API error documents (`{"errors": [{status, code, detail, source}]}`), rendered by this scope's
 * own error handler; routes outside it keep the v2 envelope.
 */
import { Type } from '@sinclair/typebox'
import type { FastifyError, FastifyReply, FastifyRequest, FastifySchemaValidationError } from 'fastify'
import { errorEnvelope } from '../api/envelope.ts'
import { AgentIdParams, AuthErrorBody, PolicyNameParams } from '../api/schemas.ts'
import {
  addVersionedRoute,
  DATABASE_RETRY_AFTER_SECONDS,
  databaseUnavailableReason,
  dropConnectionAfterUnreadBody,
  type KeylimeServer,
  type RefusalRenderer,
} from '../api/server.ts'
import type { RuntimePolicyBody } from '../api/verifier/schemas.ts'
import {
  AgentCollection,
  AgentCollectionQuery,
  AgentDocument,
  CreateAgentBody,
  CreateImaPolicyBody,
  CreateRefstateBody,
  EvidenceVerificationDocument,
  ImaPolicyCollection,
  ImaPolicyDocument,
  JSON_API_MEDIA_TYPE,
  JsonApiErrors,
  PatchAgentBody,
  PatchImaPolicyBody,
  PatchRefstateBody,
  RefstateCollection,
  RefstateDocument,
  V3_TYPES,
  VerifyEvidenceDocument,
} from '../api/verifier/v3-management-schemas.ts'
import { KeylimeError } from '../common/errors.ts'
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
import type { VerifierService } from './verifier-service.ts'

/** The JSON:API `code` of an error status (§0.3: not_found, conflict, invalid_resource_data). */
const CODES: Record<number, string> = {
  400: 'bad_request',
  401: 'unauthorized',
  403: 'forbidden',
  404: 'not_found',
  409: 'conflict',
  413: 'payload_too_large',
  415: 'unsupported_media_type',
  422: 'invalid_resource_data',
  429: 'too_many_requests',
}

interface ErrorSource {
  pointer?: string
  parameter?: string
}

/** A refusal with the JSON:API `source` of the offending member. */
class JsonApiRequestError extends KeylimeError {
  constructor(
    statusCode: number,
    message: string,
    readonly source?: ErrorSource,
  ) {
    super('ERR_VERIFIER_API', message, { statusCode })
  }
}

/** A JSON:API error document of one error (§0.3), e.g. `{"errors": [{"status": "404", "code": "not_found", …}]}`. */
export function errorDocument(
  status: number,
  detail: string,
  source?: ErrorSource,
  code?: string,
): JsonApiErrors {
  return {
    errors: [
      {
        status: String(status),
        code: code ?? CODES[status] ?? (status >= 500 ? 'internal_error' : 'bad_request'),
        detail,
        ...(source ? { source } : {}),
      },
    ],
  }
}

/**
 * Schema errors: a body that is not a JSON:API document at all is a 400; a document whose members do not fit is a
 * 422 pointing at the member (`/data/attributes/tpm_policy`); a bad path parameter is a 400 naming it.
 */
function schemaError(errors: FastifySchemaValidationError[], dataVar: string): Error {
  const e = errors[0]
  const path = e ? e.instancePath : ''
  const member =
    e?.keyword === 'required' && typeof e.params.missingProperty === 'string'
      ? `${path}/${e.params.missingProperty}`
      : path
  const why = e?.keyword === 'required' ? 'is required' : (e?.message ?? 'is not valid')
  if (dataVar === 'params') {
    const name = member.split('/').filter(Boolean)[0] ?? 'path'
    return new JsonApiRequestError(400, `path parameter ${name} ${why}`, { parameter: name })
  }
  if (dataVar === 'querystring') {
    const name = member.split('/').filter(Boolean)[0] ?? 'query'
    return new JsonApiRequestError(400, `query parameter ${name} ${why}`, { parameter: name })
  }
  if (member === '' || member === '/data')
    return new JsonApiRequestError(400, `the body must be a JSON:API document: ${member || '/'} ${why}`, {
      pointer: member || '/',
    })
  return new JsonApiRequestError(422, `${member} ${why}`, { pointer: member })
}

/** Refusals outside a route's handler (the evidence rate limit): JSON:API on v3 paths, the v2 envelope elsewhere. */
export const refusalOfApi: RefusalRenderer = (request, status, detail) =>
  /^\/v3(?:\.\d+)?\//.test(request.url)
    ? { body: errorDocument(status, detail), contentType: JSON_API_MEDIA_TYPE }
    : { body: errorEnvelope(status, detail) }

/** The version prefix the request used (`/v3` or `/v3.0`), for `links.self`. */
function prefixOf(req: FastifyRequest): string {
  return /^\/v3(?:\.0)?(?=\/)/.exec(req.url)?.[0] ?? '/v3'
}

function send(reply: FastifyReply, code: number, document: unknown): FastifyReply {
  return reply.code(code).header('Content-Type', JSON_API_MEDIA_TYPE).send(document)
}

/** The id of a created resource: `data.id` or the named attribute, which must agree when both are given. */
function resourceId(data: { id?: string | undefined; attributes: object }, attribute: string): string {
  const fromAttributes = (data.attributes as Record<string, unknown>)[attribute]
  const id = data.id ?? (typeof fromAttributes === 'string' ? fromAttributes : undefined)
  if (id === undefined)
    throw new JsonApiRequestError(422, `data.id or data.attributes.${attribute} is required`, {
      pointer: '/data/id',
    })
  if (data.id !== undefined && typeof fromAttributes === 'string' && fromAttributes !== data.id)
    throw new JsonApiRequestError(422, `data.attributes.${attribute} differs from data.id`, {
      pointer: `/data/attributes/${attribute}`,
    })
  return id
}

/** A PATCH's `data.id`, when given, must name the resource of the path. */
function checkPatchId(data: { id?: string | undefined }, id: string): void {
  if (data.id !== undefined && data.id !== id)
    throw new JsonApiRequestError(409, `data.id ${data.id} does not match the resource ${id}`, {
      pointer: '/data/id',
    })
}

export interface V3ManagementOptions {
  service: VerifierService
  /** The audit line writer of a request (the v2 routes' own). */
  auditOf: (req: FastifyRequest) => ActionAudit
  /** The server's ADMIN check (it answers the refusal itself). */
  requireAdmin: (req: FastifyRequest, reply: FastifyReply) => Promise<void>
}

export function registerV3ManagementRoutes(app: KeylimeServer, opts: V3ManagementOptions): void {
  app.register(async (scope) => {
    v3Routes(scope as unknown as KeylimeServer, opts)
  })
}

function v3Routes(app: KeylimeServer, { service, auditOf, requireAdmin }: V3ManagementOptions): void {
  const repo = service.repo
  const o = service.options

  app.setErrorHandler((error: FastifyError | KeylimeError | Error, request, reply) => {
    dropConnectionAfterUnreadBody(error, request, reply)
    const unavailable = databaseUnavailableReason(error)
    if (unavailable !== null) {
      request.log.error({ err: error }, 'database unavailable')
      return send(
        reply.header('Retry-After', String(DATABASE_RETRY_AFTER_SECONDS)),
        503,
        errorDocument(503, `database unavailable (${unavailable})`, undefined, 'service_unavailable'),
      )
    }
    const status =
      error instanceof KeylimeError
        ? (error.statusCode ?? 500)
        : typeof (error as FastifyError).statusCode === 'number'
          ? ((error as FastifyError).statusCode as number)
          : error instanceof SyntaxError
            ? 400
            : 500
    if (status >= 500 || status < 400) {
      request.log.error({ err: error }, 'request failed')
      return send(reply, 500, errorDocument(500, 'Internal Server Error'))
    }
    const source = error instanceof JsonApiRequestError ? error.source : undefined
    return send(reply, status, errorDocument(status, error.message, source))
  })

  const adminErrors = { 400: JsonApiErrors, 403: AuthErrorBody, 404: JsonApiErrors, 409: JsonApiErrors }
  const common = { v2: false, v3: true, schemaErrorFormatter: schemaError } as const

  // ------------------------------------------------------------------------------ agents
  const agentResource = async (req: FastifyRequest, id: string) => {
    const row = await requireAgent(service, id)
    return {
      type: V3_TYPES.agent,
      id,
      attributes: await agentStatus(service, row),
      links: { self: `${prefixOf(req)}/agents/${id}` },
    }
  }

  addVersionedRoute(app, {
    ...common,
    method: 'GET',
    path: '/agents',
    admin: true,
    schema: {
      summary: 'Agents enrolled at this verifier group (or at one verifier id), with their status',
      querystring: AgentCollectionQuery,
      response: { 200: AgentCollection, ...adminErrors },
    },
    handler: async (req, reply) => {
      const rows = await repo.listAgents(req.query['filter[verifier]'] || undefined)
      const data = []
      for (const row of rows)
        data.push({
          type: V3_TYPES.agent,
          id: row.agent_id,
          attributes: await agentStatus(service, row),
          links: { self: `${prefixOf(req)}/agents/${row.agent_id}` },
        })
      return send(reply, 200, { data })
    },
  })

  addVersionedRoute(app, {
    ...common,
    method: 'POST',
    path: '/agents',
    admin: true,
    bodyLimit: o.maxUploadSize,
    schema: {
      summary: 'Enrol an agent with its policies (the v2 enrolment fields as attributes)',
      body: CreateAgentBody,
      response: { 201: AgentDocument, 422: JsonApiErrors, ...adminErrors },
    },
    handler: async (req, reply) => {
      const data = req.body.data
      const id = resourceId(data, 'agent_id')
      const { agent_id: _, ...enrolment } = data.attributes
      await enrolAgent(service, id, enrolment, auditOf(req))
      const resource = await agentResource(req, id)
      reply.header('Location', resource.links.self)
      return send(reply, 201, { data: resource })
    },
  })

  /**
   * AGENT_OR_ADMIN (upstream's READ_AGENT): with an `Authorization` header the caller is the agent of that push
   * session and reads only its own record; without one, the admin check. As upstream, a token is never combined
   * with the client certificate, so an agent that also holds one cannot read other agents through it.
   */
  const agentOrAdmin = async (req: FastifyRequest, reply: FastifyReply) => {
    const authorization = req.headers.authorization
    if (authorization === undefined) return requireAdmin(req, reply)
    // pull mode has no push sessions, so no token can be valid
    if (!service.push) throw new JsonApiRequestError(401, 'Invalid authentication token')
    const caller = await service.push.sessions.authenticate(authorization).catch((err: unknown) => {
      if (err instanceof KeylimeError && err.statusCode === 401)
        throw new JsonApiRequestError(401, err.message)
      throw err
    })
    const agentId = (req.params as { agent_id?: string }).agent_id
    if (caller.agentId !== agentId)
      throw new JsonApiRequestError(403, `Agent ${caller.agentId} cannot read agent ${agentId}`)
  }

  addVersionedRoute(app, {
    ...common,
    method: 'GET',
    path: '/agents/:agent_id',
    onRequest: agentOrAdmin,
    schema: {
      summary: 'Status of an agent (an admin, or the agent itself with its push-session token)',
      params: AgentIdParams,
      response: { 200: AgentDocument, 401: JsonApiErrors, ...adminErrors },
    },
    handler: async (req, reply) => send(reply, 200, { data: await agentResource(req, req.params.agent_id) }),
  })

  addVersionedRoute(app, {
    ...common,
    method: 'PATCH',
    path: '/agents/:agent_id',
    admin: true,
    schema: {
      summary: 'Stop (`accept_attestations: false`) or restart (`true`) the attestation of an agent',
      params: AgentIdParams,
      body: PatchAgentBody,
      response: { 200: AgentDocument, 422: JsonApiErrors, ...adminErrors },
    },
    handler: async (req, reply) => {
      const id = req.params.agent_id
      checkPatchId(req.body.data, id)
      if (req.body.data.attributes.accept_attestations) await reactivateAgent(service, id, 404, auditOf(req))
      else await stopAgent(service, id, auditOf(req))
      return send(reply, 200, { data: await agentResource(req, id) })
    },
  })

  addVersionedRoute(app, {
    ...common,
    method: 'DELETE',
    path: '/agents/:agent_id',
    admin: true,
    schema: {
      summary: 'Delete an agent (202 while the verifier attesting it finishes the deletion)',
      params: AgentIdParams,
      response: {
        202: Type.Object({ meta: Type.Object({ status: Type.String() }) }),
        204: Type.Null(),
        ...adminErrors,
      },
    },
    handler: async (req, reply) => {
      const code = await deleteAgent(service, req.params.agent_id, auditOf(req))
      if (code === 200) return reply.code(204).send(null)
      return send(reply, 202, { meta: { status: 'terminating' } })
    },
  })

  // ------------------------------------------------------------------------------ IMA policies
  const imaPolicyResource = async (req: FastifyRequest, name: string) => {
    const p = await requireRuntimePolicy(service, name)
    return {
      type: V3_TYPES.imaPolicy,
      id: p.name,
      attributes: {
        name: p.name,
        runtime_policy: p.ima_policy,
        tpm_policy: p.tpm_policy,
        checksum: p.checksum,
        generator: p.generator,
      },
      links: { self: `${prefixOf(req)}/policies/ima/${encodeURIComponent(p.name)}` },
    }
  }
  const runtimeBody = (a: {
    runtime_policy: string
    runtime_policy_key?: string | null | undefined
    tpm_policy?: string | null | undefined
  }): RuntimePolicyBody => ({
    runtime_policy: a.runtime_policy,
    ...(a.runtime_policy_key === undefined ? {} : { runtime_policy_key: a.runtime_policy_key }),
    ...(a.tpm_policy === undefined ? {} : { tpm_policy: a.tpm_policy }),
  })

  addVersionedRoute(app, {
    ...common,
    method: 'GET',
    path: '/policies/ima',
    admin: true,
    schema: { summary: 'IMA (runtime) policies', response: { 200: ImaPolicyCollection, ...adminErrors } },
    handler: async (req, reply) => {
      const names = await repo.listAllowlistNames()
      return send(reply, 200, {
        data: names.map((name) => ({
          type: V3_TYPES.imaPolicy,
          id: name,
          attributes: { name },
          links: { self: `${prefixOf(req)}/policies/ima/${encodeURIComponent(name)}` },
        })),
      })
    },
  })
  addVersionedRoute(app, {
    ...common,
    method: 'GET',
    path: '/policies/ima/:name',
    admin: true,
    schema: {
      summary: 'An IMA (runtime) policy',
      params: PolicyNameParams,
      response: { 200: ImaPolicyDocument, ...adminErrors },
    },
    handler: async (req, reply) => send(reply, 200, { data: await imaPolicyResource(req, req.params.name) }),
  })
  addVersionedRoute(app, {
    ...common,
    method: 'POST',
    path: '/policies/ima',
    admin: true,
    bodyLimit: o.maxUploadSize,
    schema: {
      summary: 'Add an IMA (runtime) policy',
      body: CreateImaPolicyBody,
      response: { 201: ImaPolicyDocument, 401: JsonApiErrors, 422: JsonApiErrors, ...adminErrors },
    },
    handler: async (req, reply) => {
      const data = req.body.data
      const name = resourceId(data, 'name')
      await saveRuntimePolicy(service, name, runtimeBody(data.attributes), 'create', auditOf(req))
      const resource = await imaPolicyResource(req, name)
      reply.header('Location', resource.links.self)
      return send(reply, 201, { data: resource })
    },
  })
  addVersionedRoute(app, {
    ...common,
    method: 'PATCH',
    path: '/policies/ima/:name',
    admin: true,
    bodyLimit: o.maxUploadSize,
    schema: {
      summary: 'Replace an IMA (runtime) policy',
      params: PolicyNameParams,
      body: PatchImaPolicyBody,
      response: { 200: ImaPolicyDocument, 401: JsonApiErrors, 422: JsonApiErrors, ...adminErrors },
    },
    handler: async (req, reply) => {
      const name = req.params.name
      checkPatchId(req.body.data, name)
      await saveRuntimePolicy(service, name, runtimeBody(req.body.data.attributes), 'replace', auditOf(req))
      return send(reply, 200, { data: await imaPolicyResource(req, name) })
    },
  })
  addVersionedRoute(app, {
    ...common,
    method: 'DELETE',
    path: '/policies/ima/:name',
    admin: true,
    schema: {
      summary: 'Delete an IMA (runtime) policy no agent uses',
      params: PolicyNameParams,
      response: { 204: Type.Null(), ...adminErrors },
    },
    handler: async (req, reply) => {
      await deleteRuntimePolicy(service, req.params.name, auditOf(req))
      return reply.code(204).send(null)
    },
  })

  // ------------------------------------------------------------------------------ UEFI reference states
  const refstateResource = async (req: FastifyRequest, name: string) => {
    const p = await requireMbPolicy(service, name)
    return {
      type: V3_TYPES.uefiRefstate,
      id: p.name,
      attributes: { name: p.name, mb_policy: p.mb_policy },
      links: { self: `${prefixOf(req)}/refstates/uefi/${encodeURIComponent(p.name)}` },
    }
  }
  addVersionedRoute(app, {
    ...common,
    method: 'GET',
    path: '/refstates/uefi',
    admin: true,
    schema: {
      summary: 'UEFI (measured-boot) reference states',
      response: { 200: RefstateCollection, ...adminErrors },
    },
    handler: async (req, reply) => {
      const names = await repo.listMbPolicyNames()
      return send(reply, 200, {
        data: names.map((name) => ({
          type: V3_TYPES.uefiRefstate,
          id: name,
          attributes: { name },
          links: { self: `${prefixOf(req)}/refstates/uefi/${encodeURIComponent(name)}` },
        })),
      })
    },
  })
  addVersionedRoute(app, {
    ...common,
    method: 'GET',
    path: '/refstates/uefi/:name',
    admin: true,
    schema: {
      summary: 'A UEFI (measured-boot) reference state',
      params: PolicyNameParams,
      response: { 200: RefstateDocument, ...adminErrors },
    },
    handler: async (req, reply) => send(reply, 200, { data: await refstateResource(req, req.params.name) }),
  })
  addVersionedRoute(app, {
    ...common,
    method: 'POST',
    path: '/refstates/uefi',
    admin: true,
    bodyLimit: o.maxUploadSize,
    schema: {
      summary: 'Add a UEFI (measured-boot) reference state',
      body: CreateRefstateBody,
      response: { 201: RefstateDocument, 422: JsonApiErrors, ...adminErrors },
    },
    handler: async (req, reply) => {
      const data = req.body.data
      const name = resourceId(data, 'name')
      await saveMbPolicy(service, name, data.attributes.mb_policy, 'create', auditOf(req))
      const resource = await refstateResource(req, name)
      reply.header('Location', resource.links.self)
      return send(reply, 201, { data: resource })
    },
  })
  addVersionedRoute(app, {
    ...common,
    method: 'PATCH',
    path: '/refstates/uefi/:name',
    admin: true,
    bodyLimit: o.maxUploadSize,
    schema: {
      summary: 'Replace a UEFI (measured-boot) reference state',
      params: PolicyNameParams,
      body: PatchRefstateBody,
      response: { 200: RefstateDocument, 422: JsonApiErrors, ...adminErrors },
    },
    handler: async (req, reply) => {
      const name = req.params.name
      checkPatchId(req.body.data, name)
      await saveMbPolicy(service, name, req.body.data.attributes.mb_policy, 'replace', auditOf(req), 404)
      return send(reply, 200, { data: await refstateResource(req, name) })
    },
  })
  addVersionedRoute(app, {
    ...common,
    method: 'DELETE',
    path: '/refstates/uefi/:name',
    admin: true,
    schema: {
      summary: 'Delete a UEFI (measured-boot) reference state no agent uses',
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
    ...common,
    method: 'POST',
    path: '/verify/evidence',
    bodyLimit: o.maxEvidenceSize,
    schema: {
      summary: 'Verify TPM evidence against the given policies (stateless)',
      body: VerifyEvidenceDocument,
      response: { 200: EvidenceVerificationDocument, 400: JsonApiErrors, 422: JsonApiErrors },
    },
    handler: async (req, reply) => {
      const a = req.body.data.attributes
      const r = await service.verifyEvidence({ type: a.evidence_type, data: a.evidence })
      if (r.statusCode === 200)
        return send(reply, 200, { data: { type: V3_TYPES.evidenceVerification, attributes: r.results } })
      // missing parameters or policies: one error per failure, named by upstream's event id
      return send(reply, 400, {
        errors: r.results.failures.map((f) => ({
          status: '400',
          code: f.type,
          detail: String((f.context as { message?: unknown } | null)?.message ?? f.type),
          source: { pointer: '/data/attributes/evidence' },
        })),
      })
    },
  })
}
