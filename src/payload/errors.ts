import { KeylimeError } from '../common/errors.ts'

/** A payload archive that is refused (unsafe path, link, device, too big, zip bomb) or cannot be read. */
export class PayloadArchiveError extends KeylimeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_PAYLOAD_ARCHIVE', message, { statusCode: 400, ...options })
  }
}
