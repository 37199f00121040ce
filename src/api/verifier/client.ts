/**
 * Typed client of the verifier's v2 API (keylime-api.md §3) over HTTPS with the tenant's client certificate.
 * Hostnames are not checked (identity is the CA chain, §0.1). Errors carry the HTTP status and the envelope status.
 */
import { Agent, type Dispatcher, request } from 'undici'
import { KeylimeError } from '../../common/errors.ts'
import type { AgentStatus, EnrollBody, RuntimePolicyBody, VersionResults } from './schemas.ts'

export class VerifierClientError extends KeylimeError {
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
  tls?: { ca: string | string[]; cert: string; key: string }
  timeoutMs?: number
}

export class VerifierClient {
  readonly baseUrl: string
  readonly apiVersion: string
  private readonly dispatcher: Dispatcher
  private readonly timeoutMs: number

  constructor(opts: VerifierClientOptions) {
    this.baseUrl = opts.baseUrl.replace(/\/+$/, '')
    this.apiVersion = opts.apiVersion ?? '2.6'
    this.timeoutMs = opts.timeoutMs ?? 60_000
    this.dispatcher = new Agent({
      connect: opts.tls
        ? {
            ...opts.tls,
            rejectUnauthorized: true,
            checkServerIdentity: () => undefined,
            minVersion: 'TLSv1.2',
          }
        : {},
    })
  }

  close(): Promise<void> {
    return this.dispatcher.close()
  }

  /** Returns the HTTP status and the envelope's results; non-2xx throw unless listed in `accept`. */
  private async call<T>(
    method: 'GET' | 'POST' | 'PUT' | 'DELETE',
    path: string,
    body?: unknown,
    accept: readonly number[] = [],
  ): Promise<{ status: number; results: T }> {
    let res: Dispatcher.ResponseData
    try {
      res = await request(`${this.baseUrl}${path}`, {
        method,
        dispatcher: this.dispatcher,
        headersTimeout: this.timeoutMs,
        bodyTimeout: this.timeoutMs,
        ...(body === undefined
          ? {}
          : { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } }),
      })
    } catch (err) {
      throw new VerifierClientError(`verifier ${this.baseUrl} unreachable: ${(err as Error).message}`, {
        cause: err,
      })
    }
    const text = await res.body.text()
    let parsed: { status?: unknown; results?: unknown; errors?: { detail?: string }[] } | undefined
    try {
      parsed = text ? JSON.parse(text) : undefined
    } catch {
      parsed = undefined
    }
    const status =
      typeof parsed?.status === 'string' ? parsed.status : (parsed?.errors?.[0]?.detail ?? undefined)
    if ((res.statusCode < 200 || res.statusCode > 299) && !accept.includes(res.statusCode))
      throw new VerifierClientError(
        `verifier answered ${res.statusCode} to ${method} ${path}: ${status ?? ''}`,
        {
          httpStatus: res.statusCode,
          ...(status === undefined ? {} : { verifierStatus: status }),
        },
      )
    return { status: res.statusCode, results: parsed?.results as T }
  }

  private v(path: string): string {
    return `/v${this.apiVersion}${path}`
  }

  async version(): Promise<VersionResults> {
    return (await this.call<VersionResults>('GET', '/version')).results
  }

  async addAgent(agentId: string, body: EnrollBody): Promise<void> {
    await this.call('POST', this.v(`/agents/${encodeURIComponent(agentId)}`), body)
  }

  /** null when the verifier does not know the agent. */
  async getAgent(agentId: string): Promise<AgentStatus | null> {
    const r = await this.call<AgentStatus>(
      'GET',
      this.v(`/agents/${encodeURIComponent(agentId)}`),
      undefined,
      [404],
    )
    return r.status === 404 ? null : r.results
  }

  async listAgents(verifierId?: string): Promise<string[]> {
    const q = verifierId === undefined ? '' : `?verifier=${encodeURIComponent(verifierId)}`
    const r = await this.call<{ uuids: string[][] }>('GET', this.v(`/agents${q}`))
    return r.results.uuids.map((u) => u[0] as string)
  }

  async bulkInfo(verifierId?: string): Promise<Record<string, AgentStatus>> {
    const q = verifierId === undefined ? '' : `&verifier=${encodeURIComponent(verifierId)}`
    return (await this.call<Record<string, AgentStatus>>('GET', this.v(`/agents?bulk=1${q}`))).results
  }

  /** 'deleted' (200), 'terminating' (202: poll getAgent until null) or 'not-found'. */
  async deleteAgent(agentId: string): Promise<'deleted' | 'terminating' | 'not-found'> {
    const r = await this.call('DELETE', this.v(`/agents/${encodeURIComponent(agentId)}`), undefined, [404])
    return r.status === 404 ? 'not-found' : r.status === 202 ? 'terminating' : 'deleted'
  }

  async reactivateAgent(agentId: string): Promise<void> {
    await this.call('PUT', this.v(`/agents/${encodeURIComponent(agentId)}/reactivate`))
  }

  async stopAgent(agentId: string): Promise<void> {
    await this.call('PUT', this.v(`/agents/${encodeURIComponent(agentId)}/stop`))
  }

  async putRuntimePolicy(name: string, body: RuntimePolicyBody, update = false): Promise<void> {
    await this.call(update ? 'PUT' : 'POST', this.v(`/allowlists/${encodeURIComponent(name)}`), body)
  }

  async getRuntimePolicy(name: string): Promise<{ name: string; runtime_policy: string | null } | null> {
    const r = await this.call<{ name: string; runtime_policy: string | null }>(
      'GET',
      this.v(`/allowlists/${encodeURIComponent(name)}`),
      undefined,
      [404],
    )
    return r.status === 404 ? null : r.results
  }

  async listRuntimePolicies(): Promise<string[]> {
    return (await this.call<{ 'runtimepolicy names': string[] }>('GET', this.v('/allowlists'))).results[
      'runtimepolicy names'
    ]
  }

  async deleteRuntimePolicy(name: string): Promise<boolean> {
    const r = await this.call('DELETE', this.v(`/allowlists/${encodeURIComponent(name)}`), undefined, [404])
    return r.status !== 404
  }

  async putMbPolicy(name: string, mbPolicyJson: string, update = false): Promise<void> {
    await this.call(update ? 'PUT' : 'POST', this.v(`/mbpolicies/${encodeURIComponent(name)}`), {
      mb_policy: mbPolicyJson,
    })
  }

  async listMbPolicies(): Promise<string[]> {
    return (await this.call<{ 'mbpolicy names': string[] }>('GET', this.v('/mbpolicies'))).results[
      'mbpolicy names'
    ]
  }

  async deleteMbPolicy(name: string): Promise<boolean> {
    const r = await this.call('DELETE', this.v(`/mbpolicies/${encodeURIComponent(name)}`), undefined, [404])
    return r.status !== 404
  }
}
