/**
 * Typed client of the pull agent (keylime-api.md §1) for the verifier and the tenant. Over HTTPS it presents a
 * client certificate and checks the agent's certificate against `ca` (usually the agent's self-signed `mtls_cert`
 * from the registrar); hostnames are not checked, identity is the certificate chain only (§0.1).
 */
import type { Static, TSchema } from '@sinclair/typebox'
import { type TypeCheck, TypeCompiler } from '@sinclair/typebox/compiler'
import { Agent, type Dispatcher } from 'undici'
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
  /** `baseUrl` split once: what the dispatcher connects to, and the path every request starts with. */
  private readonly origin: string
  private readonly pathPrefix: string

  constructor(opts: AgentClientOptions) {
    this.keepConnection = opts.keepConnection
    this.maxResponseBytes = opts.maxResponseBytes ?? Number.POSITIVE_INFINITY
    this.budget = opts.responseBudget
    this.baseUrl = opts.baseUrl.replace(/\/+$/, '')
    const base = new URL(this.baseUrl)
    this.origin = base.origin
    this.pathPrefix = base.pathname === '/' ? '' : base.pathname
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
    const res = await this.exchange(method, path, body === undefined ? undefined : JSON.stringify(body))
    let parsed: unknown
    try {
      parsed = res.text.length > 0 ? JSON.parse(res.text) : undefined
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

  /**
   * One request and its whole reply as text, through the dispatcher's own handler interface: the reply's chunks are
   * collected as they arrive, read against the size cap and the shared budget. (undici's `request()` wraps every
   * reply in a stream read through an async iterator, which cost the verifier more CPU per attestation than the
   * HTTP exchange itself.) A failure before the reply starts is "unreachable", one while reading it names that.
   */
  private exchange(
    method: 'GET' | 'POST',
    path: string,
    body: string | undefined,
  ): Promise<{ statusCode: number; text: string }> {
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = []
      let size = 0
      let statusCode = 0
      let started = false
      const budget = this.budget
      const settle = () => {
        if (budget) budget.used -= size
        size = 0
      }
      const handler: Dispatcher.DispatchHandler = {
        // its presence marks this handler as one of the controller interface (undici tells the two apart by it)
        onRequestStart: () => {},
        onResponseStart: (controller, status, headers) => {
          started = true
          statusCode = status
          const declared = Number(headers['content-length'])
          if (declared > this.maxResponseBytes) controller.abort(this.tooLarge(declared))
        },
        onResponseData: (controller, chunk) => {
          if (controller.aborted) return
          if (size + chunk.length > this.maxResponseBytes) {
            controller.abort(this.tooLarge(size + chunk.length))
            return
          }
          if (budget) {
            if (budget.used + chunk.length > budget.limit) {
              controller.abort(
                new AgentClientError(
                  `reply from agent ${this.baseUrl} dropped: the verifier's response buffer budget (${budget.limit} bytes) is in use`,
                  {},
                ),
              )
              return
            }
            budget.used += chunk.length
          }
          size += chunk.length
          chunks.push(chunk)
        },
        onResponseEnd: () => {
          settle()
          resolve({
            statusCode,
            text:
              chunks.length === 1
                ? (chunks[0] as Buffer).toString('utf8')
                : Buffer.concat(chunks).toString('utf8'),
          })
        },
        onResponseError: (_controller, err) => {
          settle()
          if (err instanceof AgentClientError) reject(err)
          else if (!started)
            reject(new AgentClientError(`agent ${this.baseUrl} unreachable: ${err.message}`, { cause: err }))
          else
            reject(
              new AgentClientError(`reading the reply of agent ${this.baseUrl} failed: ${err.message}`, {
                cause: err,
              }),
            )
        },
      }
      try {
        this.dispatcher.dispatch(
          {
            origin: this.origin,
            path: `${this.pathPrefix}${path}`,
            method,
            headersTimeout: this.timeoutMs,
            bodyTimeout: this.timeoutMs,
            ...(this.keepConnection === undefined ? {} : { reset: !this.keepConnection() }),
            ...(body === undefined ? {} : { body, headers: { 'content-type': 'application/json' } }),
          },
          handler,
        )
      } catch (err) {
        reject(
          new AgentClientError(`agent ${this.baseUrl} unreachable: ${(err as Error).message}`, {
            cause: err,
          }),
        )
      }
    })
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
    const query = `nonce=${encodeURIComponent(req.nonce)}&mask=${encodeURIComponent(pcrMaskHex(req.mask))}&partial=${req.partial ? '1' : '0'}&ima_ml_entry=${req.imaMlEntry ?? 0}`
    return this.call('GET', this.v(`/quotes/integrity?${query}`), IntegrityQuoteResults)
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
