/**
 * The one DER fact TPM data needs: how long a definite-length SEQUENCE is, to cut a certificate out of NV padding or
 * out of back-to-back entries in an event log.
 */

/** Length (tag + length + content) of the DER SEQUENCE starting at `offset`, or undefined when there is none. */
export function derSequenceLength(data: Uint8Array, offset = 0): number | undefined {
  if (data.length - offset < 2 || data[offset] !== 0x30) return undefined
  const first = data[offset + 1] as number
  if (first < 0x80) return 2 + first
  const n = first & 0x7f
  if (n === 0 || n > 4 || data.length - offset < 2 + n) return undefined
  let len = 0
  for (let i = 0; i < n; i++) len = len * 256 + (data[offset + 2 + i] as number)
  return 2 + n + len
}
