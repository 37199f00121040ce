/**
 * The verifier's REST API v2 (keylime-api.md §0, §3) as a fastify instance. Routes are registered under every
 * `/v2.x` prefix. Authorization is the spec's split (§0.5): PUBLIC routes answer anyone; every other route needs an
 * admin, i.e. a TLS client certificate that chained to the trusted client CA during the handshake.
 */
import type { TLSSocket } from 'node:tls'
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify'
import { envelope, errorEnvelope } from '../api/envelope.ts'
import { acceptJsonBodiesOfAnyContentType } from '../api/server.ts'
import { AgentState, attestationStatus, IDLE_STATES } from '../api/verifier/states.ts'
import { CURRENT_API_VERSION, KNOWN_API_VERSIONS, V2_PREFIXES } from '../api/versions.ts'
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
}

const AGENT_ID = /^[\w.-]+$/

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

export async function buildVerifierApp(opts: VerifierAppOptions): Promise<FastifyInstance> {
  const { service } = opts
  const repo = service.repo
  const o = service.options
  const identify = opts.identify ?? tlsIdentity
  const app = Fastify({
    ...(opts.https ? { https: opts.https } : {}),
    bodyLimit: o.maxUploadSize,
    routerOptions: { ignoreTrailingSlash: true },
    logger: false,
  })
  acceptJsonBodiesOfAnyContentType(app)

  app.setNotFoundHandler((_req, reply) => reply.code(404).send())
  // a path that exists with other methods answers 405 with an empty body, as upstream's router (§0.3)
  const methodsByUrl = new Map<string, Set<string>>()
  let collecting = true
  app.addHook('onRoute', (route) => {
    if (!collecting) return
    const set = methodsByUrl.get(route.url) ?? new Set<string>()
    for (const m of [route.method].flat()) set.add(m)
    methodsByUrl.set(route.url, set)
  })
  // echo a sanitised X-Request-ID (§0.3): word characters only, at most 36
  app.addHook('onRequest', async (req, reply) => {
    const id = req.headers['x-request-id']
    if (typeof id === 'string') {
      const clean = id.replace(/\W/g, '').slice(0, 36)
      if (clean !== '') reply.header('x-request-id', clean)
    }
  })
  app.setErrorHandler((err, _req, reply) => {
    if (err instanceof KeylimeError && err.statusCode !== undefined && err.statusCode < 500)
      return reply.code(err.statusCode).send(errorEnvelope(err.statusCode, err.message))
    const status = (err as { statusCode?: number }).statusCode
    if (status !== undefined && status >= 400 && status < 500) return reply.code(status).send()
    opts.log?.error({ err: err instanceof Error ? err.message : String(err) }, 'verifier API internal error')
    return reply.code(500).send(errorEnvelope(500, 'Internal Server Error'))
  })

  const admin = async (req: FastifyRequest, reply: FastifyReply) => {
    if (identify(req) !== 'admin') return forbidden(reply)
  }
  const ok = (reply: FastifyReply, results: unknown, code = 200) =>
    reply.code(code).send(envelope(code, 'Success', results))

  const versionHandler = async () =>
    envelope(200, 'Success', {
      current_version: CURRENT_API_VERSION,
      supported_versions: [...KNOWN_API_VERSIONS],
    })
  app.get('/version', versionHandler)
  app.get('/versions', versionHandler)

  function checkId(id: string): void {
    if (!AGENT_ID.test(id)) throw new ApiError(400, 'agent_id not not valid')
  }

  async function policyFlags(row: VerifierAgentRow): Promise<{ rt: number; mb: number }> {
    let rt = 0
    if (row.ima_policy_id !== null) {
      const p = await repo.getAllowlistById(row.ima_policy_id)
      rt = p && (p.generator ?? 0) > RUNTIME_POLICY_GENERATOR.EmptyAllowList ? 1 : 0
    }
    let mb = 0
    if (row.mb_policy_id !== null) {
      const p = await repo.getMbPolicyById(row.mb_policy_id)
      mb = p?.mb_policy ? 1 : 0
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

  for (const p of V2_PREFIXES) {
    const base = `/v${p}`
    app.get(base, async (_req, reply) =>
      reply.code(405).send(errorEnvelope(405, 'Not Implemented: Use /agents/ interface instead')),
    )

    // ------------------------------------------------------------------------------ agents
    app.post<{ Params: { agent_id: string }; Body: Record<string, unknown> }>(
      `${base}/agents/:agent_id`,
      { preHandler: admin },
      async (req, reply) => {
        checkId(req.params.agent_id)
        return ok(reply, await service.enrol(req.params.agent_id, req.body))
      },
    )

    app.get<{ Params: { agent_id: string } }>(
      `${base}/agents/:agent_id`,
      { preHandler: admin },
      async (req, reply) => {
        checkId(req.params.agent_id)
        const row = await repo.getAgent(req.params.agent_id)
        if (!row) throw new ApiError(404, 'agent id not found')
        return ok(reply, await statusOf(row))
      },
    )

    app.get<{ Querystring: { verifier?: string; bulk?: string } }>(
      `${base}/agents`,
      { preHandler: admin },
      async (req, reply) => {
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
    )

    app.delete<{ Params: { agent_id: string } }>(
      `${base}/agents/:agent_id`,
      { preHandler: admin },
      async (req, reply) => {
        const id = req.params.agent_id
        checkId(id)
        const row = await repo.getAgent(id)
        if (!row) throw new ApiError(404, 'agent id not found')
        if (row.verifier_id !== o.verifierId) throw new ApiError(404, 'agent id associated to this verifier')
        const state = row.operational_state
        if (state === AgentState.TERMINATED) return ok(reply, {}, 202)
        const idle = IDLE_STATES as readonly number[]
        const heldElsewhere =
          row.lease_holder !== null &&
          row.lease_holder !== service.leaseHolder &&
          (row.lease_expires ?? 0) > Date.now()
        if (state !== null && idle.includes(state)) {
          service.loop.remove(id)
          await repo.deleteAgent(id)
          return ok(reply, {})
        }
        if (heldElsewhere) {
          // the verifier holding it finishes the deletion when its next guarded write is refused
          await repo.setState(id, AgentState.TERMINATED)
          return ok(reply, {}, 202)
        }
        // held here: cancelling the loop's step (its result is discarded) makes an immediate delete safe
        service.loop.remove(id)
        await repo.deleteAgent(id)
        return ok(reply, {})
      },
    )

    app.put<{ Params: { agent_id: string } }>(
      `${base}/agents/:agent_id/reactivate`,
      { preHandler: admin },
      async (req, reply) => {
        const id = req.params.agent_id
        checkId(id)
        const row = await repo.getAgent(id)
        if (!row) throw new ApiError(400, 'agent id not found')
        await repo.reactivate(id, service.leaseHolder, service.leaseUntil)
        const fresh = await repo.getAgent(id)
        if (fresh && fresh.ip !== null && fresh.port !== null) service.loop.add(fresh)
        return ok(reply, {})
      },
    )

    app.put<{ Params: { agent_id: string } }>(
      `${base}/agents/:agent_id/stop`,
      { preHandler: admin },
      async (req, reply) => {
        const id = req.params.agent_id
        checkId(id)
        if (!(await repo.setState(id, AgentState.TENANT_FAILED)))
          throw new ApiError(404, 'agent id not found')
        service.loop.remove(id)
        return ok(reply, {})
      },
    )

    // ------------------------------------------------------------------------------ runtime policies
    app.get(`${base}/allowlists`, { preHandler: admin }, async (_req, reply) =>
      ok(reply, { 'runtimepolicy names': await repo.listAllowlistNames() }),
    )
    app.get<{ Params: { name: string } }>(
      `${base}/allowlists/:name`,
      { preHandler: admin },
      async (req, reply) => {
        const p = await repo.getAllowlist(req.params.name)
        if (!p) throw new ApiError(404, `Runtime policy ${req.params.name} not found`)
        return ok(reply, { name: p.name, tmp_policy: null, runtime_policy: p.ima_policy })
      },
    )
    for (const method of ['POST', 'PUT'] as const) {
      app.route<{ Params: { name: string }; Body: Record<string, unknown> }>({
        method,
        url: `${base}/allowlists/:name`,
        preHandler: admin,
        handler: async (req, reply) => {
          const name = req.params.name
          const body = req.body
          if (typeof body !== 'object' || body === null || Object.keys(body).length === 0)
            throw new ApiError(400, 'Runtime policy is malformatted: empty body')
          if (typeof body.runtime_policy !== 'string')
            throw new ApiError(400, 'Runtime policy is malformatted: runtime_policy missing')
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
            if (await repo.getAllowlist(name))
              throw new ApiError(409, `Runtime policy with name ${name} already exists`)
            await repo.insertAllowlist({ name, ...fields })
          } else {
            const existing = await repo.getAllowlist(name)
            if (!existing || !(await repo.updateAllowlist(name, fields)))
              throw new ApiError(404, `Runtime policy ${name} not found`)
            service.loop.invalidatePolicy('ima', existing.id)
          }
          return ok(reply, {}, 201)
        },
      })
    }
    app.delete<{ Params: { name: string } }>(
      `${base}/allowlists/:name`,
      { preHandler: admin },
      async (req, reply) => {
        const p = await repo.getAllowlist(req.params.name)
        if (!p) throw new ApiError(404, `Runtime policy ${req.params.name} not found`)
        const user = await repo.agentUsingPolicy('ima', p.id)
        if (user) throw new ApiError(409, `Can't delete allowlist as it's currently in use by agent ${user}`)
        await repo.deleteAllowlist(p.name)
        return reply.code(204).send()
      },
    )

    // ------------------------------------------------------------------------------ measured-boot policies
    app.get(`${base}/mbpolicies`, { preHandler: admin }, async (_req, reply) =>
      ok(reply, { 'mbpolicy names': await repo.listMbPolicyNames() }),
    )
    app.get<{ Params: { name: string } }>(
      `${base}/mbpolicies/:name`,
      { preHandler: admin },
      async (req, reply) => {
        const p = await repo.getMbPolicy(req.params.name)
        if (!p) throw new ApiError(404, `Measured boot policy ${req.params.name} not found`)
        return ok(reply, { name: p.name, mb_policy: p.mb_policy })
      },
    )
    for (const method of ['POST', 'PUT'] as const) {
      app.route<{ Params: { name: string }; Body: Record<string, unknown> }>({
        method,
        url: `${base}/mbpolicies/:name`,
        preHandler: admin,
        handler: async (req, reply) => {
          const name = req.params.name
          const mb = req.body?.mb_policy
          if (typeof mb !== 'string') throw new ApiError(400, 'mb_policy (JSON text) is required')
          parseMb(mb)
          if (method === 'POST') {
            if (await repo.getMbPolicy(name))
              throw new ApiError(409, `Measured boot policy with name ${name} already exists`)
            await repo.insertMbPolicy(name, mb)
          } else {
            const existing = await repo.getMbPolicy(name)
            if (!existing || !(await repo.updateMbPolicy(name, mb)))
              throw new ApiError(409, `Measured boot policy ${name} does not exist`)
            service.loop.invalidatePolicy('mb', existing.id)
          }
          return ok(reply, {}, 201)
        },
      })
    }
    app.delete<{ Params: { name: string } }>(
      `${base}/mbpolicies/:name`,
      { preHandler: admin },
      async (req, reply) => {
        const p = await repo.getMbPolicy(req.params.name)
        if (!p) throw new ApiError(404, `Measured boot policy ${req.params.name} not found`)
        const user = await repo.agentUsingPolicy('mb', p.id)
        if (user) throw new ApiError(409, `Can't delete mb policy as it's currently in use by agent ${user}`)
        await repo.deleteMbPolicy(p.name)
        return reply.code(204).send()
      },
    )

    // ------------------------------------------------------------------------------ on-demand verification (PUBLIC)
    app.get<{ Querystring: Record<string, string | undefined> }>(
      `${base}/verify/identity`,
      async (req, reply) => {
        for (const k of ['agent_uuid', 'quote', 'nonce', 'hash_alg'])
          if (!req.query[k]) throw new ApiError(400, `missing query parameter '${k}'`)
        const q = req.query as Record<string, string>
        const row = await repo.getAgent(q.agent_uuid as string)
        if (!row?.ak_tpm) throw new ApiError(404, 'agent id not found')
        const hashAlg = q.hash_alg as string
        if (!isQuoteHashAlg(hashAlg))
          return ok(reply, { valid: 0, reason: `unsupported hash_alg ${hashAlg}` })
        const r = verifyQuote({
          akPublic: akKeyObject(new Uint8Array(Buffer.from(row.ak_tpm, 'base64'))),
          quote: q.quote as string,
          nonce: q.nonce as string,
          hashAlg,
        })
        if (r.verdict.ok) return ok(reply, { valid: 1 })
        const reason = r.verdict.events.map((e) => String(e.context.message ?? e.eventId)).join('; ')
        return ok(reply, { valid: 0, reason })
      },
    )

    app.post<{ Body: Record<string, unknown> }>(`${base}/verify/evidence`, async (req, reply) => {
      const r = await service.verifyEvidence(req.body)
      return reply.code(r.statusCode).send(r.body)
    })
  }

  collecting = false
  for (const [url, methods] of methodsByUrl) {
    const others = ['GET', 'POST', 'PUT', 'DELETE', 'PATCH'].filter((m) => !methods.has(m))
    if (others.length > 0)
      app.route({ method: others as never, url, handler: async (_req, reply) => reply.code(405).send() })
  }

  return app
}
