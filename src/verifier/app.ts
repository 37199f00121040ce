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
import { AgentState, attestationStatus, IDLE_STATES } from '../api/verifier/states.ts'
import { CURRENT_API_VERSION, KNOWN_API_VERSIONS } from '../api/versions.ts'
import { KeylimeError } from '../common/errors.ts'
import type { Logger } from '../common/log.ts'
import type { VerifierAgentRow } from '../db/verifier-repository.ts'
import { RUNTIME_POLICY_GENERATOR } from '../evidence/ima/index.ts'
import { akKeyObject, isQuoteHashAlg, verifyQuote } from '../evidence/quote/index.ts'
import {
  b64decode,
  generatorOf,
  parseMbInput,
  parseRuntimeInput,
  unwrapRuntimePolicy,
} from './policy-input.ts'
import { PolicyStore } from './policy-store.ts'
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

/** The stored `last_event_context` JSON; a value that does not parse is shown as text, never a 500. */
function eventContext(text: string | null): Record<string, unknown> | null {
  if (text === null) return null
  try {
    return JSON.parse(text) as Record<string, unknown>
  } catch {
    return { unparsable: text }
  }
}

function jsonList(text: string | null): string[] {
  if (!text) return []
  try {
    const v = JSON.parse(text)
    return Array.isArray(v) ? v.map(String) : []
  } catch {
    return []
  }
}

export async function buildVerifierApp(opts: VerifierAppOptions): Promise<KeylimeServer> {
  const { service } = opts
  const repo = service.repo
  const o = service.options
  const identify = opts.identify ?? tlsIdentity
  const app = createKeylimeServer({
    ...(opts.log ? { logger: opts.log } : {}),
    ...(opts.https ? { https: opts.https } : {}),
    bodyLimit: o.maxBodySize,
    agentIdMessage: AGENT_ID_MESSAGE,
    adminCheck: async (req, reply) => {
      if (identify(req) !== 'admin') forbidden(reply)
    },
    openapi: { title: 'Keylime verifier', version: CURRENT_API_VERSION, documentedPrefixes: ['2.6'] },
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
      ),
    )

  /** One info line per admin action: who (certificate subject), what, on which agent or policy. */
  const audit = (req: FastifyRequest, action: string, fields: Record<string, unknown>) =>
    opts.log?.info({ audit: action, by: callerSubject(req), ...fields }, 'admin action')
  const ok = (reply: FastifyReply, results: unknown, code = 200) =>
    reply.code(code).send(envelope(code, 'Success', results))

  const versionRoute = (url: string) =>
    addRoute(app, {
      method: 'GET',
      url,
      schema: { summary: 'API versions', response: { 200: Envelope(VersionResults) } },
      handler: async () =>
        envelope(200, 'Success', {
          current_version: CURRENT_API_VERSION,
          supported_versions: [...KNOWN_API_VERSIONS],
        }),
    })
  versionRoute('/version')
  versionRoute('/versions')

  async function policyFlags(row: VerifierAgentRow): Promise<{ rt: number; mb: number }> {
    let rt = 0
    if (row.ima_policy_id !== null) {
      const p = await repo.getAllowlistById(row.ima_policy_id)
      rt = p && (p.generator ?? 0) > RUNTIME_POLICY_GENERATOR.EmptyAllowList ? 1 : 0
    }
    let mb = 0
    if (row.mb_policy_id !== null) {
      const p = await repo.getMbPolicyById(row.mb_policy_id)
      mb = p?.body_digest ? 1 : 0
    }
    return { rt, mb }
  }

  async function statusOf(row: VerifierAgentRow): Promise<Record<string, unknown>> {
    const flags = await policyFlags(row)
    const interval = Math.round(o.quoteIntervalMs / 1000)
    return {
      operational_state: row.operational_state,
      v: row.v,
      ip: row.ip,
      port: row.port,
      tpm_policy: row.tpm_policy,
      meta_data: row.meta_data,
      has_mb_refstate: flags.mb,
      has_runtime_policy: flags.rt,
      accept_tpm_hash_algs: jsonList(row.accept_tpm_hash_algs),
      accept_tpm_encryption_algs: jsonList(row.accept_tpm_encryption_algs),
      accept_tpm_signing_algs: jsonList(row.accept_tpm_signing_algs),
      hash_alg: row.hash_alg,
      enc_alg: row.enc_alg,
      sign_alg: row.sign_alg,
      verifier_id: row.verifier_id,
      verifier_ip: row.verifier_ip,
      verifier_port: row.verifier_port,
      severity_level: row.severity_level,
      last_event_id: row.last_event_id,
      last_event_context: eventContext(row.last_event_context),
      attestation_count: row.attestation_count,
      last_received_quote: row.last_received_quote === null ? null : Number(row.last_received_quote),
      last_successful_attestation:
        row.last_successful_attestation === null ? null : Number(row.last_successful_attestation),
      attestation_status: attestationStatus(row.operational_state),
      attestation_period: `${interval}s`,
      maximum_attestation_interval: `${interval * 5}s`,
    }
  }

  const parseMb = (text: string) => parseMbInput(text, o.mbPolicyEngine)
  const unwrap = (text: string, keyB64: unknown) =>
    unwrapRuntimePolicy(text, keyB64, o.requireAllowListSignatures)

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
      const id = req.params.agent_id
      const b = req.body
      const row = await service.enrol(id, b)
      audit(req, 'agent.enrol', {
        agentId: id,
        ip: row.ip,
        port: row.port,
        runtimePolicyId: row.ima_policy_id,
        mbPolicyId: row.mb_policy_id,
        runtimePolicyName: b.runtime_policy_name ?? null,
        mbPolicyName: b.mb_policy_name,
        tpmPolicy: b.tpm_policy,
        payloadKey: row.v !== null,
      })
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
    handler: async (req, reply) => {
      const row = await repo.getAgent(req.params.agent_id)
      if (!row) throw new ApiError(404, 'agent id not found')
      return ok(reply, await statusOf(row))
    },
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
        for (const r of rows) out[r.agent_id] = await statusOf(r)
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
    handler: async (req, reply) => {
      const id = req.params.agent_id
      const row = await repo.getAgent(id)
      if (!row) throw new ApiError(404, 'agent id not found')
      if (row.verifier_id !== o.verifierId) throw new ApiError(404, 'agent id associated to this verifier')
      const state = row.operational_state
      const done = (code: 200 | 202) => {
        audit(req, 'agent.delete', { agentId: id, completed: code === 200 })
        return ok(reply, {}, code)
      }
      if (state === AgentState.TERMINATED) return done(202)
      const idle = IDLE_STATES as readonly number[]
      const heldElsewhere =
        row.lease_holder !== null &&
        row.lease_holder !== service.leaseHolder &&
        (row.lease_expires ?? 0) > Date.now()
      if (state !== null && idle.includes(state)) {
        service.loop.remove(id)
        await repo.deleteAgent(id)
        return done(200)
      }
      if (heldElsewhere) {
        // the verifier holding it finishes the deletion when its next guarded write is refused
        await repo.setState(id, AgentState.TERMINATED)
        return done(202)
      }
      // held here: cancelling the loop's step (its result is discarded) makes an immediate delete safe
      service.loop.remove(id)
      await repo.deleteAgent(id)
      return done(200)
    },
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
      const id = req.params.agent_id
      const row = await repo.getAgent(id)
      if (!row) throw new ApiError(400, 'agent id not found')
      await repo.reactivate(id, service.leaseHolder)
      const fresh = await repo.getAgent(id)
      if (fresh && fresh.ip !== null && fresh.port !== null) service.loop.add(fresh)
      audit(req, 'agent.reactivate', { agentId: id, previousState: row.operational_state })
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
      const id = req.params.agent_id
      if (!(await repo.setState(id, AgentState.TENANT_FAILED))) throw new ApiError(404, 'agent id not found')
      service.loop.remove(id)
      audit(req, 'agent.stop', { agentId: id })
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
      const p = await repo.getAllowlist(req.params.name)
      if (!p) throw new ApiError(404, `Runtime policy ${req.params.name} not found`)
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
        const name = req.params.name
        const body = req.body
        const text = unwrap(
          b64decode('runtime_policy', body.runtime_policy).toString('utf8'),
          body.runtime_policy_key,
        )
        const parsed = parseRuntimeInput(text, true)
        const fields = {
          ima_policy: text,
          checksum: PolicyStore.checksum(text),
          generator: generatorOf(parsed),
          tpm_policy: typeof body.tpm_policy === 'string' ? body.tpm_policy : null,
        }
        if (method === 'POST') {
          if (await repo.allowlistMeta(name))
            throw new ApiError(409, `Runtime policy with name ${name} already exists`)
          await repo.insertAllowlist({ name, ...fields })
        } else {
          const existing = await repo.allowlistMeta(name)
          if (!existing || !(await repo.updateAllowlist(name, fields)))
            throw new ApiError(404, `Runtime policy ${name} not found`)
          service.loop.invalidatePolicy('ima', existing.id)
        }
        audit(req, method === 'POST' ? 'runtime_policy.add' : 'runtime_policy.update', {
          policy: name,
          checksum: fields.checksum,
        })
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
      const p = await repo.allowlistMeta(req.params.name)
      if (!p) throw new ApiError(404, `Runtime policy ${req.params.name} not found`)
      const user = await repo.agentUsingPolicy('ima', p.id)
      if (user) throw new ApiError(409, `Can't delete allowlist as it's currently in use by agent ${user}`)
      await repo.deleteAllowlist(p.name)
      audit(req, 'runtime_policy.delete', { policy: p.name })
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
      const p = await repo.getMbPolicy(req.params.name)
      if (!p) throw new ApiError(404, `Measured boot policy ${req.params.name} not found`)
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
        const name = req.params.name
        const mb = req.body.mb_policy
        parseMb(mb)
        if (method === 'POST') {
          if (await repo.mbPolicyMeta(name))
            throw new ApiError(409, `Measured boot policy with name ${name} already exists`)
          await repo.insertMbPolicy(name, mb)
        } else {
          const existing = await repo.mbPolicyMeta(name)
          if (!existing || !(await repo.updateMbPolicy(name, mb)))
            throw new ApiError(409, `Measured boot policy ${name} does not exist`)
          service.loop.invalidatePolicy('mb', existing.id)
        }
        audit(req, method === 'POST' ? 'mb_policy.add' : 'mb_policy.update', {
          policy: name,
          checksum: PolicyStore.checksum(mb),
        })
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
      const p = await repo.mbPolicyMeta(req.params.name)
      if (!p) throw new ApiError(404, `Measured boot policy ${req.params.name} not found`)
      const user = await repo.agentUsingPolicy('mb', p.id)
      if (user) throw new ApiError(409, `Can't delete mb policy as it's currently in use by agent ${user}`)
      await repo.deleteMbPolicy(p.name)
      audit(req, 'mb_policy.delete', { policy: p.name })
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

  return app
}
