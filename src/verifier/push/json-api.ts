/** JSON:API bodies of the push routes (keylime-api.md §0.3): errors with status, code, detail and source pointer. */
import { KeylimeError } from '../../common/errors.ts'

export const JSON_API_TYPE = 'application/vnd.api+json'

export interface JsonApiErrorItem {
  status: string
  title?: string
  code?: string
  detail: string
  source?: { pointer: string }
}

const TITLES: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  409: 'Conflict',
  422: 'Unprocessable Entity',
  429: 'Too Many Requests',
  503: 'Service Unavailable',
}

/** A push request refused with a JSON:API error body (and `Retry-After` for 429/503). */
export class PushApiError extends KeylimeError {
  readonly items: JsonApiErrorItem[]
  constructor(
    readonly status: number,
    detail: string,
    extra: { code?: string; pointer?: string; retryAfterSeconds?: number; more?: JsonApiErrorItem[] } = {},
  ) {
    super('ERR_PUSH_API', detail, { statusCode: status })
    this.retryAfterSeconds = extra.retryAfterSeconds
    this.items = [
      {
        status: String(status),
        title: TITLES[status] ?? 'Error',
        ...(extra.code ? { code: extra.code } : {}),
        detail,
        ...(extra.pointer ? { source: { pointer: extra.pointer } } : {}),
      },
      ...(extra.more ?? []),
    ]
  }
  readonly retryAfterSeconds: number | undefined
}

/** One invalid field of a request body, found while negotiating (422 with its pointer). */
export function invalidField(pointer: string, detail: string): JsonApiErrorItem {
  return {
    status: '422',
    title: TITLES[422] as string,
    code: 'invalid_resource_data',
    detail,
    source: { pointer },
  }
}

let isoSecond = Number.NaN
let isoPrefix = ''

/**
 * `new Date(ms).toISOString()`, with the text up to the milliseconds kept from the previous call of the same second:
 * each push attestation formats the time about ten times, and `toISOString` is among the costlier steps there.
 */
export function iso(ms: number): string {
  if (!Number.isSafeInteger(ms) || ms < 0) return new Date(ms).toISOString()
  const second = Math.floor(ms / 1000)
  if (second !== isoSecond) {
    const text = new Date(second * 1000).toISOString()
    isoPrefix = text.slice(0, -4) // up to and with the '.' before the milliseconds
    isoSecond = second
  }
  const milli = ms - second * 1000
  return `${isoPrefix}${milli < 10 ? '00' : milli < 100 ? '0' : ''}${milli}Z`
}
