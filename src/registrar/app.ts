/**
 * The registrar's route table (keylime-api.md §2) on the shared server factory. The same table serves both
 * listeners: on plain HTTP only registration, activation and `/version` answer (admin routes give an empty 400, as
 * upstream); on HTTPS the admin routes need a client certificate chained to `trusted_client_ca`. Public writes (POST,
 * PUT) are rate-limited per source address before their body is read.
 */
import { Type } from '@sinclair/typebox'
import type { FastifyRequest } from 'fastify'
import { ok } from '../api/envelope.ts'
import {
  ActivateBody,
  AgentResults,
  EmptyResults,
  ListResults,
  RegisterBody,
  RegisterResults,
  VersionResults,
} from '../api/registrar/schemas.ts'
import { AgentIdParams, AuthErrorBody, Envelope, ErrorEnvelope } from '../api/schemas.ts'
import {
  addRoute,
  addVersionedRoute,
  callerSubject,
  createKeylimeServer,
  type KeylimeServer,
  type KeylimeServerOptions,
  rateLimitHook,
  validationMessage,
} from '../api/server.ts'
import { CURRENT_API_VERSION, KNOWN_API_VERSIONS } from '../api/versions.ts'
import type { Logger } from '../common/log.ts'
import type { RegistrarMetrics } from './metrics.ts'
import { AGENT_ID_INVALID, INVALID_DATA, RegistrarError } from './registrar-fns.ts'
import type { RegistrarService } from './registrar-service.ts'

export interface BuildRegistrarAppOptions extends KeylimeServerOptions {
  service: RegistrarService
  /** Audit lines of admin actions (default: the server logger). */
  log?: Logger
  /** Counts registrations and activations by outcome. */
  metrics?: RegistrarMetrics
}

const errors = { 400: ErrorEnvelope, 404: ErrorEnvelope }
const adminErrors = { ...errors, 401: AuthErrorBody, 403: AuthErrorBody }

const AGENT_ID_MESSAGE = AGENT_ID_INVALID

type SchemaErrors = Parameters<typeof validationMessage>[0]
type DataVar = Parameters<typeof validationMessage>[1]

/** Registration failures keep upstream's wording, with the field that did not fit. */
const registrationSchemaError = (errors: SchemaErrors, dataVar: DataVar) =>
  dataVar === 'params'
    ? new RegistrarError(400, AGENT_ID_MESSAGE)
    : new RegistrarError(
        400,
        `${INVALID_DATA}: ${validationMessage(errors, dataVar).replace(/^Malformed Request Parameter: /, '')}`,
      )

/** Activation without a usable auth_tag keeps upstream's text. */
const activateError = (errors: SchemaErrors, dataVar: DataVar) =>
  dataVar === 'body'
    ? new RegistrarError(400, "Missing or invalid parameter 'auth_tag'")
    : new RegistrarError(400, validationMessage(errors, dataVar, AGENT_ID_MESSAGE))

export function buildRegistrarApp(opts: BuildRegistrarAppOptions): KeylimeServer {
  const { service } = opts
  const app = createKeylimeServer({
    bodyLimit: 1048576,
    agentIdMessage: AGENT_ID_MESSAGE,
    openapi: { title: 'Keylime registrar', version: CURRENT_API_VERSION, documentedPrefixes: ['2.6', '3.0'] },
    ...opts,
  })
  app.addHook(
    'onRequest',
    rateLimitHook(
      (ip) => service.admit(ip),
      (req) => req.method === 'POST' || req.method === 'PUT',
      'registration',
    ),
  )
  const metrics = opts.metrics
  if (metrics)
    app.addHook('onResponse', async (request, reply) => {
      const kind = writeKind(request)
      if (kind) metrics.answered(kind, reply.statusCode)
    })
  const audit = opts.log ?? (opts.logger || undefined)

  addRoute(app, {
    method: 'GET',
    url: '/version',
    schema: { summary: 'API versions', response: { 200: Envelope(VersionResults) } },
    handler: async () =>
      ok({ current_version: CURRENT_API_VERSION, supported_versions: [...KNOWN_API_VERSIONS] }),
  })
  addVersionedRoute(app, {
    method: 'GET',
    path: '/',
    v2: false,
    v3: true,
    schema: { summary: 'v3 probe', response: { 200: Envelope(Type.Object({})) } },
    handler: async () => ok({}),
  })

  // ADMIN: list / show / delete
  addVersionedRoute(app, {
    method: 'GET',
    path: '/agents',
    v3: true,
    admin: true,
    schema: { summary: 'List registered agents', response: { 200: Envelope(ListResults), ...adminErrors } },
    handler: async () => ok({ uuids: await service.list() }),
  })
  addVersionedRoute(app, {
    method: 'GET',
    path: '/agents/:agent_id',
    v3: true,
    admin: true,
    schema: {
      summary: 'Show an activated agent',
      params: AgentIdParams,
      response: { 200: Envelope(AgentResults), ...adminErrors },
    },
    handler: async (req) => ok(await service.show(req.params.agent_id)),
  })
  addVersionedRoute(app, {
    method: 'DELETE',
    path: '/agents/:agent_id',
    v3: true,
    admin: true,
    schema: {
      summary: 'Delete an agent',
      params: AgentIdParams,
      response: { 200: Envelope(EmptyResults), ...adminErrors },
    },
    handler: async (req) => {
      await service.delete(req.params.agent_id)
      audit?.info(
        { audit: 'agent.delete', by: callerSubject(req), agentId: req.params.agent_id },
        'admin action',
      )
      return ok({})
    },
  })

  // PUBLIC: registration
  const registered = { 200: Envelope(RegisterResults), 403: ErrorEnvelope, ...errors }
  addVersionedRoute(app, {
    method: 'POST',
    path: '/agents',
    v3: true,
    schema: { summary: 'Register an agent (id in the body)', body: RegisterBody, response: registered },
    schemaErrorFormatter: registrationSchemaError,
    handler: async (req) => ok(await service.register(req.body.agent_id, req.body)),
  })
  addVersionedRoute(app, {
    method: 'POST',
    path: '/agents/:agent_id',
    schema: {
      summary: 'Register an agent',
      params: AgentIdParams,
      body: RegisterBody,
      response: registered,
    },
    schemaErrorFormatter: registrationSchemaError,
    handler: async (req) => ok(await service.register(req.params.agent_id, req.body)),
  })

  // PUBLIC: activation (v2 PUT forms kept for the Rust agent and older clients)
  const activation = {
    summary: 'Activate a registered agent with the auth_tag',
    params: AgentIdParams,
    body: ActivateBody,
    response: { 200: Envelope(EmptyResults), ...errors },
  }
  const activate = async (req: { params: AgentIdParams; body: ActivateBody }) => {
    await service.activate(req.params.agent_id, req.body)
    return ok({})
  }
  for (const [method, path, v3] of [
    ['POST', '/agents/:agent_id/activate', true],
    ['PUT', '/agents/:agent_id/activate', false],
    ['PUT', '/agents/:agent_id', false],
  ] as const)
    addVersionedRoute(app, {
      method,
      path,
      v3,
      schema: activation,
      schemaErrorFormatter: activateError,
      handler: activate,
    })
  return app
}

/**
 * Which registrar write a request was: POST to the collection or to one agent registers; POST …/activate and the
 * v2 PUT forms activate. Requests no route matched (404) are neither.
 */
function writeKind(request: FastifyRequest): 'registration' | 'activation' | null {
  const url = request.routeOptions.url
  if (url === undefined || (request.method !== 'POST' && request.method !== 'PUT')) return null
  if (request.method === 'PUT' || url.endsWith('/activate')) return 'activation'
  return /\/agents(\/:agent_id)?$/.test(url) ? 'registration' : null
}
