import { KeylimeError } from '../common/errors.ts'

/** Database failures the caller cannot fix by changing its input: a 5xx on the API. */
export class DbError extends KeylimeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_DB', message, { statusCode: 500, ...options })
  }
}
