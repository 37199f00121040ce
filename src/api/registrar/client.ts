/**
 * Typed registrar client for the agent (register/activate over HTTP :8890) and the tenant (list/show/delete over
 * HTTPS :8891 with a client certificate). Errors are `PeerError` with the registrar's status and envelope.
 */
import { type ClientTls, JsonClient, type JsonDispatcher } from '../client.ts'
import { CURRENT_API_VERSION } from '../versions.ts'
import {
  AgentResults,
  EmptyResults,
  ListResults,
  type RegisterBody,
  RegisterResults,
  VersionResults,
} from './schemas.ts'

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
    return (await this.http.request('GET', '/version', { results: VersionResults })).results
  }

  /** `POST /v{v}/agents/:agent_id` (the form the Rust agent uses); returns the b64 credential blob. */
  async register(agentId: string, body: Omit<RegisterBody, 'agent_id'>): Promise<RegisterResults> {
    const res = await this.http.request('POST', this.path(`/agents/${encodeURIComponent(agentId)}`), {
      body,
      results: RegisterResults,
    })
    return res.results
  }

  /** `PUT /v{v}/agents/:agent_id` with the hex auth_tag (upstream deletes the agent on a mismatch). */
  async activate(agentId: string, authTag: string): Promise<void> {
    await this.http.request('PUT', this.path(`/agents/${encodeURIComponent(agentId)}`), {
      body: { auth_tag: authTag },
      results: EmptyResults,
    })
  }

  async list(): Promise<string[]> {
    return (await this.http.request('GET', this.path('/agents'), { results: ListResults })).results.uuids
  }

  async show(agentId: string): Promise<AgentResults> {
    const res = await this.http.request('GET', this.path(`/agents/${encodeURIComponent(agentId)}`), {
      results: AgentResults,
    })
    return res.results
  }

  async delete(agentId: string): Promise<void> {
    await this.http.request('DELETE', this.path(`/agents/${encodeURIComponent(agentId)}`), {
      results: EmptyResults,
    })
  }

  async close(): Promise<void> {
    await this.http.close()
  }
}
