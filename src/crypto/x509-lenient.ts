/**
 * A forgiving X.509 certificate reader for TPM EK certificates, which are often not strict DER
 * (non-minimal lengths, negative serials, padding after the certificate in NV, RSAES-OAEP key OIDs).
 * It walks the BER structure itself and keeps the exact `tbsCertificate` bytes, so signatures are
 * checked over what the issuer signed, never over a re-encoding.
 */
import { createPublicKey, type KeyObject, X509Certificate } from 'node:crypto'
import { KeylimeError } from '../common/errors.ts'

export class CertificateFormatError extends KeylimeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_CERT_FORMAT', message, { statusCode: 400, ...options })
  }
}

interface Tlv {
  tag: number
  start: number
  contentStart: number
  end: number
}

export interface NameAttribute {
  oid: string
  value: string
}

export interface DistinguishedName {
  raw: Uint8Array
  attributes: NameAttribute[]
  /** display form, e.g. "C=DE, O=Infineon Technologies AG, CN=Infineon OPTIGA(TM) RSA Root CA" */
  text: string
  /** normalised form for matching (case and whitespace folded) */
  key: string
}

export interface CertExtension {
  oid: string
  critical: boolean
  value: Uint8Array
}

export interface LenientCertificate {
  /** the certificate bytes (trailing padding removed) */
  der: Uint8Array
  /** tbsCertificate exactly as signed */
  tbs: Uint8Array
  version: number
  /** serial INTEGER content bytes as hex (two's complement; may be negative) */
  serialHex: string
  serial: bigint
  signatureAlgorithm: { oid: string; params: Uint8Array | null }
  signature: Uint8Array
  issuer: DistinguishedName
  subject: DistinguishedName
  notBefore: Date
  notAfter: Date
  spki: Uint8Array
  /** null when node cannot import the key (reported in irregularities) */
  publicKey: KeyObject | null
  extensions: CertExtension[]
  basicConstraints: { ca: boolean; pathLength: number | null } | null
  /** true/false when a KeyUsage extension is present, null when absent */
  keyCertSign: boolean | null
  subjectKeyId: string | null
  authorityKeyId: string | null
  /** what was not strict DER or otherwise unusual; empty for a clean certificate */
  irregularities: string[]
}

const OID_NAMES: Record<string, string> = {
  '2.5.4.3': 'CN',
  '2.5.4.6': 'C',
  '2.5.4.7': 'L',
  '2.5.4.8': 'ST',
  '2.5.4.10': 'O',
  '2.5.4.11': 'OU',
  '2.5.4.5': 'serialNumber',
  '1.2.840.113549.1.9.1': 'emailAddress',
  '0.9.2342.19200300.100.1.25': 'DC',
}

class Reader {
  irregularities: string[] = []
  constructor(readonly buf: Uint8Array) {}

  tlv(offset: number, limit: number, what: string): Tlv {
    const { buf } = this
    if (offset + 2 > limit) throw new CertificateFormatError(`${what}: truncated at offset ${offset}`)
    const tag = buf[offset] as number
    if ((tag & 0x1f) === 0x1f) throw new CertificateFormatError(`${what}: multi-byte tags are not supported`)
    let pos = offset + 1
    const first = buf[pos++] as number
    let length = first
    if (first === 0x80) throw new CertificateFormatError(`${what}: indefinite length at offset ${offset}`)
    if (first > 0x80) {
      const n = first & 0x7f
      if (n > 4 || pos + n > limit)
        throw new CertificateFormatError(`${what}: bad length at offset ${offset}`)
      length = 0
      for (let i = 0; i < n; i++) length = length * 256 + (buf[pos++] as number)
      if (length < 0x80 || (n > 1 && buf[pos - n] === 0)) {
        this.irregularities.push(`non-minimal length encoding in ${what} at offset ${offset}`)
      }
    }
    const end = pos + length
    if (end > limit)
      throw new CertificateFormatError(
        `${what}: length ${length} runs past its container at offset ${offset}`,
      )
    return { tag, start: offset, contentStart: pos, end }
  }

  expect(offset: number, limit: number, tag: number, what: string): Tlv {
    const t = this.tlv(offset, limit, what)
    if (t.tag !== tag) {
      throw new CertificateFormatError(
        `${what}: expected tag 0x${tag.toString(16)}, got 0x${t.tag.toString(16)} at ${offset}`,
      )
    }
    return t
  }

  children(parent: Tlv, what: string): Tlv[] {
    const out: Tlv[] = []
    let pos = parent.contentStart
    while (pos < parent.end) {
      const child = this.tlv(pos, parent.end, what)
      out.push(child)
      pos = child.end
    }
    return out
  }

  bytes(t: Tlv): Uint8Array {
    return this.buf.subarray(t.contentStart, t.end)
  }

  raw(t: Tlv): Uint8Array {
    return this.buf.subarray(t.start, t.end)
  }
}

function decodeOid(bytes: Uint8Array): string {
  if (bytes.length === 0) throw new CertificateFormatError('empty OBJECT IDENTIFIER')
  const parts: number[] = []
  let value = 0
  for (const b of bytes) {
    value = value * 128 + (b & 0x7f)
    if (!(b & 0x80)) {
      parts.push(value)
      value = 0
    }
  }
  const first = parts.shift() ?? 0
  const head = first < 80 ? [Math.floor(first / 40), first % 40] : [2, first - 80]
  return [...head, ...parts].join('.')
}

function decodeString(tag: number, bytes: Uint8Array): string {
  const b = Buffer.from(bytes)
  switch (tag) {
    case 0x1e: // BMPString: UTF-16BE
      return b.length % 2 === 0 ? Buffer.from(b).swap16().toString('utf16le') : b.toString('latin1')
    case 0x14: // T61String: treat as Latin-1
      return b.toString('latin1')
    default:
      return b.toString('utf8')
  }
}

function parseName(r: Reader, t: Tlv, what: string): DistinguishedName {
  const attributes: NameAttribute[] = []
  for (const rdn of r.children(t, what)) {
    for (const atv of r.children(rdn, what)) {
      const [oidT, valueT] = r.children(atv, what)
      if (!oidT || !valueT || oidT.tag !== 0x06)
        throw new CertificateFormatError(`${what}: malformed attribute`)
      attributes.push({ oid: decodeOid(r.bytes(oidT)), value: decodeString(valueT.tag, r.bytes(valueT)) })
    }
  }
  const text = attributes.map((a) => `${OID_NAMES[a.oid] ?? a.oid}=${a.value}`).join(', ')
  const key = attributes.map((a) => `${a.oid}=${a.value.trim().replace(/\s+/g, ' ').toLowerCase()}`).join(',')
  return { raw: r.raw(t), attributes, text, key }
}

function parseTime(r: Reader, t: Tlv, what: string): Date {
  const s = Buffer.from(r.bytes(t)).toString('latin1')
  const m =
    t.tag === 0x17
      ? /^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})?(Z|[+-]\d{4})$/.exec(s)
      : t.tag === 0x18
        ? /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})?(?:\.\d+)?(Z|[+-]\d{4})?$/.exec(s)
        : null
  if (!m) throw new CertificateFormatError(`${what}: unreadable time ${JSON.stringify(s)}`)
  let year = Number(m[1])
  if (t.tag === 0x17) year += year < 50 ? 2000 : 1900
  const ms = Date.UTC(year, Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6] ?? 0))
  const zone = m[7] ?? 'Z'
  const offsetMin =
    zone === 'Z' ? 0 : (zone[0] === '-' ? -1 : 1) * (Number(zone.slice(1, 3)) * 60 + Number(zone.slice(3)))
  return new Date(ms - offsetMin * 60_000)
}

function encodeDerLength(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n])
  const bytes: number[] = []
  while (n > 0) {
    bytes.unshift(n & 0xff)
    n = Math.floor(n / 256)
  }
  return Buffer.from([0x80 | bytes.length, ...bytes])
}

const RSA_ENCRYPTION_ALG = Buffer.from('300d06092a864886f70d0101010500', 'hex')
const OID_RSAES_OAEP = '1.2.840.113549.1.1.7'

function importPublicKey(r: Reader, spki: Tlv, irregularities: string[]): KeyObject | null {
  const raw = r.raw(spki)
  try {
    return createPublicKey({ key: Buffer.from(raw), format: 'der', type: 'spki' })
  } catch {
    // Some EK certificates label an RSA key id-RSAES-OAEP; the key itself is an RSAPublicKey.
    const [alg, bits] = r.children(spki, 'subjectPublicKeyInfo')
    const [oidT] = alg ? r.children(alg, 'algorithm') : []
    if (alg && bits && oidT && decodeOid(r.bytes(oidT)) === OID_RSAES_OAEP) {
      const bitString = r.raw(bits)
      const body = Buffer.concat([RSA_ENCRYPTION_ALG, bitString])
      try {
        const key = createPublicKey({
          key: Buffer.concat([Buffer.from([0x30]), encodeDerLength(body.length), body]),
          format: 'der',
          type: 'spki',
        })
        return key
      } catch {
        // fall through
      }
    }
    irregularities.push('public key cannot be imported')
    return null
  }
}

function parseExtensions(r: Reader, t: Tlv): CertExtension[] {
  const [seq] = r.children(t, 'extensions')
  if (!seq) return []
  return r.children(seq, 'extensions').map((ext) => {
    const parts = r.children(ext, 'extension')
    const oidT = parts[0]
    const valueT = parts[parts.length - 1]
    if (!oidT || !valueT || oidT.tag !== 0x06 || valueT.tag !== 0x04) {
      throw new CertificateFormatError('malformed extension')
    }
    const critT = parts.length === 3 ? parts[1] : undefined
    const critical = critT !== undefined && critT.tag === 0x01 && (r.bytes(critT)[0] ?? 0) !== 0
    return { oid: decodeOid(r.bytes(oidT)), critical, value: r.bytes(valueT) }
  })
}

/** Reads the interesting extensions; a malformed one is recorded as an irregularity, not fatal. */
function readKnownExtensions(cert: LenientCertificate): void {
  for (const ext of cert.extensions) {
    const r = new Reader(ext.value)
    try {
      if (ext.oid === '2.5.29.19') {
        const seq = r.expect(0, ext.value.length, 0x30, 'basicConstraints')
        let ca = false
        let pathLength: number | null = null
        for (const c of r.children(seq, 'basicConstraints')) {
          if (c.tag === 0x01) ca = (r.bytes(c)[0] ?? 0) !== 0
          if (c.tag === 0x02) pathLength = Number.parseInt(Buffer.from(r.bytes(c)).toString('hex') || '0', 16)
        }
        cert.basicConstraints = { ca, pathLength }
      } else if (ext.oid === '2.5.29.15') {
        const bits = r.expect(0, ext.value.length, 0x03, 'keyUsage')
        const first = r.bytes(bits)[1] ?? 0
        cert.keyCertSign = (first & 0x04) !== 0
      } else if (ext.oid === '2.5.29.14') {
        const os = r.expect(0, ext.value.length, 0x04, 'subjectKeyIdentifier')
        cert.subjectKeyId = Buffer.from(r.bytes(os)).toString('hex')
      } else if (ext.oid === '2.5.29.35') {
        const seq = r.expect(0, ext.value.length, 0x30, 'authorityKeyIdentifier')
        const keyId = r.children(seq, 'authorityKeyIdentifier').find((c) => c.tag === 0x80)
        if (keyId) cert.authorityKeyId = Buffer.from(r.bytes(keyId)).toString('hex')
      }
      cert.irregularities.push(...r.irregularities)
    } catch (err) {
      cert.irregularities.push(`unreadable extension ${ext.oid}: ${(err as Error).message}`)
    }
  }
}

/** Parses one DER certificate leniently (see module comment). Throws CertificateFormatError only. */
export function parseCertificateDer(input: Uint8Array): LenientCertificate {
  const r = new Reader(input)
  const outer = r.expect(0, input.length, 0x30, 'certificate')
  const irregular: string[] = []
  if (outer.end < input.length) {
    const rest = input.subarray(outer.end)
    irregular.push(`${rest.length} trailing byte(s) after the certificate ignored`)
  }
  const der = input.subarray(0, outer.end)
  const [tbsT, algT, sigT] = r.children(outer, 'certificate')
  if (!tbsT || !algT || !sigT || tbsT.tag !== 0x30 || algT.tag !== 0x30 || sigT.tag !== 0x03) {
    throw new CertificateFormatError(
      'certificate is not SEQUENCE { tbsCertificate, signatureAlgorithm, signature }',
    )
  }
  const algParts = r.children(algT, 'signatureAlgorithm')
  const algOid = algParts[0]
  if (algOid?.tag !== 0x06) throw new CertificateFormatError('signatureAlgorithm has no OID')
  const algParams = algParts[1]
  const sigBytes = r.bytes(sigT)

  const tbsParts = r.children(tbsT, 'tbsCertificate')
  let i = 0
  let version = 1
  const first = tbsParts[0]
  if (first?.tag === 0xa0) {
    const [v] = r.children(first, 'version')
    version = (v ? (r.bytes(v)[0] ?? 0) : 0) + 1
    i++
  }
  const field = (name: string, tag: number): Tlv => {
    const t = tbsParts[i++]
    if (!t || t.tag !== tag) throw new CertificateFormatError(`tbsCertificate: missing or malformed ${name}`)
    return t
  }
  const serialT = field('serialNumber', 0x02)
  field('signature', 0x30)
  const issuerT = field('issuer', 0x30)
  const validityT = field('validity', 0x30)
  const subjectT = field('subject', 0x30)
  const spkiT = field('subjectPublicKeyInfo', 0x30)
  const serialBytes = r.bytes(serialT)
  const serialHex = Buffer.from(serialBytes).toString('hex')
  let serial = serialHex === '' ? 0n : BigInt(`0x${serialHex}`)
  if (serialBytes.length > 0 && ((serialBytes[0] as number) & 0x80) !== 0) {
    serial -= 1n << BigInt(serialBytes.length * 8)
    irregular.push('negative serial number')
  }
  const [nbT, naT] = r.children(validityT, 'validity')
  if (!nbT || !naT) throw new CertificateFormatError('validity needs notBefore and notAfter')
  const extT = tbsParts.slice(i).find((t) => t.tag === 0xa3)
  const cert: LenientCertificate = {
    der,
    tbs: r.raw(tbsT),
    version,
    serialHex,
    serial,
    signatureAlgorithm: { oid: decodeOid(r.bytes(algOid)), params: algParams ? r.raw(algParams) : null },
    signature: sigBytes.subarray(1),
    issuer: parseName(r, issuerT, 'issuer'),
    subject: parseName(r, subjectT, 'subject'),
    notBefore: parseTime(r, nbT, 'notBefore'),
    notAfter: parseTime(r, naT, 'notAfter'),
    spki: r.raw(spkiT),
    publicKey: null,
    extensions: extT ? parseExtensions(r, extT) : [],
    basicConstraints: null,
    keyCertSign: null,
    subjectKeyId: null,
    authorityKeyId: null,
    irregularities: irregular,
  }
  // importing a key costs more than parsing the whole certificate: do it only when a signature needs it
  let key: KeyObject | null | undefined
  const keyIssues: string[] = []
  Object.defineProperty(cert, 'publicKey', {
    enumerable: true,
    get: (): KeyObject | null => {
      if (key === undefined) key = importPublicKey(r, spkiT, keyIssues)
      return key
    },
  })
  const [keyAlg] = r.children(spkiT, 'subjectPublicKeyInfo')
  const [keyOid] = keyAlg ? r.children(keyAlg, 'algorithm') : []
  if (keyOid && decodeOid(r.bytes(keyOid)) === OID_RSAES_OAEP) {
    cert.irregularities.push('public key labelled id-RSAES-OAEP (read as rsaEncryption)')
  }
  cert.irregularities.unshift(...r.irregularities)
  readKnownExtensions(cert)
  return cert
}

const PEM_RE = /-----BEGIN ([A-Z0-9 ]+)-----([\s\S]*?)-----END \1-----/g

function base64Body(text: string, what: string): Buffer {
  const compact = text.replace(/\s+/g, '')
  if (!/^[A-Za-z0-9+/_-]*={0,2}$/.test(compact) || compact.length === 0) {
    throw new CertificateFormatError(`${what} is not base64`)
  }
  return Buffer.from(compact.replace(/-/g, '+').replace(/_/g, '/'), 'base64')
}

/** Every certificate in a PEM bundle (blocks labelled CERTIFICATE, X509 CERTIFICATE or TRUSTED CERTIFICATE). */
export function parsePemCertificates(text: string): LenientCertificate[] {
  const out: LenientCertificate[] = []
  for (const m of text.matchAll(PEM_RE)) {
    if (!/CERTIFICATE$/.test(m[1] ?? '')) continue
    out.push(parseCertificateDer(base64Body(m[2] ?? '', 'PEM body')))
  }
  return out
}

/**
 * Reads one certificate given as PEM text, DER bytes, or base64 of DER (the registrar's `ekcert`).
 * Tolerates non-strict DER; throws CertificateFormatError for anything that is not a certificate.
 */
export function parseCertificateTolerant(input: string | Uint8Array): LenientCertificate {
  if (input instanceof Uint8Array && input[0] === 0x30) return parseCertificateDer(input)
  const text = typeof input === 'string' ? input : Buffer.from(input).toString('latin1')
  if (text.includes('-----BEGIN')) {
    const [first] = parsePemCertificates(text)
    if (!first) throw new CertificateFormatError('PEM text holds no CERTIFICATE block')
    return first
  }
  return parseCertificateDer(base64Body(text, 'certificate'))
}

/** True when OpenSSL (node's X509Certificate) also accepts the bytes as they are. */
export function isStrictlyParseable(der: Uint8Array): boolean {
  try {
    new X509Certificate(der)
    return true
  } catch {
    return false
  }
}
