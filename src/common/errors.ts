/**
 * Base of every error Keylime TS raises on purpose. `code` is stable (tests and clients match on it),
 * `statusCode` is the HTTP status a server answers with when the error escapes a request handler.
 * Messages must never contain secrets or private keys.
 */
export class KeylimeError extends Error {
  readonly code: string
  readonly statusCode: number | undefined

  constructor(code: string, message: string, options?: { statusCode?: number; cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause })
    this.name = new.target.name
    this.code = code
    this.statusCode = options?.statusCode
  }
}

/** Malformed input (bad request body, bad evidence encoding): a 400 on the API. */
export class InputFormatError extends KeylimeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_INPUT_FORMAT', message, { statusCode: 400, ...options })
  }
}
