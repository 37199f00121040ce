/**
 * cpio "newc" archives (magic 070701, and 070702 with checksums) as the kernel unpacks them into the initramfs. Read in
 * memory, never extracted: a hostile archive cannot write outside anything, and names are only ever map keys.
 */

export class CpioError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'CpioError'
  }
}

export interface CpioEntry {
  /** Name as stored, without a leading `./` or `/`. */
  name: string
  mode: number
  /** File contents (a view into the archive buffer). */
  data: Buffer
}

const HEADER_LEN = 110
const TRAILER = 'TRAILER!!!'
const S_IFMT = 0o170000
const S_IFREG = 0o100000

export function isCpioAt(buf: Buffer, offset: number): boolean {
  if (offset + 6 > buf.length) return false
  const magic = buf.toString('latin1', offset, offset + 6)
  return magic === '070701' || magic === '070702'
}

/** Headers and data start on 4-byte boundaries of the whole buffer, as the kernel counts them. */
const align4 = (n: number) => Math.ceil(n / 4) * 4

function hexField(buf: Buffer, at: number, what: string): number {
  const text = buf.toString('latin1', at, at + 8)
  if (!/^[0-9a-fA-F]{8}$/.test(text)) throw new CpioError(`bad ${what} field at offset ${at}`)
  return Number.parseInt(text, 16)
}

interface RawEntry extends CpioEntry {
  ino: number
  dev: string
  nlink: number
}

/**
 * One archive starting at `offset`: its entries (hard links resolved: newc stores the data with the last link) and
 * the offset just after its trailer.
 */
export function parseCpioArchive(buf: Buffer, offset = 0): { entries: CpioEntry[]; end: number } {
  const raw: RawEntry[] = []
  let pos = offset
  for (;;) {
    if (!isCpioAt(buf, pos)) throw new CpioError(`no cpio header at offset ${pos}`)
    if (pos + HEADER_LEN > buf.length) throw new CpioError(`truncated cpio header at offset ${pos}`)
    const ino = hexField(buf, pos + 6, 'ino')
    const mode = hexField(buf, pos + 14, 'mode')
    const nlink = hexField(buf, pos + 38, 'nlink')
    const size = hexField(buf, pos + 54, 'filesize')
    const dev = `${hexField(buf, pos + 62, 'devmajor')}:${hexField(buf, pos + 70, 'devminor')}`
    const nameSize = hexField(buf, pos + 94, 'namesize')
    if (nameSize === 0) throw new CpioError(`empty name at offset ${pos}`)
    const nameEnd = pos + HEADER_LEN + nameSize
    if (nameEnd > buf.length) throw new CpioError(`truncated cpio name at offset ${pos}`)
    const name = buf.toString('utf8', pos + HEADER_LEN, nameEnd - 1)
    const dataStart = align4(nameEnd)
    const dataEnd = dataStart + size
    if (dataEnd > buf.length)
      throw new CpioError(`truncated data of ${JSON.stringify(name)} at offset ${pos}`)
    pos = align4(dataEnd)
    if (name === TRAILER) break
    raw.push({
      name: name.replace(/^(\.\/|\/)+/, ''),
      mode,
      data: buf.subarray(dataStart, dataEnd),
      ino,
      dev,
      nlink,
    })
  }
  // Hard links: every link but the last has no data; give each the data of the one that has it.
  const linked = new Map<string, Buffer>()
  for (const e of raw) if (e.nlink > 1 && e.data.length > 0) linked.set(`${e.dev}/${e.ino}`, e.data)
  const entries = raw.map(({ name, mode, data, nlink, dev, ino }) => ({
    name,
    mode,
    data: nlink > 1 && data.length === 0 ? (linked.get(`${dev}/${ino}`) ?? data) : data,
  }))
  return { entries, end: Math.min(pos, buf.length) }
}

/** Offset of the first non-zero byte at or after `pos` (archives are padded with zeros between each other). */
export function skipZeros(buf: Buffer, pos: number): number {
  while (pos < buf.length && buf[pos] === 0) pos++
  return pos
}

/** Every archive concatenated in `buf` (the kernel unpacks them one after the other). */
export function parseCpioArchives(buf: Buffer): CpioEntry[] {
  const out: CpioEntry[] = []
  let pos = skipZeros(buf, 0)
  while (pos < buf.length) {
    const { entries, end } = parseCpioArchive(buf, pos)
    out.push(...entries)
    pos = skipZeros(buf, end)
  }
  return out
}

export const isRegularFile = (e: CpioEntry) => (e.mode & S_IFMT) === S_IFREG
