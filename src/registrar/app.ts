/**
 * The registrar's route table (keylime-api.md §2) as a fastify app. The same table serves both listeners: on plain
 * HTTP only registration, activation and `/version` answer (admin routes give an empty 400, as upstream); on HTTPS
 * the admin routes need a client certificate chained to `trusted_client_ca`. Public writes (POST, PUT) are
 * rate-limited per source address before their body is read.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { errorEnvelope, ok } from '../api/envelope.ts'
import {
  addRoute,
  addVersionedRoute,
  createKeylimeServer,
  type KeylimeServerOptions,
  requireAdmin,
} from '../api/server.ts'
import { CURRENT_API_VERSION, KNOWN_API_VERSIONS } from '../api/versions.ts'
import type { RegistrarService } from './registrar-service.ts'

export interface BuildRegistrarAppOptions extends KeylimeServerOptions {
  service: RegistrarService
}

type AgentParams = { agent_id: string }

export function buildRegistrarApp(opts: BuildRegistrarAppOptions): FastifyInstance {
  const { service } = opts
  const app = createKeylimeServer({ bodyLimit: 1048576, ...opts })
  app.addHook('onRequest', throttleWrites(service))

  addRoute(app, {
    method: 'GET',
    url: '/version',
    handler: async () =>
      ok({ current_version: CURRENT_API_VERSION, supported_versions: [...KNOWN_API_VERSIONS] }),
  })
  addVersionedRoute(app, { method: 'GET', path: '/', v2: false, v3: true, handler: async () => ok({}) })

  // ADMIN: list / show / delete
  addVersionedRoute(app, {
    method: 'GET',
    path: '/agents',
    v3: true,
    preHandler: requireAdmin,
    handler: async () => ok({ uuids: await service.list() }),
  })
  addVersionedRoute(app, {
    method: 'GET',
    path: '/agents/:agent_id',
    v3: true,
    preHandler: requireAdmin,
    handler: async (req) => ok(await service.show((req.params as AgentParams).agent_id)),
  })
  addVersionedRoute(app, {
    method: 'DELETE',
    path: '/agents/:agent_id',
    v3: true,
    preHandler: requireAdmin,
    handler: async (req) => {
      await service.delete((req.params as AgentParams).agent_id)
      return ok({})
    },
  })

  // PUBLIC: registration
  addVersionedRoute(app, {
    method: 'POST',
    path: '/agents',
    v3: true,
    handler: async (req) => {
      const body = req.body as Record<string, unknown> | undefined
      return ok(await service.register(body?.agent_id, body))
    },
  })
  addVersionedRoute(app, {
    method: 'POST',
    path: '/agents/:agent_id',
    handler: async (req) => ok(await service.register((req.params as AgentParams).agent_id, req.body)),
  })

  // PUBLIC: activation (v2 PUT forms kept for the Rust agent and older clients)
  const activate = async (req: { params: unknown; body: unknown }) => {
    await service.activate((req.params as AgentParams).agent_id, req.body)
    return ok({})
  }
  addVersionedRoute(app, { method: 'POST', path: '/agents/:agent_id/activate', v3: true, handler: activate })
  addVersionedRoute(app, { method: 'PUT', path: '/agents/:agent_id/activate', handler: activate })
  addVersionedRoute(app, { method: 'PUT', path: '/agents/:agent_id', handler: activate })
  return app
}

/** 429 with `Retry-After` in the v2 envelope when the source has used up its registration/activation budget. */
function throttleWrites(service: RegistrarService) {
  return async (request: FastifyRequest, reply: FastifyReply): Promise<void> => {
    if (request.method !== 'POST' && request.method !== 'PUT') return
    const admission = service.admit(request.ip)
    if (admission.admitted) return
    await reply
      .code(429)
      .header('Retry-After', String(admission.retryAfterSeconds))
      .send(
        errorEnvelope(
          429,
          `Too many registration requests from this address; retry in ${admission.retryAfterSeconds} s`,
        ),
      )
  }
}
