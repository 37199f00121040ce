/**
 * Decoders for event payloads (PFP §10.4, UEFI spec). The log parser does not look inside payloads; these run on
 * demand. Each returns null for a payload that does not have the expected structure (the record itself was
 * valid), so callers decide whether that is a policy failure or just shown as hex.
 */
import { derSequenceLength } from '../../tpm/marshal/der.ts'
import { EventType } from './constants.ts'
import { devicePathToText } from './device-path.ts'
import { guidAt, toHex } from './guid.ts'
import type { EventLog, TcgEvent } from './parse.ts'
import { startupLocalityOf } from './replay.ts'

const buf = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength)

export interface UefiVariable {
  /** Vendor GUID of the variable. */
  variableName: string
  unicodeName: string
  unicodeNameLength: number
  data: Buffer
}

/** UEFI_VARIABLE_DATA. */
export function decodeUefiVariable(data: Uint8Array): UefiVariable | null {
  const b = buf(data)
  if (b.length < 32) return null
  const nameLen = b.readBigUInt64LE(16)
  const dataLen = b.readBigUInt64LE(24)
  if (nameLen > BigInt(b.length) || dataLen > BigInt(b.length)) return null
  const n = Number(nameLen)
  const dl = Number(dataLen)
  if (32 + n * 2 + dl > b.length) return null
  return {
    variableName: guidAt(b, 0),
    unicodeName: b.toString('utf16le', 32, 32 + n * 2),
    unicodeNameLength: n,
    data: b.subarray(32 + n * 2, 32 + n * 2 + dl),
  }
}

export interface EfiSignature {
  SignatureOwner: string
  /** Lowercase hex, no prefix. */
  SignatureData: string
}

export interface EfiSignatureList {
  SignatureType: string
  SignatureListSize: number
  SignatureHeaderSize: number
  SignatureSize: number
  Keys: EfiSignature[]
}

interface SignatureListHeader {
  /** Offset of the list in the buffer. */
  offset: number
  listSize: number
  headerSize: number
  sigSize: number
  /** Offset of the first EFI_SIGNATURE_DATA entry. */
  first: number
}

/** Walks a concatenation of EFI_SIGNATURE_LISTs; false when one is malformed (then nothing more is visited). */
function forEachSignatureList(b: Buffer, visit: (list: SignatureListHeader) => void): boolean {
  let o = 0
  while (o < b.length) {
    if (b.length - o < 28) return false
    const listSize = b.readUInt32LE(o + 16)
    const headerSize = b.readUInt32LE(o + 20)
    const sigSize = b.readUInt32LE(o + 24)
    if (listSize < 28 || listSize > b.length - o || sigSize < 16) return false
    const body = listSize - 28 - headerSize
    if (body < 0 || body % sigSize !== 0) return false
    visit({ offset: o, listSize, headerSize, sigSize, first: o + 28 + headerSize })
    o += listSize
  }
  return true
}

/** A concatenation of EFI_SIGNATURE_LISTs (PK, KEK, db, dbx as EV_EFI_VARIABLE_DRIVER_CONFIG). */
export function decodeSignatureLists(data: Uint8Array): EfiSignatureList[] | null {
  const b = buf(data)
  const lists: EfiSignatureList[] = []
  const ok = forEachSignatureList(b, (l) => {
    const keys: EfiSignature[] = []
    for (let k = l.first; k < l.offset + l.listSize; k += l.sigSize) {
      keys.push({ SignatureOwner: guidAt(b, k), SignatureData: toHex(b.subarray(k + 16, k + l.sigSize)) })
    }
    lists.push({
      SignatureType: guidAt(b, l.offset),
      SignatureListSize: l.listSize,
      SignatureHeaderSize: l.headerSize,
      SignatureSize: l.sigSize,
      Keys: keys,
    })
  })
  return ok ? lists : null
}

/**
 * The signature data of every entry of a concatenation of EFI_SIGNATURE_LISTs, as lowercase hex (owners and
 * types skipped: the fast path for large dbx variables). Null when the lists are malformed.
 */
export function signatureDataHexes(data: Uint8Array): string[] | null {
  const b = buf(data)
  const out: string[] = []
  const ok = forEachSignatureList(b, (l) => {
    for (let k = l.first; k < l.offset + l.listSize; k += l.sigSize)
      out.push(b.toString('hex', k + 16, k + l.sigSize))
  })
  return ok ? out : null
}

/**
 * EFI_SIGNATURE_DATA entries without a list header (EV_EFI_VARIABLE_AUTHORITY: db, Shim, vendor_db). Several
 * back-to-back X.509 entries are split by their DER lengths; anything else is one entry.
 */
export function decodeSignatureDataEntries(data: Uint8Array): EfiSignature[] | null {
  const b = buf(data)
  if (b.length < 17) return null
  const out: EfiSignature[] = []
  let o = 0
  while (o < b.length) {
    if (b.length - o < 17) return null
    const der = derSequenceLength(b, o + 16) ?? null
    const end =
      der !== null && o + 16 + der < b.length && o + 16 + der + 17 <= b.length ? o + 16 + der : b.length
    out.push({ SignatureOwner: guidAt(b, o), SignatureData: toHex(b.subarray(o + 16, end)) })
    o = end
  }
  return out
}

export interface ImageLoadEvent {
  ImageLocationInMemory: bigint
  ImageLengthInMemory: bigint
  ImageLinkTimeAddress: bigint
  LengthOfDevicePath: bigint
  DevicePath: string
}

/** UEFI_IMAGE_LOAD_EVENT. */
export function decodeImageLoad(data: Uint8Array): ImageLoadEvent | null {
  const b = buf(data)
  if (b.length < 32) return null
  const pathLen = b.readBigUInt64LE(24)
  if (pathLen > BigInt(b.length - 32)) return null
  return {
    ImageLocationInMemory: b.readBigUInt64LE(0),
    ImageLengthInMemory: b.readBigUInt64LE(8),
    ImageLinkTimeAddress: b.readBigUInt64LE(16),
    LengthOfDevicePath: pathLen,
    DevicePath: devicePathToText(b.subarray(32, 32 + Number(pathLen))),
  }
}

/** An ASCII/UTF-8 event string without trailing NULs (EV_IPL, EV_EFI_ACTION, EV_POST_CODE strings). */
export function eventString(data: Uint8Array): string {
  // systemd-boot measures UTF-16LE strings (kernel command line in PCR 12)
  if (data.length >= 4 && data[1] === 0 && data[3] === 0 && data[0] !== 0) {
    const s = buf(data).toString('utf16le', 0, data.length - (data.length % 2))
    const nul = s.indexOf('\0')
    return nul >= 0 ? s.slice(0, nul) : s
  }
  let end = data.length
  while (end > 0 && data[end - 1] === 0) end--
  return buf(data).toString('utf8', 0, end)
}

/** Boot####: EFI_LOAD_OPTION. */
function decodeLoadOption(d: Buffer): Record<string, unknown> | null {
  if (d.length < 6) return null
  const attrs = d.readUInt32LE(0)
  const fplLen = d.readUInt16LE(4)
  let o = 6
  while (o + 1 < d.length && (d[o] !== 0 || d[o + 1] !== 0)) o += 2
  if (o + 1 >= d.length) return null
  const description = d.toString('utf16le', 6, o)
  o += 2
  if (o + fplLen > d.length) return null
  return {
    Enabled: attrs & 1 ? 'Yes' : 'No',
    FilePathListLength: fplLen,
    Description: description,
    DevicePath: devicePathToText(d.subarray(o, o + fplLen)),
  }
}

function variableDataDetail(ev: TcgEvent, v: UefiVariable): unknown {
  const name = v.unicodeName
  const d = v.data
  if (name === 'SecureBoot' || name === 'MokListTrusted') {
    return { Enabled: d.length > 0 && d[0] === 1 ? 'Yes' : 'No' }
  }
  if (
    ev.type === EventType.EfiVariableDriverConfig &&
    ['PK', 'KEK', 'db', 'dbx', 'dbt', 'dbr'].includes(name)
  ) {
    return decodeSignatureLists(d) ?? toHex(d)
  }
  if (
    ev.type === EventType.EfiVariableAuthority &&
    (name === 'db' || name === 'Shim' || name === 'vendor_db')
  ) {
    return decodeSignatureDataEntries(d) ?? toHex(d)
  }
  if (ev.type === EventType.EfiVariableAuthority && name === 'SbatLevel') return { String: eventString(d) }
  if (name === 'BootOrder' && d.length % 2 === 0) {
    const order: string[] = []
    for (let i = 0; i < d.length; i += 2) order.push(`Boot${d.readUInt16LE(i).toString(16).padStart(4, '0')}`)
    return order
  }
  if (/^Boot[0-9A-Fa-f]{4}$/.test(name)) return decodeLoadOption(d) ?? toHex(d)
  return toHex(d)
}

function decodeGpt(data: Uint8Array): Record<string, unknown> | null {
  const b = buf(data)
  if (b.length < 100) return null
  const entrySize = b.readUInt32LE(84)
  const count = b.readBigUInt64LE(92)
  if (entrySize < 128 || count * BigInt(entrySize) > BigInt(b.length - 100)) return null
  const partitions: Record<string, unknown>[] = []
  for (let i = 0; i < Number(count); i++) {
    const o = 100 + i * entrySize
    partitions.push({
      PartitionTypeGUID: guidAt(b, o),
      UniquePartitionGUID: guidAt(b, o + 16),
      StartingLBA: b.readBigUInt64LE(o + 32),
      EndingLBA: b.readBigUInt64LE(o + 40),
      Attributes: b.readBigUInt64LE(o + 48),
      PartitionName: eventString(Buffer.from(b.toString('utf16le', o + 56, o + 128), 'utf8')),
    })
  }
  return {
    Header: {
      Signature: b.toString('latin1', 0, 8),
      Revision: b.readUInt32LE(8),
      HeaderSize: b.readUInt32LE(12),
      HeaderCRC32: b.readUInt32LE(16),
      MyLBA: b.readBigUInt64LE(24),
      AlternateLBA: b.readBigUInt64LE(32),
      FirstUsableLBA: b.readBigUInt64LE(40),
      LastUsableLBA: b.readBigUInt64LE(48),
      DiskGUID: guidAt(b, 56),
      PartitionEntryLBA: b.readBigUInt64LE(72),
      NumberOfPartitionEntry: b.readUInt32LE(80),
      SizeOfPartitionEntry: entrySize,
      PartitionEntryArrayCRC32: b.readUInt32LE(88),
    },
    NumberOfPartitions: count,
    Partitions: partitions,
  }
}

/**
 * Readable payload of one event, in the shape tpm2_eventlog / upstream Keylime use (§3 of the spec); numbers
 * that may exceed 2^53 are bigint (callers serialising to JSON convert them).
 */
export function decodeEventPayload(ev: TcgEvent): unknown {
  const d = buf(ev.data)
  switch (ev.type) {
    case EventType.EfiVariableDriverConfig:
    case EventType.EfiVariableBoot:
    case EventType.EfiVariableBoot2:
    case EventType.EfiVariableAuthority: {
      const v = decodeUefiVariable(d)
      if (v === null) return toHex(d)
      return {
        VariableName: v.variableName,
        UnicodeNameLength: v.unicodeNameLength,
        VariableDataLength: v.data.length,
        UnicodeName: v.unicodeName,
        VariableData: variableDataDetail(ev, v),
      }
    }
    case EventType.EfiBootServicesApplication:
    case EventType.EfiBootServicesDriver:
    case EventType.EfiRuntimeServicesDriver:
      return decodeImageLoad(d) ?? toHex(d)
    case EventType.Ipl:
      return { String: eventString(d) }
    case EventType.EfiAction:
      return eventString(d)
    case EventType.EfiPlatformFirmwareBlob:
      return d.length === 16 ? { BlobBase: d.readBigUInt64LE(0), BlobLength: d.readBigUInt64LE(8) } : toHex(d)
    case EventType.PostCode:
      return d.length === 16
        ? { BlobBase: d.readBigUInt64LE(0), BlobLength: d.readBigUInt64LE(8) }
        : eventString(d)
    case EventType.EfiPlatformFirmwareBlob2: {
      const n = d[0]
      if (n === undefined || d.length !== 1 + n + 16) return toHex(d)
      return {
        BlobDescription: d.toString('latin1', 1, 1 + n),
        BlobBase: d.readBigUInt64LE(1 + n),
        BlobLength: d.readBigUInt64LE(9 + n),
      }
    }
    case EventType.EfiHandoffTables:
    case EventType.EfiHandoffTables2: {
      // HANDOFF_TABLES2 prefixes the table list with a one-byte-sized description
      let o = 0
      let description: string | undefined
      if (ev.type === EventType.EfiHandoffTables2) {
        const n = d[0]
        if (n === undefined || d.length < 1 + n) return toHex(d)
        description = d.toString('latin1', 1, 1 + n)
        o = 1 + n
      }
      if (d.length - o < 8) return toHex(d)
      const count = d.readBigUInt64LE(o)
      if (count * 24n !== BigInt(d.length - o - 8)) return toHex(d)
      const tables = []
      for (let i = 0; i < Number(count); i++) {
        tables.push({
          VendorGuid: guidAt(d, o + 8 + i * 24),
          VendorTable: d.readBigUInt64LE(o + 24 + i * 24),
        })
      }
      return {
        ...(description !== undefined ? { TableDescription: description } : {}),
        NumberOfTables: count,
        Tables: tables,
      }
    }
    case EventType.Action:
    case EventType.OmitBootDeviceEvents:
      return eventString(d)
    case EventType.SCrtmContents:
    case EventType.CompactHash:
    case EventType.NonhostInfo:
      // often a NUL-terminated ASCII label (e.g. "Boot Guard Measured S-CRTM"); binary otherwise
      return /^[\x20-\x7e]+\0?$/.test(d.toString('latin1')) ? eventString(d) : toHex(d)
    case EventType.EfiGptEvent:
    case EventType.EfiGptEvent2:
      return decodeGpt(d) ?? toHex(d)
    case EventType.EventTag: {
      if (d.length < 8) return toHex(d)
      const size = d.readUInt32LE(4)
      if (size !== d.length - 8) return toHex(d)
      return {
        TaggedEventID: d.readUInt32LE(0),
        TaggedEventDataSize: size,
        TaggedEventData: toHex(d.subarray(8)),
      }
    }
    case EventType.NoAction: {
      const loc = startupLocalityOf(ev)
      if (loc !== null) return { StartupLocality: loc }
      if (d.length >= 16 && /^[\x20-\x7e]+\0$/.test(d.toString('latin1', 0, 16))) {
        return { Signature: d.toString('latin1', 0, 15), Data: toHex(d.subarray(16)) }
      }
      return toHex(d)
    }
    case EventType.EfiHcrtmEvent:
      return eventString(d)
    default:
      return toHex(d)
  }
}

/** One event as a JSON-ready object (`EventNum`, `PCRIndex`, `EventType`, digests, `Event`). */
export function eventDetail(log: EventLog, ev: TcgEvent): Record<string, unknown> {
  if (log.format === 'crypto-agile' && ev.index === 0 && log.specId !== null) {
    const s = log.specId
    return {
      EventNum: 0,
      PCRIndex: ev.pcr,
      EventType: ev.typeName,
      Digest: toHex(ev.digests[0]?.digest ?? new Uint8Array()),
      EventSize: ev.data.length,
      SpecID: [
        {
          Signature: s.signature,
          platformClass: s.platformClass,
          specVersionMinor: s.specVersionMinor,
          specVersionMajor: s.specVersionMajor,
          specErrata: s.specErrata,
          uintnSize: s.uintnSize,
          numberOfAlgorithms: s.algorithms.length,
          Algorithms: s.algorithms.map((a) => ({ algorithmId: a.name, digestSize: a.digestSize })),
          vendorInfoSize: s.vendorInfo.length,
          ...(s.vendorInfo.length > 0 ? { vendorInfo: toHex(s.vendorInfo) } : {}),
        },
      ],
    }
  }
  return {
    EventNum: ev.index,
    PCRIndex: ev.pcr,
    EventType: ev.typeName,
    DigestCount: ev.digests.length,
    Digests: ev.digests.map((x) => ({ AlgorithmId: x.alg, Digest: toHex(x.digest) })),
    EventSize: ev.data.length,
    Event: decodeEventPayload(ev),
  }
}

/** JSON.stringify replacer turning bigint into a number when exact, else a decimal string. */
export function bigintReplacer(_key: string, value: unknown): unknown {
  if (typeof value === 'bigint')
    return value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value.toString()
  return value
}
