const HEX: string[] = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'))

/** EFI_GUID at `offset` as text: the first three fields are little-endian, the last 8 bytes in order. */
export function guidAt(b: Uint8Array, offset: number): string {
  const h = (i: number) => HEX[b[offset + i] as number] as string
  return (
    h(3) +
    h(2) +
    h(1) +
    h(0) +
    '-' +
    h(5) +
    h(4) +
    '-' +
    h(7) +
    h(6) +
    '-' +
    h(8) +
    h(9) +
    '-' +
    h(10) +
    h(11) +
    h(12) +
    h(13) +
    h(14) +
    h(15)
  )
}

/**
 * The other spelling of a GUID: tpm2-tools before 5.2 printed the raw byte order, so refstates written then
 * carry `61dfe48b-ca93-d211-…` for `8be4df61-93ca-11d2-…`. Swapping the first three fields converts either way.
 */
export function swappedGuid(guid: string): string {
  const m = /^([0-9a-f]{8})-([0-9a-f]{4})-([0-9a-f]{4})-(.*)$/i.exec(guid)
  if (!m) return guid
  const rev = (s: string) => (s.match(/../g) ?? []).reverse().join('')
  return `${rev(m[1] as string)}-${rev(m[2] as string)}-${rev(m[3] as string)}-${m[4] as string}`.toLowerCase()
}

export function toHex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex')
}
