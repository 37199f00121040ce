const HEX: string[] = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'))

/** EFI_GUID at `offset` as text: the first three fields are little-endian, the last 8 bytes in order. */
export function guidAt(b: Uint8Array, o: number): string {
  const x = HEX
  return `${x[b[o + 3] as number]}${x[b[o + 2] as number]}${x[b[o + 1] as number]}${x[b[o] as number]}-${
    x[b[o + 5] as number]
  }${x[b[o + 4] as number]}-${x[b[o + 7] as number]}${x[b[o + 6] as number]}-${x[b[o + 8] as number]}${
    x[b[o + 9] as number]
  }-${x[b[o + 10] as number]}${x[b[o + 11] as number]}${x[b[o + 12] as number]}${x[b[o + 13] as number]}${
    x[b[o + 14] as number]
  }${x[b[o + 15] as number]}`
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
