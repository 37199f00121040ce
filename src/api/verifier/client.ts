/**
 * Typed client of the verifier's v2 API (keylime-api.md §3), the only one in the project: the tenant's verifier
 * port delegates to it. Requests go through the shared JSON client (connection pool, mTLS, hostnames not checked:
 * identity is the CA chain, §0.1) and replies are checked against the verifier's own schemas. Errors carry the
 * HTTP status and the envelope status.
 */
import type { Static, TSchema } from '@sinclair/typebox'
import { KeylimeError } from '../../common/errors.ts'
import { type ClientTls, JsonClient, PeerError } from '../client.ts'
import {
  AgentList,
  AgentStatus,
  BulkAgents,
  type EnrollBody,
  MbPolicyNames,
  MbPolicyShow,
  type RuntimePolicyBody,
  RuntimePolicyNames,
  RuntimePolicyShow,
  VersionResults,
} from './schemas.ts'

export class VerifierClientError extends KeylimeError {
  /** undefined when the verifier could not be reached. */
  readonly httpStatus: number | undefined
  readonly verifierStatus: string | undefined
  constructor(message: string, opts: { httpStatus?: number; verifierStatus?: string; cause?: unknown }) {
    super('ERR_VERIFIER_CLIENT', message, { statusCode: 502, cause: opts.cause })
    this.httpStatus = opts.httpStatus
    this.verifierStatus = opts.verifierStatus
  }
}

export interface VerifierClientOptions {
  /** e.g. `https://127.0.0.1:8881` */
  baseUrl: string
  apiVersion?: string
  tls?: ClientTls
  timeoutMs?: number
}

/** The first `errors[].detail` of a JSON:API error body (the verifier's 403 for non-admin callers uses one). */
function jsonApiDetail(body: unknown): string | undefined {
  const errors = (body as { errors?: unknown } | undefined)?.errors
  const detail = Array.isArray(errors) ? (errors[0] as { detail?: unknown } | undefined)?.detail : undefined
  return typeof detail === 'string' ? detail : undefined
}

type Method = 'GET' | 'POST' | 'PUT' | 'DELETE'

export class VerifierClient {
  readonly baseUrl: string
  readonly apiVersion: string
  private readonly http: JsonClient

  constructor(opts: VerifierClientOptions) {
    this.baseUrl = opts.baseUrl.replace(/\/+$/, '')
    this.apiVersion = opts.apiVersion ?? '2.6'
    this.http = new JsonClient({
      baseUrl: this.baseUrl,
      timeoutMs: opts.timeoutMs ?? 60_000,
      ...(opts.tls ? { tls: opts.tls } : {}),
    })
  }

  close(): Promise<void> {
    return this.http.close()
  }

  /**
   * One request; statuses in `accept` come back as `{ status, results: null }` instead of throwing. A 2xx without
   * an envelope (DELETE answers 204) is a success with null results.
   */
  private async call<S extends TSchema>(
    method: Method,
    path: string,
    req: { body?: unknown; query?: Record<string, string | undefined>; results?: S; accept?: number[] } = {},
  ): Promise<{ status: number; results: Static<S> | null }> {
    try {
      const res = await this.http.request(method, path, {
        ...(req.body === undefined ? {} : { body: req.body }),
        ...(req.query ? { query: req.query } : {}),
        ...(req.results ? { results: req.results } : {}),
      })
      return { status: res.status, results: res.results as Static<S> }
    } catch (err) {
      if (!(err instanceof PeerError)) throw err
      const status = err.status
      if (status !== undefined && req.accept?.includes(status)) return { status, results: null }
      if (status !== undefined && status >= 200 && status < 300 && !req.results)
        return { status, results: null }
      const verifierStatus = err.peerStatus ?? jsonApiDetail(err.body)
      throw new VerifierClientError(err.message, {
        ...(status === undefined ? {} : { httpStatus: status }),
        ...(verifierStatus === undefined ? {} : { verifierStatus }),
        cause: err,
      })
    }
  }

  private v(path: string): string {
    return `/v${this.apiVersion}${path}`
  }

  private agent(agentId: string, tail = ''): string {
    return this.v(`/agents/${encodeURIComponent(agentId)}${tail}`)
  }

  async version(): Promise<VersionResults> {
    return (await this.call('GET', '/version', { results: VersionResults })).results as VersionResults
  }

  /** A 409 (already enrolled) surfaces as `VerifierClientError` with `httpStatus` 409. */
  async addAgent(agentId: string, body: EnrollBody): Promise<void> {
    await this.call('POST', this.agent(agentId), { body })
  }

  /** null when the verifier does not know the agent. */
  async getAgent(agentId: string): Promise<AgentStatus | null> {
    return (await this.call('GET', this.agent(agentId), { results: AgentStatus, accept: [404] })).results
  }

  async listAgents(verifierId?: string): Promise<string[]> {
    const r = await this.call('GET', this.v('/agents/'), {
      query: { verifier: verifierId },
      results: AgentList,
    })
    return (r.results?.uuids ?? []).map((row) => row[0] as string)
  }

  async bulkInfo(verifierId?: string): Promise<Record<string, AgentStatus>> {
    const r = await this.call('GET', this.v('/agents/'), {
      query: { bulk: 'True', verifier: verifierId },
      results: BulkAgents,
    })
    return r.results ?? {}
  }

  /** 'deleted' (200), 'terminating' (202: poll getAgent until null) or 'not-found'. */
  async deleteAgent(agentId: string): Promise<'deleted' | 'terminating' | 'not-found'> {
    const r = await this.call('DELETE', this.agent(agentId), { accept: [404] })
    return r.status === 404 ? 'not-found' : r.status === 202 ? 'terminating' : 'deleted'
  }

  async reactivateAgent(agentId: string): Promise<void> {
    await this.call('PUT', this.agent(agentId, '/reactivate'), { body: {} })
  }

  async stopAgent(agentId: string): Promise<void> {
    await this.call('PUT', this.agent(agentId, '/stop'), { body: {} })
  }

  async putRuntimePolicy(name: string, body: RuntimePolicyBody, update = false): Promise<void> {
    await this.call(update ? 'PUT' : 'POST', this.v(`/allowlists/${encodeURIComponent(name)}`), { body })
  }

  async getRuntimePolicy(name: string): Promise<Static<typeof RuntimePolicyShow> | null> {
    const path = this.v(`/allowlists/${encodeURIComponent(name)}`)
    return (await this.call('GET', path, { results: RuntimePolicyShow, accept: [404] })).results
  }

  async listRuntimePolicies(): Promise<string[]> {
    const r = await this.call('GET', this.v('/allowlists/'), { results: RuntimePolicyNames })
    return r.results?.['runtimepolicy names'] ?? []
  }

  /** false when there was no such policy. */
  async deleteRuntimePolicy(name: string): Promise<boolean> {
    const r = await this.call('DELETE', this.v(`/allowlists/${encodeURIComponent(name)}`), { accept: [404] })
    return r.status !== 404
  }

  async putMbPolicy(name: string, mbPolicyJson: string | null, update = false): Promise<void> {
    await this.call(update ? 'PUT' : 'POST', this.v(`/mbpolicies/${encodeURIComponent(name)}`), {
      body: { mb_policy: mbPolicyJson },
    })
  }

  async getMbPolicy(name: string): Promise<Static<typeof MbPolicyShow> | null> {
    const path = this.v(`/mbpolicies/${encodeURIComponent(name)}`)
    return (await this.call('GET', path, { results: MbPolicyShow, accept: [404] })).results
  }

  async listMbPolicies(): Promise<string[]> {
    const r = await this.call('GET', this.v('/mbpolicies/'), { results: MbPolicyNames })
    return r.results?.['mbpolicy names'] ?? []
  }

  /** false when there was no such policy. */
  async deleteMbPolicy(name: string): Promise<boolean> {
    const r = await this.call('DELETE', this.v(`/mbpolicies/${encodeURIComponent(name)}`), { accept: [404] })
    return r.status !== 404
  }
}
