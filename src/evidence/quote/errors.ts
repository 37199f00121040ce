import { KeylimeError } from '../../common/errors.ts'

/** Malformed quote evidence (quote string, PCR blob, attest/signature bytes, tpm_policy JSON): a 400 on the API. */
export class QuoteFormatError extends KeylimeError {
  /** Byte offset in the structure being decoded, when known. */
  readonly offset: number | undefined

  constructor(message: string, options?: { offset?: number; cause?: unknown }) {
    super(
      'ERR_QUOTE_FORMAT',
      options?.offset === undefined ? message : `${message} (at byte ${options.offset})`,
      {
        statusCode: 400,
        cause: options?.cause,
      },
    )
    this.offset = options?.offset
  }
}

/** A tpm_policy (static PCR policy) that is not acceptable; a 400 on the API. */
export class TpmPolicyError extends KeylimeError {
  constructor(message: string) {
    super('ERR_TPM_POLICY', message, { statusCode: 400 })
  }
}
