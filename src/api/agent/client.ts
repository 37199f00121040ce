/**
 * Typed client of the pull agent (keylime-api.md §1) for the verifier and the tenant. Over HTTPS it presents a
 * client certificate and checks the agent's certificate against `ca` (usually the agent's self-signed `mtls_cert`
 * from the registrar); hostnames are not checked, identity is the certificate chain only (§0.1).
 */
import type { Static, TSchema } from '@sinclair/typebox'
import { type TypeCheck, TypeCompiler } from '@sinclair/typebox/compiler'
import { Agent, type Dispatcher, request } from 'undici'
import { KeylimeError } from '../../common/errors.ts'
import {
  AgentInfoResults,
  AgentVersionResults,
  IdentityQuoteResults,
  IntegrityQuoteResults,
  PubkeyResults,
  type RevocationBody,
  type UkeyBody,
  VerifyResults,
} from './schemas.ts'

export class AgentClientError extends KeylimeError {
  /** HTTP status from the agent, or undefined when the agent was unreachable or replied garbage. */
  readonly httpStatus: number | undefined
  /** The envelope `status` text when the agent sent one. */
  readonly agentStatus: string | undefined

  constructor(
    message: string,
    opts: { httpStatus?: number; agentStatus?: string; cause?: unknown; code?: string },
  ) {
    super(opts.code ?? 'ERR_AGENT_CLIENT', message, { statusCode: 502, cause: opts.cause })
    this.httpStatus = opts.httpStatus
    this.agentStatus = opts.agentStatus
  }

  /** The reply exceeded the caller's size cap (`maxResponseBytes`): the agent's fault, not a network failure. */
  get isTooLarge(): boolean {
    return this.code === 'ERR_AGENT_RESPONSE_TOO_LARGE'
  }

  /** True when the agent rejected the URL's API version (the caller should renegotiate, §0.4). */
  get isVersionNotSupported(): boolean {
    return this.httpStatus === 400 && (this.agentStatus ?? '').includes('API version not supported')
  }
}

export interface AgentClientTls {
  /** PEM(s) the agent's server certificate must chain to. */
  ca: string | string[]
  cert: string
  key: string
}

export interface AgentClientOptions {
  /** e.g. `https://127.0.0.1:9002` */
  baseUrl: string
  apiVersion: string
  tls?: AgentClientTls
  timeoutMs?: number
  /** Reuse a dispatcher (connection pool) across clients; the client then does not close it. */
  dispatcher?: Dispatcher
  /** Largest reply body read; a longer one is cut off and fails with `isTooLarge`. Default: unlimited. */
  maxResponseBytes?: number
  /**
   * Bytes buffered at once by every client sharing this object (a verifier's whole fleet); a reply that would push
   * it over `limit` is dropped as a transient failure, so many large replies at once cannot exhaust memory.
   */
  responseBudget?: ResponseBudget
  /** Asked before each request: false closes the connection after the reply (the verifier's connection policy). */
  keepConnection?: () => boolean
}

export interface ResponseBudget {
  limit: number
  used: number
}

export interface IntegrityQuoteRequest {
  nonce: string
  /** PCR mask as hex (`0x` optional) or a list of PCR indexes. */
  mask: string | number[]
  /** true -> `partial=1` (omit pubkey). */
  partial: boolean
  imaMlEntry?: number
}

const compiled = new Map<TSchema, TypeCheck<TSchema>>()
function checker<T extends TSchema>(schema: T): TypeCheck<T> {
  let c = compiled.get(schema)
  if (!c) {
    c = TypeCompiler.Compile(schema)
    compiled.set(schema, c)
  }
  return c as TypeCheck<T>
}

export function pcrMaskHex(mask: string | number[]): string {
  if (typeof mask === 'string') return mask
  let bits = 0n
  for (const pcr of mask) bits |= 1n << BigInt(pcr)
  return `0x${bits.toString(16)}`
}

export class AgentClient {
  readonly baseUrl: string
  apiVersion: string
  private readonly dispatcher: Dispatcher
  private readonly ownsDispatcher: boolean
  private readonly timeoutMs: number
  private readonly maxResponseBytes: number
  private readonly budget: ResponseBudget | undefined
  private readonly keepConnection: (() => boolean) | undefined

  constructor(opts: AgentClientOptions) {
    this.keepConnection = opts.keepConnection
    this.maxResponseBytes = opts.maxResponseBytes ?? Number.POSITIVE_INFINITY
    this.budget = opts.responseBudget
    this.baseUrl = opts.baseUrl.replace(/\/+$/, '')
    this.apiVersion = opts.apiVersion
    this.timeoutMs = opts.timeoutMs ?? 30_000
    this.ownsDispatcher = opts.dispatcher === undefined
    this.dispatcher =
      opts.dispatcher ??
      new Agent({
        connect: opts.tls
          ? {
              ca: opts.tls.ca,
              cert: opts.tls.cert,
              key: opts.tls.key,
              rejectUnauthorized: true,
              checkServerIdentity: () => undefined,
              minVersion: 'TLSv1.2',
            }
          : {},
        connections: 4,
      })
  }

  async close(): Promise<void> {
    if (this.ownsDispatcher) await this.dispatcher.close()
  }

  private async call<T extends TSchema>(
    method: 'GET' | 'POST',
    path: string,
    schema: T | null,
    body?: unknown,
  ): Promise<Static<T>> {
    let res: Dispatcher.ResponseData
    try {
      res = await request(`${this.baseUrl}${path}`, {
        method,
        dispatcher: this.dispatcher,
        headersTimeout: this.timeoutMs,
        bodyTimeout: this.timeoutMs,
        ...(this.keepConnection === undefined ? {} : { reset: !this.keepConnection() }),
        ...(body === undefined
          ? {}
          : { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } }),
      })
    } catch (err) {
      throw new AgentClientError(`agent ${this.baseUrl} unreachable: ${(err as Error).message}`, {
        cause: err,
      })
    }
    const text = await this.readBody(res)
    let parsed: unknown
    try {
      parsed = text.length > 0 ? JSON.parse(text) : undefined
    } catch (err) {
      throw new AgentClientError(`agent replied non-JSON (HTTP ${res.statusCode})`, {
        httpStatus: res.statusCode,
        cause: err,
      })
    }
    const env = parsed as { code?: unknown; status?: unknown; results?: unknown } | undefined
    const agentStatus = typeof env?.status === 'string' ? env.status : undefined
    if (res.statusCode !== 200) {
      throw new AgentClientError(`agent answered ${res.statusCode}: ${agentStatus ?? '(no status)'}`, {
        httpStatus: res.statusCode,
        ...(agentStatus === undefined ? {} : { agentStatus }),
      })
    }
    if (schema === null) return undefined as never
    const results = env?.results
    if (!checker(schema).Check(results)) {
      throw new AgentClientError(`agent reply to ${method} ${path} does not match the expected schema`, {
        httpStatus: res.statusCode,
      })
    }
    return results as never
  }

  /** The reply body as text, read chunk by chunk against the size cap and the shared budget. */
  private async readBody(res: Dispatcher.ResponseData): Promise<string> {
    const declared = Number(res.headers['content-length'])
    const chunks: Buffer[] = []
    let size = 0
    try {
      if (declared > this.maxResponseBytes) throw this.tooLarge(declared)
      for await (const chunk of res.body as AsyncIterable<Buffer>) {
        size += chunk.length
        if (size > this.maxResponseBytes) throw this.tooLarge(size)
        if (this.budget) {
          if (this.budget.used + chunk.length > this.budget.limit)
            throw new AgentClientError(
              `reply from agent ${this.baseUrl} dropped: the verifier's response buffer budget (${this.budget.limit} bytes) is in use`,
              {},
            )
          this.budget.used += chunk.length
        }
        chunks.push(chunk)
      }
    } catch (err) {
      res.body.destroy()
      if (err instanceof AgentClientError) throw err
      throw new AgentClientError(
        `reading the reply of agent ${this.baseUrl} failed: ${(err as Error).message}`,
        {
          cause: err,
        },
      )
    } finally {
      if (this.budget) for (const c of chunks) this.budget.used -= c.length
    }
    return chunks.length === 1
      ? (chunks[0] as Buffer).toString('utf8')
      : Buffer.concat(chunks).toString('utf8')
  }

  private tooLarge(size: number): AgentClientError {
    return new AgentClientError(
      `reply from agent ${this.baseUrl} is larger than ${this.maxResponseBytes} bytes (${size} read)`,
      { code: 'ERR_AGENT_RESPONSE_TOO_LARGE' },
    )
  }

  private v(path: string): string {
    return `/v${this.apiVersion}${path}`
  }

  getVersion(): Promise<AgentVersionResults> {
    return this.call('GET', '/version', AgentVersionResults)
  }

  getInfo(): Promise<AgentInfoResults> {
    return this.call('GET', this.v('/agent/info'), AgentInfoResults)
  }

  getPubkey(): Promise<PubkeyResults> {
    return this.call('GET', this.v('/keys/pubkey'), PubkeyResults)
  }

  identityQuote(nonce: string): Promise<IdentityQuoteResults> {
    return this.call(
      'GET',
      this.v(`/quotes/identity?nonce=${encodeURIComponent(nonce)}`),
      IdentityQuoteResults,
    )
  }

  integrityQuote(req: IntegrityQuoteRequest): Promise<IntegrityQuoteResults> {
    const q = new URLSearchParams({
      nonce: req.nonce,
      mask: pcrMaskHex(req.mask),
      partial: req.partial ? '1' : '0',
      ima_ml_entry: String(req.imaMlEntry ?? 0),
    })
    return this.call('GET', this.v(`/quotes/integrity?${q.toString()}`), IntegrityQuoteResults)
  }

  async postUkey(body: UkeyBody): Promise<void> {
    await this.call('POST', this.v('/keys/ukey'), null, body)
  }

  async postVkey(encryptedKeyB64: string): Promise<void> {
    await this.call('POST', this.v('/keys/vkey'), null, { encrypted_key: encryptedKeyB64 })
  }

  async verify(challenge: string): Promise<VerifyResults> {
    return this.call('GET', this.v(`/keys/verify?challenge=${encodeURIComponent(challenge)}`), VerifyResults)
  }

  async postRevocation(body: RevocationBody): Promise<void> {
    await this.call('POST', this.v('/notifications/revocation'), null, body)
  }
}

/** Versions an agent reports (old agents send only `supported_version`). */
export function agentSupportedVersions(v: AgentVersionResults): string[] {
  return v.supported_versions && v.supported_versions.length > 0
    ? v.supported_versions
    : [v.supported_version]
}
