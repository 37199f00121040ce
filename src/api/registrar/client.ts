/**
 * Typed registrar client for the agent (register/activate over HTTP :8890) and the tenant (list/show/delete over
 * HTTPS :8891 with a client certificate). Errors are `PeerError` with the registrar's status and envelope.
 * Replies are checked with plain functions of the same shapes as the typebox schemas in `schemas.ts` (a test holds
 * the two to the same answers), so the agents, which register through this client, never load typebox.
 */
import { type ClientTls, JsonClient, type JsonDispatcher } from '../client.ts'
import { emptyResultsCheck, objectCheck } from '../reply-check.ts'
import { CURRENT_API_VERSION } from '../versions.ts'
import type { AgentResults, ListResults, RegisterBody, RegisterResults, VersionResults } from './schemas.ts'

/** The registrar's replies, as `VersionResults`, `RegisterResults`, `ListResults` and `AgentResults` declare them. */
export const REGISTRAR_REPLY_CHECKS = {
  version: objectCheck<VersionResults>({ current_version: 'string', supported_versions: 'string[]' }),
  register: objectCheck<RegisterResults>({ blob: 'string' }),
  list: objectCheck<ListResults>({ uuids: 'string[]' }),
  agent: objectCheck<AgentResults>({
    agent_id: 'string',
    aik_tpm: 'string',
    ek_tpm: 'string|null',
    ekcert: 'string|null',
    ek_ca_chain: 'string|null?',
    iak_tpm: 'string|null?',
    idevid_tpm: 'string|null?',
    iak_cert: 'string|null?',
    idevid_cert: 'string|null?',
    mtls_cert: 'string|null',
    ip: 'string|null',
    port: 'integer|null',
    regcount: 'integer',
  }),
  empty: emptyResultsCheck,
}
const REPLY = REGISTRAR_REPLY_CHECKS

export interface RegistrarClientOptions {
  /** `http://127.0.0.1:8890` or `https://127.0.0.1:8891` */
  baseUrl: string
  /** API version used in paths (default 2.6); `getVersion()` tells what the registrar supports. */
  apiVersion?: string
  tls?: ClientTls
  timeoutMs?: number
  /** HTTP client to use (default: undici's, loaded on the first request). */
  dispatcher?: JsonDispatcher
}

export class RegistrarClient {
  readonly apiVersion: string
  private readonly http: JsonClient
  private readonly opts: RegistrarClientOptions

  constructor(opts: RegistrarClientOptions, shared?: JsonClient) {
    this.apiVersion = opts.apiVersion ?? CURRENT_API_VERSION
    this.http =
      shared ??
      new JsonClient({
        baseUrl: opts.baseUrl,
        ...(opts.tls ? { tls: opts.tls } : {}),
        ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
        ...(opts.dispatcher ? { dispatcher: opts.dispatcher } : {}),
      })
    this.opts = opts
  }

  /** The same connection pool speaking another API version (closing either closes both). */
  atVersion(apiVersion: string): RegistrarClient {
    return new RegistrarClient({ ...this.opts, apiVersion }, this.http)
  }

  private path(p: string): string {
    return `/v${this.apiVersion}${p}`
  }

  async getVersion(): Promise<VersionResults> {
    return (await this.http.request('GET', '/version', { results: REPLY.version })).results
  }

  /** `POST /v{v}/agents/:agent_id` (the form the Rust agent uses); returns the b64 credential blob. */
  async register(agentId: string, body: Omit<RegisterBody, 'agent_id'>): Promise<RegisterResults> {
    const res = await this.http.request('POST', this.path(`/agents/${encodeURIComponent(agentId)}`), {
      body,
      results: REPLY.register,
    })
    return res.results
  }

  /** `PUT /v{v}/agents/:agent_id` with the hex auth_tag (upstream deletes the agent on a mismatch). */
  async activate(agentId: string, authTag: string): Promise<void> {
    await this.http.request('PUT', this.path(`/agents/${encodeURIComponent(agentId)}`), {
      body: { auth_tag: authTag },
      results: REPLY.empty,
    })
  }

  async list(): Promise<string[]> {
    return (await this.http.request('GET', this.path('/agents'), { results: REPLY.list })).results.uuids
  }

  async show(agentId: string): Promise<AgentResults> {
    const res = await this.http.request('GET', this.path(`/agents/${encodeURIComponent(agentId)}`), {
      results: REPLY.agent,
    })
    return res.results
  }

  async delete(agentId: string): Promise<void> {
    await this.http.request('DELETE', this.path(`/agents/${encodeURIComponent(agentId)}`), {
      results: REPLY.empty,
    })
  }

  async close(): Promise<void> {
    await this.http.close()
  }
}
