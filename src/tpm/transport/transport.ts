import { TpmTransportError } from '../errors.ts'

/** A way to deliver one TPM command buffer and get its complete response (go-tpm's `transport.TPM`). */
export interface TpmTransport {
  /** Sends a whole command and resolves with the whole response. Never called concurrently by `Tpm`. */
  send(command: Uint8Array): Promise<Uint8Array>
  /** Platform power-on + _TPM_Init where the transport can do it (swtpm control channel); no-op otherwise. */
  powerOn?(): Promise<void>
  close(): Promise<void>
  readonly description: string
}

/** Largest response we accept; TPMs answer well under 4 KiB, and this stops a hostile size field. */
export const MAX_RESPONSE_SIZE = 64 * 1024

/** Response length from a TPM header, validated; undefined while fewer than 10 bytes have arrived. */
export function expectedResponseLength(header: Uint8Array): number | undefined {
  if (header.length < 10) return undefined
  const size =
    ((header[2] ?? 0) << 24) | ((header[3] ?? 0) << 16) | ((header[4] ?? 0) << 8) | (header[5] ?? 0)
  const length = size >>> 0
  if (length < 10 || length > MAX_RESPONSE_SIZE) {
    throw new TpmTransportError(`TPM response header announces an invalid size (${length})`)
  }
  return length
}
