/**
 * Binary TCG PC Client event logs (PFP §10): the legacy SHA1 format (every record a TCG_PCR_EVENT) and the
 * crypto-agile format (a SHA1-format Spec ID header, then TCG_PCR_EVENT2 records). One pass over the bytes;
 * digests and event data are views into the input, never copies. Payloads are decoded on demand (payload.ts).
 */
import { BANK_BY_ALG_ID, type BankName, DIGEST_SIZE, eventTypeName } from './constants.ts'
import { EventLogFormatError } from './errors.ts'

export interface SpecIdAlgorithm {
  algorithmId: number
  /** Bank name, or `0x<id>` for an algorithm this implementation cannot hash. */
  name: string
  digestSize: number
}

export interface SpecIdEvent {
  signature: string
  platformClass: number
  specVersionMinor: number
  specVersionMajor: number
  specErrata: number
  uintnSize: number
  algorithms: SpecIdAlgorithm[]
  vendorInfo: Uint8Array
}

export interface EventDigest {
  algorithmId: number
  /** Bank name, or `0x<id>` when unknown. */
  alg: string
  digest: Uint8Array
}

export interface TcgEvent {
  /** 0-based position in the log; the Spec ID header of a crypto-agile log is event 0. */
  index: number
  /** Byte offset of the record in the log. */
  offset: number
  pcr: number
  type: number
  typeName: string
  digests: EventDigest[]
  data: Uint8Array
}

export interface EventLog {
  format: 'crypto-agile' | 'sha1'
  /** Null for legacy logs. */
  specId: SpecIdEvent | null
  /** Banks that can be replayed: those declared in the Spec ID event with a known hash, or `['sha1']`. */
  banks: BankName[]
  events: TcgEvent[]
  byteLength: number
}

const SHA1_HEADER = 32
const SPEC_ID_03 = 'Spec ID Event03\0'

function algName(id: number): string {
  return BANK_BY_ALG_ID.get(id) ?? `0x${id.toString(16).padStart(4, '0')}`
}

/** Parses a binary event log. Throws only `EventLogFormatError`, naming the offset and event index. */
export function parseEventLog(bytes: Uint8Array): EventLog {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const len = buf.length
  if (len === 0) throw new EventLogFormatError('empty event log', 0, 0)
  if (len < SHA1_HEADER)
    throw new EventLogFormatError(`log of ${len} bytes is shorter than one record header`, 0, 0)

  const events: TcgEvent[] = []
  const first = readSha1Record(buf, 0, 0)
  const isAgile =
    first.type === 3 &&
    first.pcr === 0 &&
    first.data.length >= 16 &&
    buf.toString('latin1', SHA1_HEADER, SHA1_HEADER + 16) === SPEC_ID_03 &&
    isAllZero(first.digests[0]?.digest)
  if (!isAgile) {
    events.push(first)
    let offset = first.offset + SHA1_HEADER + first.data.length
    while (offset < len) {
      const ev = readSha1Record(buf, offset, events.length)
      events.push(ev)
      offset += SHA1_HEADER + ev.data.length
    }
    return { format: 'sha1', specId: null, banks: ['sha1'], events, byteLength: len }
  }

  const specId = parseSpecId(first.data, SHA1_HEADER)
  events.push(first)
  const sizes = new Map<number, number>()
  for (const a of specId.algorithms) sizes.set(a.algorithmId, a.digestSize)
  let offset = SHA1_HEADER + first.data.length
  while (offset < len) {
    const index = events.length
    const start = offset
    if (len - offset < 12)
      throw new EventLogFormatError(`record header needs 12 bytes, ${len - offset} left`, offset, index)
    const pcr = buf.readUInt32LE(offset)
    const type = buf.readUInt32LE(offset + 4)
    const count = buf.readUInt32LE(offset + 8)
    offset += 12
    if (count > sizes.size * 4 + 8) {
      throw new EventLogFormatError(
        `digest count ${count} is implausible for ${sizes.size} banks`,
        start + 8,
        index,
      )
    }
    const digests: EventDigest[] = new Array(count)
    for (let i = 0; i < count; i++) {
      if (len - offset < 2)
        throw new EventLogFormatError('digest algorithm id runs past the end', offset, index)
      const algorithmId = buf.readUInt16LE(offset)
      const size = sizes.get(algorithmId)
      if (size === undefined) {
        throw new EventLogFormatError(
          `digest algorithm 0x${algorithmId.toString(16)} is not declared in the Spec ID event`,
          offset,
          index,
        )
      }
      offset += 2
      if (len - offset < size)
        throw new EventLogFormatError(`${algName(algorithmId)} digest runs past the end`, offset, index)
      digests[i] = { algorithmId, alg: algName(algorithmId), digest: buf.subarray(offset, offset + size) }
      offset += size
    }
    if (len - offset < 4) throw new EventLogFormatError('event size field runs past the end', offset, index)
    const size = buf.readUInt32LE(offset)
    offset += 4
    if (size > len - offset) {
      throw new EventLogFormatError(
        `event data of ${size} bytes runs past the end (${len - offset} left)`,
        offset - 4,
        index,
      )
    }
    events.push({
      index,
      offset: start,
      pcr,
      type,
      typeName: eventTypeName(type),
      digests,
      data: buf.subarray(offset, offset + size),
    })
    offset += size
  }
  const banks: BankName[] = []
  for (const a of specId.algorithms) {
    const b = BANK_BY_ALG_ID.get(a.algorithmId)
    if (b !== undefined && !banks.includes(b)) banks.push(b)
  }
  return { format: 'crypto-agile', specId, banks, events, byteLength: len }
}

function isAllZero(b: Uint8Array | undefined): boolean {
  if (b === undefined) return false
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false
  return true
}

function readSha1Record(buf: Buffer, offset: number, index: number): TcgEvent {
  const left = buf.length - offset
  if (left < SHA1_HEADER)
    throw new EventLogFormatError(`record header needs ${SHA1_HEADER} bytes, ${left} left`, offset, index)
  const pcr = buf.readUInt32LE(offset)
  const type = buf.readUInt32LE(offset + 4)
  const size = buf.readUInt32LE(offset + 28)
  if (size > left - SHA1_HEADER) {
    throw new EventLogFormatError(
      `event data of ${size} bytes runs past the end (${left - SHA1_HEADER} left)`,
      offset + 28,
      index,
    )
  }
  return {
    index,
    offset,
    pcr,
    type,
    typeName: eventTypeName(type),
    digests: [{ algorithmId: 0x0004, alg: 'sha1', digest: buf.subarray(offset + 8, offset + 28) }],
    data: buf.subarray(offset + SHA1_HEADER, offset + SHA1_HEADER + size),
  }
}

/** TCG_EfiSpecIDEventStruct (PFP §10.4.5.1); `base` is the data's offset in the log, for error messages. */
function parseSpecId(data: Uint8Array, base: number): SpecIdEvent {
  const b = Buffer.from(data.buffer, data.byteOffset, data.byteLength)
  const need = (at: number, n: number, what: string) => {
    if (at + n > b.length) {
      throw new EventLogFormatError(
        `Spec ID event: ${what} runs past its ${b.length} bytes of event data`,
        base + at,
        0,
      )
    }
  }
  need(0, 28, 'fixed header')
  const numberOfAlgorithms = b.readUInt32LE(24)
  if (numberOfAlgorithms === 0)
    throw new EventLogFormatError('Spec ID event declares no algorithms', base + 24, 0)
  need(28, numberOfAlgorithms * 4, `algorithm table of ${numberOfAlgorithms} entries`)
  const algorithms: SpecIdAlgorithm[] = []
  let o = 28
  for (let i = 0; i < numberOfAlgorithms; i++) {
    const algorithmId = b.readUInt16LE(o)
    const digestSize = b.readUInt16LE(o + 2)
    const known = BANK_BY_ALG_ID.get(algorithmId)
    if (digestSize === 0)
      throw new EventLogFormatError(`algorithm ${algName(algorithmId)} has digest size 0`, base + o, 0)
    if (known !== undefined && digestSize !== DIGEST_SIZE[known]) {
      throw new EventLogFormatError(`algorithm ${known} declared with digest size ${digestSize}`, base + o, 0)
    }
    algorithms.push({ algorithmId, name: algName(algorithmId), digestSize })
    o += 4
  }
  need(o, 1, 'vendorInfoSize')
  const vendorSize = b.readUInt8(o)
  need(o + 1, vendorSize, `vendorInfo of ${vendorSize} bytes`)
  return {
    signature: 'Spec ID Event03',
    platformClass: b.readUInt32LE(16),
    specVersionMinor: b.readUInt8(20),
    specVersionMajor: b.readUInt8(21),
    specErrata: b.readUInt8(22),
    uintnSize: b.readUInt8(23),
    algorithms,
    vendorInfo: b.subarray(o + 1, o + 1 + vendorSize),
  }
}
