/**
 * The push agent's side of the verifier's v3 API (keylime-api.md §4): JSON:API requests over HTTPS with server
 * authentication only (the agent presents no client certificate; it proves itself with the PoP bearer token).
 * Every answer becomes either the parsed body or a `VerifierAnswerError` that says how the agent should react.
 */
import { type ClientTls, type JsonDispatcher, nodeHttpDispatcher } from '../../api/client.ts'
import { KeylimeError } from '../../common/errors.ts'

export const JSON_API = 'application/vnd.api+json'

/** How the agent reacts to a failed request. */
export type FailureKind =
  /** Unreachable, timed out, 5xx or an unreadable answer: back off and try again. */
  | 'transient'
  /** 429 / 503 with `Retry-After`: wait that long, then try again (not a failure of ours). */
  | 'throttled'
  /** 401: the token is unknown, expired or revoked: authenticate again at once. */
  | 'unauthenticated'
  /** Any other 4xx: the verifier refused this request (e.g. not enrolled, challenge expired). */
  | 'refused'

export class VerifierAnswerError extends KeylimeError {
  readonly kind: FailureKind
  readonly status: number | undefined
  /** Seconds from `Retry-After`, when the verifier sent one. */
  readonly retryAfterSeconds: number | undefined
  /** The JSON:API error `code`, or `detail`, of the first error, when there was one. */
  readonly reason: string | undefined

  constructor(
    message: string,
    o: { kind: FailureKind; status?: number; retryAfterSeconds?: number; reason?: string; cause?: unknown },
  ) {
    super('ERR_PUSH_VERIFIER', message, { cause: o.cause })
    this.kind = o.kind
    this.status = o.status
    this.retryAfterSeconds = o.retryAfterSeconds
    this.reason = o.reason
  }
}

export interface VerifierAnswer {
  status: number
  body: Record<string, unknown>
  location: string | undefined
}

function retryAfter(value: string | string[] | undefined): number | undefined {
  const v = Array.isArray(value) ? value[0] : value
  if (v === undefined) return undefined
  const n = Number(v)
  if (Number.isFinite(n) && n >= 0) return n
  const date = Date.parse(v)
  return Number.isNaN(date) ? undefined : Math.max(0, (date - Date.now()) / 1000)
}

function firstErrorReason(body: unknown): string | undefined {
  const errors = (body as { errors?: unknown } | null)?.errors
  if (!Array.isArray(errors) || errors.length === 0) return undefined
  const e = errors[0] as { code?: unknown; detail?: unknown; title?: unknown }
  for (const v of [e.code, e.detail, e.title]) if (typeof v === 'string' && v !== '') return v
  return undefined
}

export class PushVerifierClient {
  readonly baseUrl: string
  private readonly dispatcher: JsonDispatcher
  private readonly timeoutMs: number

  /** `baseUrl` = `verifier_url` + `/v<api version>`, e.g. `https://verifier:8881/v3.0`. */
  constructor(o: { baseUrl: string; tls: ClientTls; timeoutMs: number }) {
    this.baseUrl = o.baseUrl.replace(/\/+$/, '')
    this.timeoutMs = o.timeoutMs
    this.dispatcher = nodeHttpDispatcher(o.tls, { connections: 2 })
  }

  /** `path` is relative to the versioned base (`/sessions`), or absolute from a `Location` (`/v3.0/agents/...`). */
  async request(
    method: 'POST' | 'PATCH' | 'GET',
    path: string,
    opts: { body?: unknown; token?: string } = {},
  ): Promise<VerifierAnswer> {
    const base = new URL(this.baseUrl)
    const url = path.startsWith('/v')
      ? new URL(path, base.origin)
      : new URL(base.pathname + path, base.origin)
    let status: number
    let text: string
    let headers: Record<string, string | string[] | undefined>
    try {
      const res = await this.dispatcher.request({
        origin: url.origin,
        path: url.pathname + url.search,
        method,
        headers: {
          accept: JSON_API,
          ...(opts.body !== undefined ? { 'content-type': JSON_API } : {}),
          ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}),
        },
        ...(opts.body !== undefined ? { body: JSON.stringify(opts.body) } : {}),
        signal: AbortSignal.timeout(this.timeoutMs),
      })
      status = res.statusCode
      headers = res.headers
      text = await res.body.text()
    } catch (err) {
      throw new VerifierAnswerError(`${method} ${url.pathname}: ${(err as Error).message}`, {
        kind: 'transient',
        cause: err,
      })
    }
    let json: unknown
    try {
      json = text === '' ? {} : JSON.parse(text)
    } catch {
      json = undefined
    }
    if (status >= 200 && status < 300) {
      if (json === undefined || typeof json !== 'object' || json === null || Array.isArray(json)) {
        throw new VerifierAnswerError(`${method} ${url.pathname} answered ${status} without a JSON object`, {
          kind: 'transient',
          status,
        })
      }
      const loc = headers.location
      return {
        status,
        body: json as Record<string, unknown>,
        location: Array.isArray(loc) ? loc[0] : loc,
      }
    }
    const reason = firstErrorReason(json)
    const wait = retryAfter(headers['retry-after'])
    const kind: FailureKind =
      (status === 429 || status === 503) && wait !== undefined
        ? 'throttled'
        : status === 401
          ? 'unauthenticated'
          : status >= 400 && status < 500
            ? 'refused'
            : 'transient'
    throw new VerifierAnswerError(
      `${method} ${url.pathname} answered ${status}${reason ? ` (${reason})` : ''}`,
      {
        kind,
        status,
        ...(wait !== undefined ? { retryAfterSeconds: wait } : {}),
        ...(reason !== undefined ? { reason } : {}),
      },
    )
  }

  async close(): Promise<void> {
    await this.dispatcher.close()
  }
}
