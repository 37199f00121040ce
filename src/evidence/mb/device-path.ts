/**
 * UEFI device paths (UEFI spec §10.3) to the text form libefivar prints, for the nodes seen in boot logs.
 * Unknown nodes print as `Path(type,subtype,hex)`. Never throws: a malformed path ends with `<malformed>`.
 */
import { guidAt, toHex } from './guid.ts'

const hx = (n: number | bigint) => `0x${n.toString(16)}`

function utf16z(b: Buffer, start: number, end: number): string {
  let s = b.toString('utf16le', start, end - ((end - start) % 2))
  const nul = s.indexOf('\0')
  if (nul >= 0) s = s.slice(0, nul)
  return s
}

function nodeText(b: Buffer, o: number, type: number, sub: number, len: number): string {
  const d = o + 4
  const dlen = len - 4
  const has = (n: number) => dlen >= n
  switch (type) {
    case 1:
      if (sub === 1 && has(2)) return `Pci(${hx(b[d + 1] as number)},${hx(b[d] as number)})`
      if (sub === 4 && has(16))
        return `VenHw(${guidAt(b, d)}${dlen > 16 ? `,${toHex(b.subarray(d + 16, o + len))}` : ''})`
      if (sub === 3 && has(1)) return `MemoryMapped(...)`
      break
    case 2:
      if (sub === 1 && has(8)) {
        const hid = b.readUInt32LE(d)
        const uid = b.readUInt32LE(d + 4)
        if (hid === 0x0a0341d0) return `PciRoot(${hx(uid)})`
        if (hid === 0x0a0841d0) return `PcieRoot(${hx(uid)})`
        return `Acpi(${hx(hid)},${hx(uid)})`
      }
      break
    case 3:
      if (sub === 2 && has(4)) return `SCSI(${b.readUInt16LE(d)},${b.readUInt16LE(d + 2)})`
      if (sub === 5 && has(2)) return `USB(${hx(b[d] as number)},${hx(b[d + 1] as number)})`
      if (sub === 11 && has(33)) return `MAC(${toHex(b.subarray(d, d + 6))},${hx(b[d + 32] as number)})`
      if (sub === 12 && has(15)) {
        const ip = (p: number) => `${b[p]}.${b[p + 1]}.${b[p + 2]}.${b[p + 3]}`
        return `IPv4(${ip(d + 4)},${ip(d)})`
      }
      if (sub === 18 && has(6))
        return `Sata(${b.readUInt16LE(d)},${b.readUInt16LE(d + 2)},${b.readUInt16LE(d + 4)})`
      if (sub === 23 && has(12)) {
        const eui = Array.from(b.subarray(d + 4, d + 12), (x) =>
          x.toString(16).padStart(2, '0').toUpperCase(),
        )
        return `NVMe(${hx(b.readUInt32LE(d))},${eui.join('-')})`
      }
      if (sub === 24 && has(0)) return `Uri(${b.toString('latin1', d, o + len)})`
      break
    case 4:
      if (sub === 1 && has(38)) {
        const part = b.readUInt32LE(d)
        const start = b.readBigUInt64LE(d + 4)
        const size = b.readBigUInt64LE(d + 12)
        const fmt = b[d + 36]
        const sigType = b[d + 37]
        const sig = sigType === 2 ? guidAt(b, d + 20) : hx(b.readUInt32LE(d + 20))
        return `HD(${part},${fmt === 2 ? 'GPT' : fmt === 1 ? 'MBR' : hx(fmt ?? 0)},${sig},${hx(start)},${hx(size)})`
      }
      if (sub === 2 && has(24))
        return `CDROM(${hx(b.readUInt32LE(d))},${hx(b.readBigUInt64LE(d + 4))},${hx(b.readBigUInt64LE(d + 12))})`
      if (sub === 3 && has(16)) return `VenMedia(${guidAt(b, d)})`
      if (sub === 4) return `File(${utf16z(b, d, o + len)})`
      if (sub === 6 && has(16)) return `FvFile(${guidAt(b, d)})`
      if (sub === 7 && has(16)) return `FvVol(${guidAt(b, d)})`
      if (sub === 8 && has(20))
        return `Offset(${hx(b.readBigUInt64LE(d + 4))},${hx(b.readBigUInt64LE(d + 12))})`
      break
    case 5:
      if (sub === 1 && has(4)) return `BBS(${hx(b.readUInt16LE(d))},${utf16z(b, d + 4, o + len)})`
      break
  }
  return `Path(${type},${sub},${toHex(b.subarray(d, o + len))})`
}

/** Renders a device path list; instances are separated by `,` as in libefivar. */
export function devicePathToText(path: Uint8Array): string {
  const b = Buffer.from(path.buffer, path.byteOffset, path.byteLength)
  const parts: string[] = []
  let cur: string[] = []
  let o = 0
  while (o + 4 <= b.length) {
    const type = b[o] as number
    const sub = b[o + 1] as number
    const len = b.readUInt16LE(o + 2)
    if (len < 4 || o + len > b.length) {
      cur.push('<malformed>')
      break
    }
    if (type === 0x7f) {
      parts.push(cur.join('/'))
      cur = []
      if (sub === 0xff) return parts.join(',')
    } else cur.push(nodeText(b, o, type, sub, len))
    o += len
  }
  if (cur.length > 0 || parts.length === 0) parts.push(cur.join('/'))
  return parts.join(',')
}

/** True for firmware-internal applications (`FvVol(…)/FvFile(…)`), which the refstate generator skips. */
export function isFirmwareVolumePath(text: string): boolean {
  return /^FvVol\([0-9a-f-]+\)\/FvFile\([0-9a-f-]+\)$/.test(text)
}
