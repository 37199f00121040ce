/**
 * Quote string of the pull API: `"r" + b64(TPMS_ATTEST) + ":" + b64(TPMT_SIGNATURE) + ":" + b64(PCRBLOB)` (spec A.1).
 * Base64 is decoded strictly (standard alphabet, padded) so a corrupted quote is reported, not silently truncated.
 */
import { QuoteFormatError } from './errors.ts'

export interface QuoteParts {
  /** TPMS_ATTEST exactly as signed by the TPM. */
  attest: Uint8Array
  /** TPMT_SIGNATURE. */
  signature: Uint8Array
  /** tpm2-tools PCR blob (see pcr-blob.ts). */
  pcrBlob: Uint8Array
}

/** Generous bound (attest ~ 150 B, signature <= 520 B, PCR blob <= 26 kB) against memory abuse. */
const MAX_QUOTE_CHARS = 64 * 1024

/**
 * Node's decoder skips invalid characters; a canonical round trip (native both ways, far cheaper than a regex on
 * kilobyte strings) rejects anything but standard padded base64.
 */
export function decodeBase64Strict(text: string, what: string): Uint8Array {
  const bytes = Buffer.from(text, 'base64')
  if (text.length % 4 !== 0 || bytes.toString('base64') !== text) {
    throw new QuoteFormatError(`${what} is not valid base64`)
  }
  return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength)
}

export function parseQuoteString(quote: string): QuoteParts {
  if (typeof quote !== 'string') throw new QuoteFormatError('quote must be a string')
  if (quote.length > MAX_QUOTE_CHARS)
    throw new QuoteFormatError(`quote longer than ${MAX_QUOTE_CHARS} characters`)
  if (quote[0] !== 'r') throw new QuoteFormatError("quote must start with 'r'")
  const parts = quote.slice(1).split(':')
  if (parts.length !== 3)
    throw new QuoteFormatError(`quote must have 3 ':'-separated parts, got ${parts.length}`)
  const [attest, signature, pcrBlob] = parts as [string, string, string]
  const decoded = {
    attest: decodeBase64Strict(attest, 'quote TPMS_ATTEST'),
    signature: decodeBase64Strict(signature, 'quote TPMT_SIGNATURE'),
    pcrBlob: decodeBase64Strict(pcrBlob, 'quote PCR blob'),
  }
  if (decoded.attest.length === 0 || decoded.signature.length === 0) {
    throw new QuoteFormatError('quote has an empty TPMS_ATTEST or TPMT_SIGNATURE')
  }
  return decoded
}

export function formatQuoteString(parts: QuoteParts): string {
  const b64 = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('base64')
  return `r${b64(parts.attest)}:${b64(parts.signature)}:${b64(parts.pcrBlob)}`
}
