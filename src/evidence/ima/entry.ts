/**
 * IMA measurement-list entries: one decoder per list format (ASCII and binary `*_runtime_measurements`), both
 * producing `ImaEntry` with the exact template-data bytes the kernel hashed, so replay never re-derives them.
 */
import { ImaParseError } from './errors.ts'
import { digestWith, KERNEL_HASHES, PCR_BANKS, type PcrBank } from './hash-algs.ts'

export type ImaTemplateName = 'ima' | 'ima-ng' | 'ima-sig' | 'ima-buf' | 'ima-modsig'

export interface ImaEntry {
  pcr: number
  /** Template-hash column as logged (sha1 in classic lists, the bank's hash in per-bank lists). */
  templateHash: Buffer
  templateName: ImaTemplateName
  /** Bytes the kernel hashed: `ima` = digest ‖ name padded to 256; others = each field as `u32le len ‖ data`. */
  templateData: Buffer
  /** ToMToU / open-writers violation: all-zero template hash, extended as all-0xFF. */
  violation: boolean
  /** `d-ng` algorithm as logged (`sha256`, `sm3`, …); `sha1` or `md5` for the legacy `ima` template. */
  digestAlg: string
  digest: Buffer
  /** Lowercase hex of `digest`: the policy compares this string. */
  digestHex: string
  /** File path, or buffer / keyring name for ima-buf. */
  name: string
  /** `sig` field (security.ima xattr) of ima-sig / ima-modsig; null when empty. */
  signature: Buffer | null
  /** `buf` field of ima-buf. */
  buffer: Buffer | null
}

const TEMPLATE_FIELD_COUNT: Record<ImaTemplateName, number> = {
  ima: 2,
  'ima-ng': 2,
  'ima-sig': 3,
  'ima-buf': 3,
  'ima-modsig': 5,
}

const IMA_NAME_FIELD_SIZE = 256
const MAX_FIELD_BYTES = 64 * 1024 * 1024

function isTemplateName(name: string): name is ImaTemplateName {
  return Object.hasOwn(TEMPLATE_FIELD_COUNT, name)
}

function decodeHex(hex: string, what: string, line: number | undefined): Buffer {
  const bytes = Buffer.from(hex, 'hex')
  if (bytes.length * 2 !== hex.length) throw new ImaParseError(`${what} is not hex: ${clip(hex)}`, { line })
  return bytes
}

function clip(text: string): string {
  return text.length > 80 ? `${text.slice(0, 77)}...` : text
}

function isAllZero(bytes: Uint8Array): boolean {
  for (let i = 0; i < bytes.length; i++) if (bytes[i] !== 0) return false
  return true
}

interface DigestField {
  alg: string
  digest: Buffer
  /** `alg:\0digest` as stored in the template data. */
  data: Buffer
}

/** ASCII `<alg>:<hex>` (d-ng). */
function parseDigestNg(text: string, line: number | undefined): DigestField {
  const colon = text.lastIndexOf(':')
  if (colon <= 0) throw new ImaParseError(`digest field has no algorithm prefix: ${clip(text)}`, { line })
  const alg = text.slice(0, colon)
  const digest = decodeHex(text.slice(colon + 1), 'digest', line)
  const known = KERNEL_HASHES[alg]
  if (known !== undefined && known.size !== digest.length && !isAllZero(digest)) {
    throw new ImaParseError(`${alg} digest has ${digest.length} bytes, expected ${known.size}`, { line })
  }
  const data = Buffer.allocUnsafe(colon + 2 + digest.length)
  data.write(text.slice(0, colon + 1), 0, 'latin1')
  data[colon + 1] = 0
  digest.copy(data, colon + 2)
  return { alg, digest, data }
}

/** Concatenates `u32le(len) ‖ data` for each field. */
function packFields(fields: readonly Uint8Array[]): Buffer {
  let size = 0
  for (const f of fields) size += 4 + f.length
  const out = Buffer.allocUnsafe(size)
  let off = 0
  for (const f of fields) {
    out.writeUInt32LE(f.length, off)
    out.set(f, off + 4)
    off += 4 + f.length
  }
  return out
}

function nulTerminated(text: string): Buffer {
  const len = Buffer.byteLength(text, 'utf8')
  const out = Buffer.allocUnsafe(len + 1)
  out.write(text, 0, 'utf8')
  out[len] = 0
  return out
}

function legacyImaTemplateData(digest: Buffer, name: string, line: number | undefined): Buffer {
  const nameLen = Buffer.byteLength(name, 'utf8')
  if (nameLen >= IMA_NAME_FIELD_SIZE)
    throw new ImaParseError('ima template name longer than 255 bytes', { line })
  const out = Buffer.alloc(20 + IMA_NAME_FIELD_SIZE)
  digest.copy(out, 0, 0, Math.min(20, digest.length))
  out.write(name, 20, 'utf8')
  return out
}

/** Splits `text` on the first `count - 1` single spaces (Python `split(' ', count - 1)`); null if fewer parts. */
function splitFirst(text: string, count: number): string[] | null {
  const parts: string[] = []
  let start = 0
  for (let i = 0; i < count - 1; i++) {
    const sp = text.indexOf(' ', start)
    if (sp < 0) return null
    parts.push(text.slice(start, sp))
    start = sp + 1
  }
  parts.push(text.slice(start))
  return parts
}

/**
 * Parses one ASCII line (without its `\n`). Throws `ImaParseError` for anything that is not a valid entry of a
 * supported template; an ima-sig / ima-buf line without the separator before an empty last field is invalid
 * (the kernel always writes it).
 */
export function parseImaLine(line: string, lineNumber?: number): ImaEntry {
  const s1 = line.indexOf(' ')
  const s2 = s1 < 0 ? -1 : line.indexOf(' ', s1 + 1)
  const s3 = s2 < 0 ? -1 : line.indexOf(' ', s2 + 1)
  if (s3 < 0)
    throw new ImaParseError(`not an IMA entry (expected "<pcr> <hash> <template> <fields>"): ${clip(line)}`, {
      line: lineNumber,
    })
  const pcr =
    s1 === 2 && line.charCodeAt(0) === 49 && line.charCodeAt(1) === 48
      ? 10
      : parsePcrIndex(line.slice(0, s1), lineNumber)
  const templateHash = decodeHex(line.slice(s1 + 1, s2), 'template hash', lineNumber)
  if (templateHash.length < 16) throw new ImaParseError('template hash too short', { line: lineNumber })
  const templateName = line.slice(s2 + 1, s3)
  if (!isTemplateName(templateName)) {
    throw new ImaParseError(`unsupported template: ${clip(templateName)}`, { line: lineNumber })
  }
  const parts = splitFirst(line.slice(s3 + 1), TEMPLATE_FIELD_COUNT[templateName])
  if (parts === null) {
    throw new ImaParseError(`${templateName} entry needs ${TEMPLATE_FIELD_COUNT[templateName]} fields`, {
      line: lineNumber,
    })
  }
  const violation = isAllZero(templateHash)
  const digestText = parts[0] as string
  const name = parts[1] as string
  if (name.length === 0) throw new ImaParseError('empty file name', { line: lineNumber })

  if (templateName === 'ima') {
    const digest = decodeHex(digestText, 'digest', lineNumber)
    if (digest.length !== 20 && digest.length !== 16)
      throw new ImaParseError('ima digest must be 20 bytes', { line: lineNumber })
    return {
      pcr,
      templateHash,
      templateName,
      templateData: legacyImaTemplateData(digest, name, lineNumber),
      violation,
      digestAlg: digest.length === 16 ? 'md5' : 'sha1',
      digest,
      digestHex: digestText.toLowerCase(),
      name,
      signature: null,
      buffer: null,
    }
  }

  if (templateName === 'ima-ng')
    return parseImaNgFields(pcr, templateHash, violation, digestText, name, lineNumber)
  const d = parseDigestNg(digestText, lineNumber)
  const nameData = nulTerminated(name)
  let signature: Buffer | null = null
  let buffer: Buffer | null = null
  let templateData: Buffer
  if (templateName === 'ima-sig') {
    const sig = decodeHex(parts[2] as string, 'signature', lineNumber)
    signature = sig.length > 0 ? sig : null
    templateData = packFields([d.data, nameData, sig])
  } else if (templateName === 'ima-buf') {
    buffer = decodeHex(parts[2] as string, 'buffer', lineNumber)
    templateData = packFields([d.data, nameData, buffer])
  } else {
    const sig = decodeHex(parts[2] as string, 'signature', lineNumber)
    signature = sig.length > 0 ? sig : null
    const dModsigText = parts[3] as string
    const dModsig = dModsigText === '' ? Buffer.alloc(0) : parseDigestNg(dModsigText, lineNumber).data
    const modsig = decodeHex(parts[4] as string, 'modsig', lineNumber)
    templateData = packFields([d.data, nameData, sig, dModsig, modsig])
  }
  return {
    pcr,
    templateHash,
    templateName,
    templateData,
    violation,
    digestAlg: d.alg,
    digest: d.digest,
    digestHex: d.digest.toString('hex'),
    name,
    signature,
    buffer,
  }
}

function parsePcrIndex(text: string, line: number | undefined): number {
  if (!/^[0-9]{1,2}$/.test(text) || Number(text) > 23)
    throw new ImaParseError(`bad PCR index: ${clip(text)}`, { line })
  return Number(text)
}

/** ima-ng hot path: the template data is written in one allocation and the digest is a view into it. */
function parseImaNgFields(
  pcr: number,
  templateHash: Buffer,
  violation: boolean,
  digestText: string,
  name: string,
  lineNumber: number | undefined,
): ImaEntry {
  const colon = digestText.lastIndexOf(':')
  if (colon <= 0)
    throw new ImaParseError(`digest field has no algorithm prefix: ${clip(digestText)}`, { line: lineNumber })
  const hexLen = digestText.length - colon - 1
  if (hexLen % 2 !== 0)
    throw new ImaParseError(`digest is not hex: ${clip(digestText)}`, { line: lineNumber })
  const digestLen = hexLen / 2
  const dLen = colon + 2 + digestLen
  const nameLen = Buffer.byteLength(name, 'utf8')
  const data = Buffer.allocUnsafe(8 + dLen + nameLen + 1)
  data.writeUInt32LE(dLen, 0)
  data.write(digestText, 4, colon + 1, 'latin1')
  data[4 + colon + 1] = 0
  const digestStart = 4 + colon + 2
  if (data.write(digestText.slice(colon + 1), digestStart, 'hex') !== digestLen) {
    throw new ImaParseError(`digest is not hex: ${clip(digestText)}`, { line: lineNumber })
  }
  const alg = digestText.slice(0, colon)
  const digest = data.subarray(digestStart, digestStart + digestLen)
  const known = KERNEL_HASHES[alg]
  if (known !== undefined && known.size !== digestLen && !isAllZero(digest)) {
    throw new ImaParseError(`${alg} digest has ${digestLen} bytes, expected ${known.size}`, {
      line: lineNumber,
    })
  }
  const nameAt = 4 + dLen
  data.writeUInt32LE(nameLen + 1, nameAt)
  data.write(name, nameAt + 4, 'utf8')
  data[nameAt + 4 + nameLen] = 0
  return {
    pcr,
    templateHash,
    templateName: 'ima-ng',
    templateData: data,
    violation,
    digestAlg: alg,
    digest,
    digestHex: digestText.slice(colon + 1).toLowerCase(),
    name,
    signature: null,
    buffer: null,
  }
}

/** One line of an ASCII list: an entry, or the parse error for that line. `lineNumber` is 1-based. */
export type ImaLineResult =
  | { lineNumber: number; text: string; entry: ImaEntry; error?: undefined }
  | { lineNumber: number; text: string; entry?: undefined; error: ImaParseError }

/** Lines of an ASCII list: split on `\n` only, a trailing empty line dropped (empty lines are kept as gaps). */
export function splitImaLines(text: string): string[] {
  const lines = text.split('\n')
  if (lines.length > 0 && lines[lines.length - 1] === '') lines.pop()
  return lines
}

/** Parses every line of an ASCII list; `strict` throws the first error instead of reporting it per line. */
export function parseAsciiImaList(text: string, options: { strict?: boolean } = {}): ImaLineResult[] {
  const out: ImaLineResult[] = []
  const lines = splitImaLines(text)
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] as string
    if (line === '') continue
    try {
      out.push({ lineNumber: i + 1, text: line, entry: parseImaLine(line, i + 1) })
    } catch (err) {
      if (!(err instanceof ImaParseError) || options.strict) throw err
      out.push({ lineNumber: i + 1, text: line, error: err })
    }
  }
  return out
}

// ---------------------------------------------------------------------------------------------------------------
// Binary format

export interface BinaryImaList {
  entries: ImaEntry[]
  /** Bytes after the last complete entry (a stray newline, a cut-off entry), with why decoding stopped. */
  remainder: { offset: number; length: number; reason: string } | null
}

/** A binary list starts with a little-endian u32 PCR index (≤ 23); an ASCII list starts with decimal digits. */
export function isBinaryImaList(bytes: Uint8Array): boolean {
  return bytes.length >= 4 && (bytes[0] as number) <= 23 && bytes[1] === 0 && bytes[2] === 0 && bytes[3] === 0
}

function readFields(data: Buffer, count: number, offset: number): Buffer[] {
  const fields: Buffer[] = []
  let off = 0
  for (let i = 0; i < count; i++) {
    if (off + 4 > data.length) throw new ImaParseError(`template data ends inside field ${i + 1}`, { offset })
    const len = data.readUInt32LE(off)
    if (off + 4 + len > data.length)
      throw new ImaParseError(`field ${i + 1} overruns template data`, { offset })
    fields.push(data.subarray(off + 4, off + 4 + len))
    off += 4 + len
  }
  if (off !== data.length) throw new ImaParseError('template data has bytes after its last field', { offset })
  return fields
}

function decodeDigestNgData(data: Buffer, offset: number): { alg: string; digest: Buffer } {
  const colon = data.indexOf(':')
  if (colon <= 0 || data[colon + 1] !== 0) throw new ImaParseError('d-ng field lacks "<alg>:\\0"', { offset })
  return { alg: data.toString('latin1', 0, colon), digest: Buffer.from(data.subarray(colon + 2)) }
}

function stripNul(data: Buffer): string {
  const end = data.length > 0 && data[data.length - 1] === 0 ? data.length - 1 : data.length
  return data.toString('utf8', 0, end)
}

/**
 * Decodes `binary_runtime_measurements`. `templateHashSize` is 20 for the classic list, the bank's digest size for
 * per-bank lists. Complete entries are returned; what follows the last one is reported as `remainder`.
 */
export function parseBinaryImaList(
  bytes: Uint8Array,
  options: { templateHashSize?: number } = {},
): BinaryImaList {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const hashSize = options.templateHashSize ?? 20
  const entries: ImaEntry[] = []
  let off = 0
  const stop = (reason: string): BinaryImaList => ({
    entries,
    remainder: { offset: off, length: buf.length - off, reason },
  })
  while (off < buf.length) {
    const start = off
    if (off + 4 + hashSize + 4 > buf.length) return stop('truncated header')
    const pcr = buf.readUInt32LE(off)
    if (pcr > 23) return stop(`PCR index ${pcr} out of range`)
    const templateHash = Buffer.from(buf.subarray(off + 4, off + 4 + hashSize))
    const nameLen = buf.readUInt32LE(off + 4 + hashSize)
    let p = off + 8 + hashSize
    if (nameLen === 0 || nameLen > 255 || p + nameLen > buf.length) return stop('bad template name length')
    const templateName = buf.toString('latin1', p, p + nameLen)
    p += nameLen
    if (!isTemplateName(templateName)) return stop(`unsupported template ${JSON.stringify(templateName)}`)
    const violation = isAllZero(templateHash)
    const header = { pcr, templateHash, templateName, violation }
    if (templateName === 'ima') {
      if (p + 24 > buf.length) return stop('truncated ima entry')
      const digest = Buffer.from(buf.subarray(p, p + 20))
      const fileNameLen = buf.readUInt32LE(p + 20)
      if (fileNameLen > 255 || p + 24 + fileNameLen > buf.length) return stop('bad ima file name length')
      const name = buf.toString('utf8', p + 24, p + 24 + fileNameLen)
      off = p + 24 + fileNameLen
      const templateData = Buffer.alloc(20 + IMA_NAME_FIELD_SIZE)
      digest.copy(templateData, 0)
      buf.copy(templateData, 20, p + 24, p + 24 + fileNameLen)
      entries.push({
        ...header,
        templateData,
        digestAlg: 'sha1',
        digest,
        digestHex: digest.toString('hex'),
        name,
        signature: null,
        buffer: null,
      })
      continue
    }
    if (p + 4 > buf.length) return stop('truncated template data length')
    const dataLen = buf.readUInt32LE(p)
    if (dataLen > MAX_FIELD_BYTES || p + 4 + dataLen > buf.length)
      return stop('template data overruns the list')
    const templateData = Buffer.from(buf.subarray(p + 4, p + 4 + dataLen))
    off = p + 4 + dataLen
    try {
      const fields = readFields(templateData, TEMPLATE_FIELD_COUNT[templateName], start)
      const { alg, digest } = decodeDigestNgData(fields[0] as Buffer, start)
      const sigOrBuf = fields[2]
      entries.push({
        ...header,
        templateData,
        digestAlg: alg,
        digest,
        digestHex: digest.toString('hex'),
        name: stripNul(fields[1] as Buffer),
        signature:
          (templateName === 'ima-sig' || templateName === 'ima-modsig') && sigOrBuf && sigOrBuf.length > 0
            ? Buffer.from(sigOrBuf)
            : null,
        buffer: templateName === 'ima-buf' && sigOrBuf ? Buffer.from(sigOrBuf) : null,
      })
    } catch (err) {
      off = start
      return stop(err instanceof Error ? err.message : String(err))
    }
  }
  return { entries, remainder: null }
}

/** The kernel's ASCII rendering of an entry (`ascii_runtime_measurements` line, without `\n`). */
export function formatImaLine(entry: ImaEntry): string {
  const head = `${entry.pcr} ${entry.templateHash.toString('hex')} ${entry.templateName}`
  if (entry.templateName === 'ima') return `${head} ${entry.digestHex} ${entry.name}`
  const d = `${entry.digestAlg}:${entry.digestHex}`
  if (entry.templateName === 'ima-ng') return `${head} ${d} ${entry.name}`
  if (entry.templateName === 'ima-sig')
    return `${head} ${d} ${entry.name} ${entry.signature?.toString('hex') ?? ''}`
  if (entry.templateName === 'ima-buf')
    return `${head} ${d} ${entry.name} ${entry.buffer?.toString('hex') ?? ''}`
  const fields = readFields(entry.templateData, 5, 0)
  const dModsig = fields[3] as Buffer
  const dm =
    dModsig.length === 0
      ? ''
      : (() => {
          const x = decodeDigestNgData(dModsig, 0)
          return `${x.alg}:${x.digest.toString('hex')}`
        })()
  return `${head} ${d} ${entry.name} ${(fields[2] as Buffer).toString('hex')} ${dm} ${(fields[4] as Buffer).toString('hex')}`
}

export interface ParsedImaList {
  format: 'ascii' | 'binary'
  entries: ImaEntry[]
  remainder: BinaryImaList['remainder']
}

/** Parses a whole list, detecting the format; any malformed ASCII line throws `ImaParseError` naming the line. */
export function parseImaList(input: string | Uint8Array): ParsedImaList {
  if (typeof input !== 'string' && isBinaryImaList(input)) {
    const { entries, remainder } = parseBinaryImaList(input)
    if (entries.length === 0 && remainder) {
      throw new ImaParseError(`binary list has no complete entry (${remainder.reason})`, {
        offset: remainder.offset,
      })
    }
    return { format: 'binary', entries, remainder }
  }
  const text = typeof input === 'string' ? input : Buffer.from(input).toString('utf8')
  const results = parseAsciiImaList(text, { strict: true })
  return { format: 'ascii', entries: results.map((r) => r.entry as ImaEntry), remainder: null }
}

// ---------------------------------------------------------------------------------------------------------------
// Emulation (agent side)

export interface FormattedImaEntry {
  /** ASCII line as the kernel writes it (sha1 template-hash column), without `\n`. */
  line: string
  templateData: Buffer
  /** Per-bank template digest the kernel extends into PCR 10 of that bank (Linux ≥ 5.8 recomputes per bank). */
  templateDigests: Record<PcrBank, Buffer>
}

/**
 * Formats an ima-ng entry for an IMA emulator: `fileDigest` computed with `hashAlg` (kernel name, e.g. `sha256`).
 * Spaces in the path become `_` before hashing, as the kernel does.
 */
export function formatImaNgEntry(path: string, fileDigest: Uint8Array, hashAlg: string): FormattedImaEntry {
  const known = KERNEL_HASHES[hashAlg]
  if (known === undefined || known.size !== fileDigest.length) {
    throw new ImaParseError(`file digest is not a ${hashAlg} digest (${fileDigest.length} bytes)`)
  }
  const name = path.replaceAll(' ', '_')
  if (name === '' || name.includes('\n')) throw new ImaParseError('file name must be non-empty and one line')
  const hex = Buffer.from(fileDigest).toString('hex')
  const d = parseDigestNg(`${hashAlg}:${hex}`, undefined)
  const templateData = packFields([d.data, nulTerminated(name)])
  const templateDigests = {} as Record<PcrBank, Buffer>
  for (const bank of PCR_BANKS) templateDigests[bank] = digestWith(bank, templateData)
  return {
    line: `10 ${templateDigests.sha1.toString('hex')} ima-ng ${hashAlg}:${hex} ${name}`,
    templateData,
    templateDigests,
  }
}
