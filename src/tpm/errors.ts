/**
 * Errors of the TPM library. `src/tpm` imports nothing else of ours, so these mirror the shape of
 * `KeylimeError` (`code`, `statusCode`) without extending it; the API error handler reads those fields.
 */

/** Bytes that are not a valid encoding of the expected TPM structure. Always a 400 when it reaches the API. */
export class TpmFormatError extends Error {
  readonly code = 'ERR_TPM_FORMAT'
  readonly statusCode = 400
  /** Byte offset in the decoded buffer where the problem was found. */
  readonly offset: number
  /** Dotted path of the field being decoded, e.g. `TPMS_ATTEST.clockInfo.safe`. */
  readonly path: string

  constructor(message: string, offset: number, path: string) {
    super(`${path ? `${path}: ` : ''}${message} (at byte ${offset})`)
    this.name = 'TpmFormatError'
    this.offset = offset
    this.path = path
  }
}

/** The transport to the TPM failed (connection refused, closed mid-response, device error, timeout). */
export class TpmTransportError extends Error {
  readonly code = 'ERR_TPM_TRANSPORT'
  readonly statusCode = 503

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause })
    this.name = 'TpmTransportError'
  }
}

/** Misuse of the library (bad argument, unknown transport spec, closed TPM). */
export class TpmUsageError extends Error {
  readonly code = 'ERR_TPM_USAGE'
  readonly statusCode = 500

  constructor(message: string) {
    super(message)
    this.name = 'TpmUsageError'
  }
}
