/**
 * EK certificate trust: full chain building from the EK certificate through intermediates (from the
 * store or supplied with the certificate, e.g. from TPM NV) to any certificate of the trust store, with a
 * signature check on every link (RSA PKCS#1 v1.5, RSA-PSS, ECDSA) and CA constraints on every issuer.
 *
 * Validity rule ("chain model", as used for long-lived device identities): TPMs outlive their vendors'
 * intermediate CAs, so a link is good when the child was issued (its notBefore) inside its issuer's validity
 * period (with a day of slack before the issuer's notBefore), and no certificate may be not-yet-valid at `now`. Certificates that have since expired are reported
 * in `warnings`; pass `strictExpiry: true` to refuse them instead (the shell model of RFC 5280).
 *
 * Development with swtpm: `swtpm_setup --create-ek-cert` signs EK certificates with a local CA kept in
 * `/var/lib/swtpm-localca/` (created on first use): `swtpm-localca-rootca-cert.pem` (root) and
 * `issuercert.pem` (intermediate). Copy both into a development store directory (or the configured
 * `tpm_cert_store`) to trust swtpm EKs; never ship them in a production store.
 */
import { constants, createPublicKey, type KeyObject, verify } from 'node:crypto'
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import {
  CertificateFormatError,
  type LenientCertificate,
  parseCertificateDer,
  parseCertificateTolerant,
  parsePemCertificates,
} from './x509-lenient.ts'

export {
  CertificateFormatError,
  type LenientCertificate,
  parseCertificateTolerant,
  parsePemCertificates,
} from './x509-lenient.ts'

export interface CertStore {
  dir: string
  certificates: LenientCertificate[]
  /** files that could not be read as certificates */
  warnings: string[]
}

export interface EkTrustOptions {
  storeDir?: string
  store?: CertStore
  /** untrusted intermediates that may complete the chain (e.g. read from TPM NV) */
  extraCertificates?: ReadonlyArray<string | Uint8Array | LenientCertificate>
  now?: Date
  strictExpiry?: boolean
  maxDepth?: number
}

export interface EkTrustResult {
  trusted: boolean
  /** subjects from the EK certificate to the trust anchor (partial when untrusted) */
  chain: string[]
  reason: string
  warnings: string[]
}

const STORE_EXTENSIONS = /\.(pem|crt|cer|der)$/i
const CLOCK_SKEW_MS = 5 * 60_000
const ISSUANCE_TOLERANCE_MS = 86_400_000

/** Reads every certificate file of a store directory (PEM bundles or DER); unreadable files become warnings. */
export async function loadCertStore(dir: string): Promise<CertStore> {
  const certificates: LenientCertificate[] = []
  const warnings: string[] = []
  let names: string[]
  try {
    names = (await readdir(dir)).filter((n) => STORE_EXTENSIONS.test(n)).sort()
  } catch (cause) {
    throw new CertificateFormatError(`cannot read certificate store ${dir}`, { cause })
  }
  for (const name of names) {
    try {
      const bytes = await readFile(join(dir, name))
      const found =
        bytes[0] === 0x30 ? [parseCertificateDer(bytes)] : parsePemCertificates(bytes.toString('latin1'))
      if (found.length === 0) warnings.push(`${name}: no certificate found`)
      certificates.push(...found)
    } catch (err) {
      warnings.push(`${name}: ${(err as Error).message}`)
    }
  }
  return { dir, certificates, warnings }
}

const RSA_HASHES: Record<string, string> = {
  '1.2.840.113549.1.1.5': 'sha1',
  '1.2.840.113549.1.1.11': 'sha256',
  '1.2.840.113549.1.1.12': 'sha384',
  '1.2.840.113549.1.1.13': 'sha512',
  '1.2.840.113549.1.1.14': 'sha224',
}
const ECDSA_HASHES: Record<string, string> = {
  '1.2.840.10045.4.1': 'sha1',
  '1.2.840.10045.4.3.1': 'sha224',
  '1.2.840.10045.4.3.2': 'sha256',
  '1.2.840.10045.4.3.3': 'sha384',
  '1.2.840.10045.4.3.4': 'sha512',
}
const HASH_OIDS: Record<string, string> = {
  '2b0e03021a': 'sha1',
  '608648016503040201': 'sha256',
  '608648016503040202': 'sha384',
  '608648016503040203': 'sha512',
}
const OID_PSS = '1.2.840.113549.1.1.10'

/**
 * RSASSA-PSS-params: the hash OID and salt length, read from their DER bytes by pattern (the structure is small
 * and fixed: [0] hash AlgorithmIdentifier, [1] MGF1 with its hash, [2] salt length).
 */
function pssParams(params: Uint8Array | null): { hash: string; saltLength: number } | null {
  if (params === null) return { hash: 'sha1', saltLength: 20 }
  const hex = Buffer.from(params).toString('hex')
  let hash = 'sha1'
  const hashMatch = /^30[0-9a-f]{2}a0[0-9a-f]{2}30[0-9a-f]{2}06([0-9a-f]{2})/.exec(hex)
  if (hashMatch) {
    const len = Number.parseInt(hashMatch[1] ?? '0', 16)
    const oidHex = hex.slice(hashMatch[0].length, hashMatch[0].length + len * 2)
    const name = HASH_OIDS[oidHex]
    if (!name) return null
    hash = name
  }
  let saltLength = 20
  const saltMatch = /a2[0-9a-f]{2}02([0-9a-f]{2})([0-9a-f]+)$/.exec(hex)
  if (saltMatch) {
    const len = Number.parseInt(saltMatch[1] ?? '0', 16)
    saltLength = Number.parseInt((saltMatch[2] ?? '').slice(0, len * 2), 16)
  }
  return { hash, saltLength }
}

/** Checks `child`'s signature with `issuer`'s public key over the exact tbsCertificate bytes. */
export function verifyCertificateSignature(
  child: LenientCertificate,
  issuer: LenientCertificate,
): string | null {
  const key = issuer.publicKey
  if (!key) return `issuer ${issuer.subject.text} has an unusable public key`
  const oid = child.signatureAlgorithm.oid
  try {
    let ok: boolean
    if (RSA_HASHES[oid]) {
      ok = verify(
        RSA_HASHES[oid] ?? '',
        child.tbs,
        { key, padding: constants.RSA_PKCS1_PADDING },
        child.signature,
      )
    } else if (ECDSA_HASHES[oid]) {
      ok = verify(ECDSA_HASHES[oid] ?? '', child.tbs, { key, dsaEncoding: 'der' }, child.signature)
    } else if (oid === OID_PSS) {
      const pss = pssParams(child.signatureAlgorithm.params)
      if (!pss) return `unsupported RSA-PSS parameters in ${child.subject.text}`
      ok = verify(
        pss.hash,
        child.tbs,
        { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: pss.saltLength },
        child.signature,
      )
    } else {
      return `unsupported signature algorithm ${oid} on ${child.subject.text}`
    }
    return ok
      ? null
      : `signature on ${describe(child)} does not verify with the key of ${issuer.subject.text}`
  } catch (err) {
    return `signature on ${describe(child)} cannot be checked with ${issuer.subject.text}: ${(err as Error).message}`
  }
}

function describe(c: LenientCertificate): string {
  return c.subject.text === '' ? `certificate serial ${c.serialHex}` : c.subject.text
}

function sameCert(a: LenientCertificate, b: LenientCertificate): boolean {
  return Buffer.from(a.der).equals(Buffer.from(b.der))
}

function issuerProblem(issuer: LenientCertificate): string | null {
  if (issuer.basicConstraints && !issuer.basicConstraints.ca)
    return `${issuer.subject.text} is not a CA (basicConstraints)`
  if (issuer.keyCertSign === false) return `${issuer.subject.text} may not sign certificates (keyUsage)`
  if (issuer.version === 3 && !issuer.basicConstraints)
    return `${issuer.subject.text} is a v3 certificate without basicConstraints`
  return null
}

/**
 * Verifies an EK certificate (PEM, DER, base64 DER or parsed) against a trust store. Never throws for an
 * untrusted certificate: `{trusted: false, reason}`; throws CertificateFormatError only for unreadable input.
 */
export async function verifyEkCertificate(
  ekCert: string | Uint8Array | LenientCertificate,
  storeDirOrOptions: string | EkTrustOptions,
): Promise<EkTrustResult> {
  const options = typeof storeDirOrOptions === 'string' ? { storeDir: storeDirOrOptions } : storeDirOrOptions
  const store =
    options.store ?? (options.storeDir !== undefined ? await loadCertStore(options.storeDir) : undefined)
  if (!store) throw new CertificateFormatError('verifyEkCertificate needs storeDir or store')
  return verifyEkCertificateWithStore(ekCert, store, options)
}

export function verifyEkCertificateWithStore(
  ekCert: string | Uint8Array | LenientCertificate,
  store: CertStore,
  options: Omit<EkTrustOptions, 'store' | 'storeDir'> = {},
): EkTrustResult {
  const leaf = isParsed(ekCert) ? ekCert : parseCertificateTolerant(ekCert)
  const extras = (options.extraCertificates ?? []).map((c) => (isParsed(c) ? c : parseCertificateTolerant(c)))
  const now = (options.now ?? new Date()).getTime()
  const maxDepth = options.maxDepth ?? 8
  const warnings: string[] = leaf.irregularities.map((i) => `EK certificate: ${i}`)

  const timeProblem = (c: LenientCertificate): string | null => {
    if (c.notBefore.getTime() > now + CLOCK_SKEW_MS)
      return `${describe(c)} is not valid before ${c.notBefore.toISOString()}`
    if (c.notAfter.getTime() < now) {
      if (options.strictExpiry) return `${describe(c)} expired on ${c.notAfter.toISOString()}`
      warnings.push(`${describe(c)} expired on ${c.notAfter.toISOString()} (accepted: chain validity model)`)
    }
    return null
  }
  const leafTime = timeProblem(leaf)
  if (leafTime) return { trusted: false, chain: [describe(leaf)], reason: leafTime, warnings }
  if (store.certificates.some((c) => sameCert(c, leaf))) {
    return { trusted: true, chain: [describe(leaf)], reason: 'certificate is pinned in the store', warnings }
  }

  let bestReason = `no certificate in the store (${store.dir}) is the issuer "${leaf.issuer.text}"`
  let bestDepth = -1

  const search = (cert: LenientCertificate, path: LenientCertificate[]): LenientCertificate[] | null => {
    if (path.length > maxDepth) return null
    const candidates = [
      ...store.certificates.map((c) => ({ c, anchor: true })),
      ...extras.map((c) => ({ c, anchor: false })),
    ]
      .filter(({ c }) => c.subject.key === cert.issuer.key && !path.some((p) => sameCert(p, c)))
      // prefer the issuer named by the authority key identifier, then anchors
      .sort((a, b) => rank(b, cert) - rank(a, cert))
    for (const { c, anchor } of candidates) {
      const fail = (reason: string): void => {
        if (path.length > bestDepth) {
          bestDepth = path.length
          bestReason = reason
        }
      }
      const constraint = issuerProblem(c)
      if (constraint) {
        fail(constraint)
        continue
      }
      const pathLen = c.basicConstraints?.pathLength
      if (pathLen !== null && pathLen !== undefined && path.length - 1 > pathLen) {
        fail(`${c.subject.text} allows ${pathLen} intermediate CA(s) below it`)
        continue
      }
      const sig = verifyCertificateSignature(cert, c)
      if (sig) {
        fail(sig)
        continue
      }
      // vendors date certificates loosely (STM's intermediate starts 12 h before its root): allow a day early
      if (
        cert.notBefore.getTime() < c.notBefore.getTime() - ISSUANCE_TOLERANCE_MS ||
        cert.notBefore.getTime() > c.notAfter.getTime()
      ) {
        fail(`${describe(cert)} was issued outside the validity period of ${c.subject.text}`)
        continue
      }
      const t = timeProblem(c)
      if (t) {
        fail(t)
        continue
      }
      if (anchor) return [...path, c]
      const found = search(c, [...path, c])
      if (found) return found
      if (path.length + 1 > bestDepth) {
        bestDepth = path.length + 1
        bestReason = `intermediate ${c.subject.text} does not chain to the store: ${bestReason}`
      }
    }
    return null
  }

  const path = search(leaf, [leaf])
  if (path) {
    return {
      trusted: true,
      chain: path.map(describe),
      reason: `chains to trusted ${path[path.length - 1]?.subject.text ?? ''}`,
      warnings,
    }
  }
  return { trusted: false, chain: [describe(leaf)], reason: bestReason, warnings }
}

/**
 * True when the certificate certifies exactly this public key (e.g. the EK the TPM reported): a trusted
 * EK certificate says nothing about a different key.
 */
export function certificateMatchesKey(cert: LenientCertificate, key: KeyObject): boolean {
  const certKey = cert.publicKey
  if (!certKey) return false
  const a = certKey.export({ type: 'spki', format: 'der' })
  const b = (key.type === 'private' ? createPublicKey(key) : key).export({ type: 'spki', format: 'der' })
  return a.equals(b)
}

function rank(entry: { c: LenientCertificate; anchor: boolean }, child: LenientCertificate): number {
  let score = entry.anchor ? 1 : 0
  if (child.authorityKeyId !== null && entry.c.subjectKeyId === child.authorityKeyId) score += 2
  return score
}

function isParsed(x: unknown): x is LenientCertificate {
  return typeof x === 'object' && x !== null && !(x instanceof Uint8Array) && 'tbs' in x
}
