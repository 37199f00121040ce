import { KeylimeError } from '../../common/errors.ts'

/** A measurement list (or one line of it) that is not a valid IMA entry. `line` is 1-based, `offset` a byte offset. */
export class ImaParseError extends KeylimeError {
  readonly line: number | undefined
  readonly offset: number | undefined

  constructor(message: string, where: { line?: number; offset?: number } = {}) {
    const at =
      where.line !== undefined
        ? `line ${where.line}: `
        : where.offset !== undefined
          ? `offset ${where.offset}: `
          : ''
    super('ERR_IMA_PARSE', `${at}${message}`, { statusCode: 400 })
    this.line = where.line
    this.offset = where.offset
  }
}

/** A runtime policy that fails validation; `field` names the offending JSON path (e.g. `digests["/bin/ls"][0]`). */
export class RuntimePolicyError extends KeylimeError {
  readonly field: string

  constructor(field: string, message: string, options?: { cause?: unknown }) {
    super('ERR_RUNTIME_POLICY', `${field}: ${message}`, { statusCode: 400, ...options })
    this.field = field
  }
}

/** A DSSE envelope that is malformed or whose signature does not verify. */
export class PolicySignatureError extends KeylimeError {
  constructor(message: string, options?: { cause?: unknown; statusCode?: number }) {
    super('ERR_POLICY_SIGNATURE', message, { statusCode: options?.statusCode ?? 401, cause: options?.cause })
  }
}
