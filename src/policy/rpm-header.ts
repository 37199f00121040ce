/**
 * RPM package headers (lead, signature header, main header), read for the file list: names, modes, digests and IMA
 * signatures. Only the headers are needed, never the payload, so a remote package is read with HTTP range requests;
 * a short buffer says exactly how many bytes it needs.
 */

export class RpmError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'RpmError'
  }
}

/** The buffer ends before the headers do; `needed` is the length that holds them (or the next part of them). */
export class RpmTruncatedError extends RpmError {
  constructor(readonly needed: number) {
    super(`RPM headers need ${needed} bytes`)
    this.name = 'RpmTruncatedError'
  }
}

export interface RpmFile {
  path: string
  /** Lowercase hex; empty for files rpm records no digest for. */
  digest: string
  /** Digest algorithm: sha256, sha1, md5, ... */
  alg: string
  /** IMA signature (hex of the xattr value, type byte first) when the package carries one. */
  imaSignature?: string
  regular: boolean
}

const LEAD_LEN = 96
const LEAD_MAGIC = 0xedabeedb
const HEADER_MAGIC = Buffer.from([0x8e, 0xad, 0xe8, 0x01])
const ENTRY_LEN = 16
/** Far above any real package; a corrupt count must not make us allocate or fetch gigabytes. */
const MAX_HEADER_BYTES = 256 * 1024 * 1024

const TAG = {
  OLDFILENAMES: 1027,
  FILEMODES: 1030,
  FILEDIGESTS: 1035,
  DIRINDEXES: 1116,
  BASENAMES: 1117,
  DIRNAMES: 1118,
  FILEDIGESTALGO: 5011,
  FILESIGNATURES: 5090,
} as const

const TYPE = { INT16: 3, INT32: 4, STRING_ARRAY: 8 } as const

/** OpenPGP hash algorithm ids, as rpm stores FILEDIGESTALGO (md5 when absent). */
const DIGEST_ALGS: Record<number, string> = {
  1: 'md5',
  2: 'sha1',
  8: 'sha256',
  9: 'sha384',
  10: 'sha512',
  11: 'sha224',
}

interface Entry {
  type: number
  offset: number
  count: number
}

interface Header {
  entries: Map<number, Entry>
  store: Buffer
  end: number
}

function need(buf: Buffer, n: number): void {
  if (n > MAX_HEADER_BYTES) throw new RpmError(`RPM header claims ${n} bytes`)
  if (buf.length < n) throw new RpmTruncatedError(n)
}

function readHeader(buf: Buffer, at: number): Header {
  need(buf, at + 16)
  if (!buf.subarray(at, at + 4).equals(HEADER_MAGIC)) throw new RpmError(`no RPM header at offset ${at}`)
  const count = buf.readUInt32BE(at + 8)
  const size = buf.readUInt32BE(at + 12)
  const storeAt = at + 16 + count * ENTRY_LEN
  need(buf, storeAt + size)
  const entries = new Map<number, Entry>()
  for (let i = 0; i < count; i++) {
    const e = at + 16 + i * ENTRY_LEN
    const entry = {
      type: buf.readUInt32BE(e + 4),
      offset: buf.readInt32BE(e + 8),
      count: buf.readUInt32BE(e + 12),
    }
    if (entry.offset < 0 || entry.offset > size)
      throw new RpmError(`RPM header tag ${buf.readUInt32BE(e)} out of range`)
    entries.set(buf.readUInt32BE(e), entry)
  }
  return { entries, store: buf.subarray(storeAt, storeAt + size), end: storeAt + size }
}

function strings(h: Header, tag: number): string[] | undefined {
  const e = h.entries.get(tag)
  if (!e) return undefined
  if (e.type !== TYPE.STRING_ARRAY) throw new RpmError(`RPM tag ${tag} is not a string array`)
  const out: string[] = []
  let pos = e.offset
  for (let i = 0; i < e.count; i++) {
    const nul = h.store.indexOf(0, pos)
    if (nul < 0) throw new RpmError(`RPM tag ${tag} runs past the header`)
    out.push(h.store.toString('utf8', pos, nul))
    pos = nul + 1
  }
  return out
}

function ints(h: Header, tag: number): number[] | undefined {
  const e = h.entries.get(tag)
  if (!e) return undefined
  const width = e.type === TYPE.INT16 ? 2 : e.type === TYPE.INT32 ? 4 : 0
  if (width === 0) throw new RpmError(`RPM tag ${tag} is not an integer`)
  if (e.offset + e.count * width > h.store.length) throw new RpmError(`RPM tag ${tag} runs past the header`)
  const out: number[] = []
  for (let i = 0; i < e.count; i++) {
    const at = e.offset + i * width
    out.push(width === 2 ? h.store.readUInt16BE(at) : h.store.readUInt32BE(at))
  }
  return out
}

/** Files of a package from the first bytes of its file (at least the headers; see RpmTruncatedError). */
export function parseRpmFiles(buf: Buffer): RpmFile[] {
  need(buf, LEAD_LEN)
  if (buf.readUInt32BE(0) !== LEAD_MAGIC) throw new RpmError('not an RPM package (bad lead magic)')
  const signature = readHeader(buf, LEAD_LEN)
  const mainAt = Math.ceil(signature.end / 8) * 8 // the signature header is padded to 8 bytes
  const h = readHeader(buf, mainAt)

  let paths: string[]
  const basenames = strings(h, TAG.BASENAMES)
  if (basenames) {
    const dirnames = strings(h, TAG.DIRNAMES) ?? []
    const dirindexes = ints(h, TAG.DIRINDEXES) ?? []
    paths = basenames.map((b, i) => {
      const d = dirnames[dirindexes[i] ?? -1]
      if (d === undefined) throw new RpmError(`RPM file ${b} has no directory`)
      return d + b
    })
  } else {
    paths = strings(h, TAG.OLDFILENAMES) ?? []
  }
  const modes = ints(h, TAG.FILEMODES) ?? []
  const digests = strings(h, TAG.FILEDIGESTS) ?? []
  const signatures = strings(h, TAG.FILESIGNATURES)
  const algId = ints(h, TAG.FILEDIGESTALGO)?.[0] ?? 1
  const alg = DIGEST_ALGS[algId]
  if (alg === undefined) throw new RpmError(`unknown RPM file digest algorithm ${algId}`)
  return paths.map((path, i) => {
    const file: RpmFile = {
      path,
      digest: (digests[i] ?? '').toLowerCase(),
      alg,
      regular: ((modes[i] ?? 0) & 0o170000) === 0o100000,
    }
    const sig = signatures?.[i]
    if (sig) file.imaSignature = sig.toLowerCase()
    return file
  })
}
