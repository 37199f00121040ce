import { KeylimeError } from '../../common/errors.ts'

/**
 * A binary TCG event log that cannot be decoded. Names the byte offset and the index of the event (0 = the
 * first record, the Spec ID header in a crypto-agile log) where decoding broke.
 */
export class EventLogFormatError extends KeylimeError {
  readonly offset: number
  readonly eventIndex: number

  constructor(reason: string, offset: number, eventIndex: number) {
    super(
      'ERR_EVENTLOG_FORMAT',
      `malformed event log at byte offset ${offset} (event ${eventIndex}): ${reason}`,
      {
        statusCode: 400,
      },
    )
    this.offset = offset
    this.eventIndex = eventIndex
  }
}

/** A measured-boot policy (reference state) that is not usable; `field` names the offending JSON path. */
export class MbPolicyError extends KeylimeError {
  readonly field: string

  constructor(field: string, message: string) {
    super('ERR_MB_POLICY', `measured-boot policy: ${field}: ${message}`, { statusCode: 400 })
    this.field = field
  }
}

/** A reference state cannot be generated from this log (e.g. Secure Boot off without `allowSecureBootOff`). */
export class ReferenceStateError extends KeylimeError {
  constructor(message: string) {
    super('ERR_MB_REFSTATE', message, { statusCode: 400 })
  }
}
