/**
 * Keylime certificate authority in upstream's `keylime_ca` / `cv_ca` directory layout:
 * `cacert.crt`, `ca-private.pem`, `ca-public.pem`, `cacrl.der`, `cacrl.pem`, and per issued name
 * `<name>-cert.crt`, `<name>-private.pem`, `<name>-public.pem`. Serials and revocations are tracked in
 * `ca-index.json`. Keys are written 0600, the directory 0700. Upstream's password-encrypted `private.yml`
 * is not produced: the CA key is a plain 0600 PEM (see the report / docs).
 */
import { createPrivateKey, createPublicKey, type KeyObject, randomBytes, type webcrypto } from 'node:crypto'
import { chmod, mkdir, open, readFile, rename, stat, unlink, writeFile } from 'node:fs/promises'
import { isIP } from 'node:net'
import { join } from 'node:path'
import { KeylimeError } from '../common/errors.ts'
import { type CryptoKey, type CryptoKeyPair, subtle, x509 } from './x509-setup.ts'

const CA_ERROR_STATUS = {
  ERR_CA_INPUT: 400,
  ERR_CA_NOT_FOUND: 404,
  ERR_CA_EXISTS: 409,
  ERR_CA_MISSING: 500,
  ERR_CA_CORRUPT: 500,
  ERR_CA_LOCKED: 503,
} as const

export class CaError extends KeylimeError {
  constructor(
    code:
      | 'ERR_CA_MISSING'
      | 'ERR_CA_EXISTS'
      | 'ERR_CA_INPUT'
      | 'ERR_CA_CORRUPT'
      | 'ERR_CA_LOCKED'
      | 'ERR_CA_NOT_FOUND',
    message: string,
    options?: { cause?: unknown },
  ) {
    super(code, message, { statusCode: CA_ERROR_STATUS[code], ...options })
  }
}

export type KeyType = 'rsa' | 'ec'
export type CertUsage = 'server' | 'client' | 'both'

/** Subject fields and defaults, as in `ca.conf` `[ca]`. */
export interface CaSettings {
  commonName: string
  country: string
  state: string
  locality: string
  organization: string
  orgUnit: string
  caLifetimeDays: number
  certLifetimeDays: number
  keyType: KeyType
  rsaBits: number
  /** `cert_crl_dist`; omitted from certificates when empty */
  crlDistributionUrl: string
}

export const DEFAULT_CA_SETTINGS: CaSettings = {
  commonName: 'Keylime Certificate Authority',
  country: 'US',
  state: 'MA',
  locality: 'Lexington',
  organization: 'Keylime',
  orgUnit: '53',
  caLifetimeDays: 3650,
  certLifetimeDays: 365,
  keyType: 'rsa',
  rsaBits: 2048,
  crlDistributionUrl: 'http://localhost:38080/crl',
}

export interface CaIndexEntry {
  name: string
  serial: string
  subject: string
  notBefore: string
  notAfter: string
  revoked: { date: string; reason: number } | null
}

interface CaIndex {
  version: 1
  lastSerial: string
  settings: CaSettings
  certificates: CaIndexEntry[]
}

export interface CertificateAuthority {
  dir: string
  cert: x509.X509Certificate
  certPem: string
  privateKey: KeyObject
  settings: CaSettings
  /** @internal */ signingKey: CryptoKey
  /** @internal */ index: CaIndex
}

export const CA_FILES = {
  cert: 'cacert.crt',
  privateKey: 'ca-private.pem',
  publicKey: 'ca-public.pem',
  crlDer: 'cacrl.der',
  crlPem: 'cacrl.pem',
  index: 'ca-index.json',
  lock: '.ca.lock',
} as const

const DAY_MS = 86_400_000
const CRL_VALIDITY_DAYS = 30
const NAME_RE = /^[A-Za-z0-9_][A-Za-z0-9._@-]{0,127}$/

export function certPaths(
  dir: string,
  name: string,
): { cert: string; privateKey: string; publicKey: string } {
  return {
    cert: join(dir, `${name}-cert.crt`),
    privateKey: join(dir, `${name}-private.pem`),
    publicKey: join(dir, `${name}-public.pem`),
  }
}

// ---------------------------------------------------------------- files and locking

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path)
    return true
  } catch {
    return false
  }
}

/** Writes via a temporary file + rename so readers never see half a key or certificate. */
async function writeFileAtomic(path: string, data: string | Uint8Array, mode: number): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`
  await writeFile(tmp, data, { mode })
  await chmod(tmp, mode)
  await rename(tmp, path)
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

/** Cross-process exclusive lock on a CA directory (verifier and registrar may both run `tls_dir = generate`). */
async function withDirLock<T>(dir: string, fn: () => Promise<T>): Promise<T> {
  const lockPath = join(dir, CA_FILES.lock)
  const deadline = Date.now() + 20_000
  for (;;) {
    try {
      const handle = await open(lockPath, 'wx', 0o600)
      await handle.writeFile(String(process.pid))
      await handle.close()
      break
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      const info = await stat(lockPath).catch(() => null)
      if (info && Date.now() - info.mtimeMs > 60_000) await unlink(lockPath).catch(() => undefined)
      if (Date.now() > deadline)
        throw new CaError('ERR_CA_LOCKED', `CA directory ${dir} is locked (${lockPath})`)
      await sleep(25 + Math.random() * 50)
    }
  }
  try {
    return await fn()
  } finally {
    await unlink(lockPath).catch(() => undefined)
  }
}

// ---------------------------------------------------------------- keys

function signingAlgorithmFor(keyType: KeyType): webcrypto.RsaHashedImportParams | webcrypto.EcdsaParams {
  return keyType === 'rsa'
    ? { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }
    : { name: 'ECDSA', hash: 'SHA-256' }
}

async function generateKeys(keyType: KeyType, rsaBits: number): Promise<CryptoKeyPair> {
  const alg =
    keyType === 'rsa'
      ? {
          name: 'RSASSA-PKCS1-v1_5',
          modulusLength: rsaBits,
          publicExponent: new Uint8Array([1, 0, 1]),
          hash: 'SHA-256',
        }
      : { name: 'ECDSA', namedCurve: 'P-256' }
  return (await subtle.generateKey(alg, true, ['sign', 'verify'])) as CryptoKeyPair
}

async function keyObjectOf(privateKey: CryptoKey): Promise<KeyObject> {
  const der = Buffer.from(await subtle.exportKey('pkcs8', privateKey))
  return createPrivateKey({ key: der, format: 'der', type: 'pkcs8' })
}

const CURVES: Record<string, string> = { prime256v1: 'P-256', secp384r1: 'P-384', secp521r1: 'P-521' }

async function importSigningKey(key: KeyObject): Promise<{ signingKey: CryptoKey; keyType: KeyType }> {
  const der = key.export({ format: 'der', type: 'pkcs8' })
  if (key.asymmetricKeyType === 'rsa') {
    const signingKey = await subtle.importKey('pkcs8', der, signingAlgorithmFor('rsa'), false, ['sign'])
    return { signingKey, keyType: 'rsa' }
  }
  const curve = CURVES[key.asymmetricKeyDetails?.namedCurve ?? '']
  if (key.asymmetricKeyType === 'ec' && curve) {
    const signingKey = await subtle.importKey('pkcs8', der, { name: 'ECDSA', namedCurve: curve }, false, [
      'sign',
    ])
    return { signingKey, keyType: 'ec' }
  }
  throw new CaError('ERR_CA_CORRUPT', `unsupported CA key type ${key.asymmetricKeyType}`)
}

// ---------------------------------------------------------------- names, serials

function subjectOf(settings: CaSettings, commonName: string): x509.JsonName {
  const rdns: x509.JsonName = []
  const add = (type: string, value: string): void => {
    if (value !== '') rdns.push({ [type]: [value] })
  }
  add('C', settings.country)
  add('ST', settings.state)
  add('L', settings.locality)
  add('O', settings.organization)
  add('OU', settings.orgUnit)
  add('CN', commonName)
  return rdns
}

/** DER INTEGER content as hex for a positive serial (leading 00 when the top bit is set). */
function serialHex(serial: bigint): string {
  let hex = serial.toString(16)
  if (hex.length % 2) hex = `0${hex}`
  if (Number.parseInt(hex.slice(0, 2), 16) >= 0x80) hex = `00${hex}`
  return hex
}

function nextSerial(index: CaIndex): bigint {
  const serial = BigInt(index.lastSerial) + 1n
  index.lastSerial = serial.toString()
  return serial
}

function validateName(name: string): void {
  if (!NAME_RE.test(name) || name === 'ca' || name.includes('..')) {
    throw new CaError(
      'ERR_CA_INPUT',
      `invalid certificate name ${JSON.stringify(name)} (letters, digits, . _ @ -)`,
    )
  }
}

// ---------------------------------------------------------------- CA

async function readIndex(dir: string): Promise<CaIndex> {
  let text: string
  try {
    text = await readFile(join(dir, CA_FILES.index), 'utf8')
  } catch (cause) {
    throw new CaError('ERR_CA_CORRUPT', `CA index ${CA_FILES.index} missing in ${dir}`, { cause })
  }
  try {
    const index = JSON.parse(text) as CaIndex
    if (index.version !== 1 || !Array.isArray(index.certificates)) throw new Error('unexpected shape')
    index.settings = { ...DEFAULT_CA_SETTINGS, ...index.settings }
    return index
  } catch (cause) {
    throw new CaError('ERR_CA_CORRUPT', `CA index ${join(dir, CA_FILES.index)} is corrupt`, { cause })
  }
}

async function writeIndex(ca: CertificateAuthority): Promise<void> {
  await writeFileAtomic(join(ca.dir, CA_FILES.index), `${JSON.stringify(ca.index, null, 2)}\n`, 0o600)
}

export async function caExists(dir: string): Promise<boolean> {
  return (await exists(join(dir, CA_FILES.cert))) && (await exists(join(dir, CA_FILES.privateKey)))
}

/** Creates a new CA (self-signed root, empty CRL). Refuses to overwrite an existing one. */
export async function createCa(
  dir: string,
  options: Partial<CaSettings> = {},
): Promise<CertificateAuthority> {
  await mkdir(dir, { recursive: true, mode: 0o700 })
  return withDirLock(dir, () => createCaUnlocked(dir, options))
}

async function createCaUnlocked(dir: string, options: Partial<CaSettings>): Promise<CertificateAuthority> {
  if (await caExists(dir)) throw new CaError('ERR_CA_EXISTS', `a CA already exists in ${dir}`)
  if (await exists(join(dir, CA_FILES.cert))) {
    // e.g. a CA made by upstream keylime (key inside the password-protected private.yml): never replace it
    throw new CaError(
      'ERR_CA_EXISTS',
      `${join(dir, CA_FILES.cert)} exists without ${CA_FILES.privateKey}; refusing to replace that CA ` +
        `(export its key as ${CA_FILES.privateKey} to use it)`,
    )
  }
  const settings: CaSettings = { ...DEFAULT_CA_SETTINGS, ...options }
  if (!(settings.caLifetimeDays > 0) || !(settings.certLifetimeDays > 0)) {
    throw new CaError('ERR_CA_INPUT', 'certificate lifetimes must be positive numbers of days')
  }
  if (settings.keyType === 'rsa' && (settings.rsaBits < 2048 || settings.rsaBits > 8192)) {
    throw new CaError('ERR_CA_INPUT', `RSA key size ${settings.rsaBits} out of range 2048..8192`)
  }
  const keys = await generateKeys(settings.keyType, settings.rsaBits)
  const now = new Date()
  const serial = 1n
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serialHex(serial),
    name: subjectOf(settings, settings.commonName),
    notBefore: new Date(now.getTime() - 5 * 60_000),
    notAfter: new Date(now.getTime() + settings.caLifetimeDays * DAY_MS),
    keys,
    signingAlgorithm: signingAlgorithmFor(settings.keyType),
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(
        x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature,
        true,
      ),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  })
  const privateKey = await keyObjectOf(keys.privateKey)
  const certPem = cert.toString('pem')
  await chmod(dir, 0o700)
  await writeFileAtomic(
    join(dir, CA_FILES.privateKey),
    privateKey.export({ type: 'pkcs8', format: 'pem' }),
    0o600,
  )
  await writeFileAtomic(join(dir, CA_FILES.publicKey), publicPemOf(privateKey), 0o644)
  await writeFileAtomic(join(dir, CA_FILES.cert), `${certPem}\n`, 0o644)
  const ca: CertificateAuthority = {
    dir,
    cert,
    certPem,
    privateKey,
    settings,
    signingKey: keys.privateKey,
    index: { version: 1, lastSerial: serial.toString(), settings, certificates: [] },
  }
  await writeIndex(ca)
  await writeCrl(ca)
  return ca
}

function publicPemOf(key: KeyObject): string {
  return createPublicKey(key).export({ type: 'spki', format: 'pem' }).toString()
}

/** Loads an existing CA; checks that the private key matches the certificate. */
export async function loadCa(dir: string): Promise<CertificateAuthority> {
  if (!(await caExists(dir))) {
    throw new CaError(
      'ERR_CA_MISSING',
      `no CA in ${dir} (expected ${CA_FILES.cert} and ${CA_FILES.privateKey})`,
    )
  }
  let cert: x509.X509Certificate
  let privateKey: KeyObject
  try {
    cert = new x509.X509Certificate(await readFile(join(dir, CA_FILES.cert), 'utf8'))
    privateKey = createPrivateKey(await readFile(join(dir, CA_FILES.privateKey)))
  } catch (cause) {
    throw new CaError('ERR_CA_CORRUPT', `CA certificate or key in ${dir} cannot be parsed`, { cause })
  }
  const certSpki = Buffer.from(cert.publicKey.rawData)
  const keySpki = createPublicKey(privateKey).export({ type: 'spki', format: 'der' })
  if (!certSpki.equals(keySpki))
    throw new CaError('ERR_CA_CORRUPT', `${CA_FILES.privateKey} does not match ${CA_FILES.cert}`)
  const { signingKey, keyType } = await importSigningKey(privateKey)
  const index = (await exists(join(dir, CA_FILES.index)))
    ? await readIndex(dir)
    : // a CA imported from elsewhere: start tracking from the CA's own serial
      {
        version: 1 as const,
        lastSerial: BigInt(`0x${cert.serialNumber}`).toString(),
        settings: { ...DEFAULT_CA_SETTINGS, keyType },
        certificates: [],
      }
  return { dir, cert, certPem: cert.toString('pem'), privateKey, settings: index.settings, signingKey, index }
}

// ---------------------------------------------------------------- issuing

export interface IssueOptions {
  commonName: string
  /** file stem for `<name>-cert.crt` etc.; defaults to the common name */
  name?: string
  /** DNS names and IP addresses (auto-detected) for subjectAltName */
  sans?: readonly string[]
  usage?: CertUsage
  keyType?: KeyType
  rsaBits?: number
  lifetimeDays?: number
  /** replace an existing `<name>` (default: refuse) */
  overwrite?: boolean
}

export interface IssuedCertificate {
  name: string
  serial: bigint
  cert: x509.X509Certificate
  certPem: string
  privateKeyPem: string
  publicKeyPem: string
  paths: { cert: string; privateKey: string; publicKey: string }
}

/** Issues a certificate + fresh key, writes `<name>-cert.crt`, `<name>-private.pem` (0600), `<name>-public.pem`. */
export async function issueCertificate(
  ca: CertificateAuthority,
  options: IssueOptions,
): Promise<IssuedCertificate> {
  return withDirLock(ca.dir, async () => {
    ca.index = await readIndex(ca.dir)
    return issueUnlocked(ca, options)
  })
}

function generalNames(sans: readonly string[]): x509.JsonGeneralNames {
  return sans.map((san) => {
    const value = san.trim()
    if (value === '' || /[\s,]/.test(value))
      throw new CaError('ERR_CA_INPUT', `invalid subjectAltName ${JSON.stringify(san)}`)
    return { type: isIP(value) ? 'ip' : 'dns', value }
  })
}

async function issueUnlocked(ca: CertificateAuthority, options: IssueOptions): Promise<IssuedCertificate> {
  const name = options.name ?? options.commonName
  validateName(name)
  if (options.commonName === '' || options.commonName.length > 64) {
    throw new CaError('ERR_CA_INPUT', 'common name must be 1..64 characters')
  }
  const paths = certPaths(ca.dir, name)
  if (!options.overwrite && (await exists(paths.cert))) {
    throw new CaError('ERR_CA_EXISTS', `a certificate named ${name} already exists in ${ca.dir}`)
  }
  const keyType = options.keyType ?? ca.settings.keyType
  const usage = options.usage ?? 'both'
  const lifetimeDays = options.lifetimeDays ?? ca.settings.certLifetimeDays
  if (!(lifetimeDays > 0)) throw new CaError('ERR_CA_INPUT', 'lifetime must be a positive number of days')
  const sanList = generalNames(options.sans ?? [])
  const serial = nextSerial(ca.index)
  const keys = await generateKeys(keyType, options.rsaBits ?? ca.settings.rsaBits)
  const now = Date.now()
  const notAfter = Math.min(now + lifetimeDays * DAY_MS, ca.cert.notAfter.getTime())
  const ekus: string[] = []
  if (usage !== 'client') ekus.push(x509.ExtendedKeyUsage.serverAuth)
  if (usage !== 'server') ekus.push(x509.ExtendedKeyUsage.clientAuth)
  const keyUsage =
    keyType === 'rsa'
      ? x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment
      : x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyAgreement
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.KeyUsagesExtension(keyUsage, true),
    new x509.ExtendedKeyUsageExtension(ekus, false),
    await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    await x509.AuthorityKeyIdentifierExtension.create(ca.cert.publicKey),
  ]
  if (sanList.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(sanList, false))
  if (ca.settings.crlDistributionUrl !== '') {
    extensions.push(new x509.CRLDistributionPointsExtension([ca.settings.crlDistributionUrl]))
  }
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serialHex(serial),
    subject: subjectOf(ca.settings, options.commonName),
    issuer: ca.cert.subjectName,
    notBefore: new Date(now - 5 * 60_000),
    notAfter: new Date(notAfter),
    publicKey: keys.publicKey,
    signingKey: ca.signingKey,
    signingAlgorithm: signingAlgorithmFor(ca.privateKey.asymmetricKeyType === 'rsa' ? 'rsa' : 'ec'),
    extensions,
  })
  const privateKey = await keyObjectOf(keys.privateKey)
  const issued: IssuedCertificate = {
    name,
    serial,
    cert,
    certPem: cert.toString('pem'),
    privateKeyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicKeyPem: publicPemOf(privateKey),
    paths,
  }
  await writeFileAtomic(paths.privateKey, issued.privateKeyPem, 0o600)
  await writeFileAtomic(paths.publicKey, issued.publicKeyPem, 0o644)
  await writeFileAtomic(paths.cert, `${issued.certPem}\n`, 0o644)
  ca.index.certificates = ca.index.certificates.filter((c) => c.name !== name || c.revoked !== null)
  ca.index.certificates.push({
    name,
    serial: serial.toString(),
    subject: cert.subject,
    notBefore: cert.notBefore.toISOString(),
    notAfter: cert.notAfter.toISOString(),
    revoked: null,
  })
  await writeIndex(ca)
  return issued
}

// ---------------------------------------------------------------- revocation and CRL

export function listCertificates(ca: CertificateAuthority): readonly CaIndexEntry[] {
  return ca.index.certificates
}

/**
 * Revokes the live certificate called `nameOrSerial` (or with that decimal serial) and rewrites the CRL.
 * Revoking an already revoked certificate is refused.
 */
export async function revokeCertificate(
  ca: CertificateAuthority,
  nameOrSerial: string,
  reason: x509.X509CrlReason = x509.X509CrlReason.unspecified,
): Promise<CaIndexEntry> {
  return withDirLock(ca.dir, async () => {
    ca.index = await readIndex(ca.dir)
    const entry =
      ca.index.certificates.find((c) => c.name === nameOrSerial && c.revoked === null) ??
      ca.index.certificates.find((c) => c.serial === nameOrSerial)
    if (!entry)
      throw new CaError('ERR_CA_NOT_FOUND', `no certificate ${JSON.stringify(nameOrSerial)} in ${ca.dir}`)
    if (entry.revoked !== null)
      throw new CaError(
        'ERR_CA_INPUT',
        `certificate ${entry.name} (serial ${entry.serial}) is already revoked`,
      )
    entry.revoked = { date: new Date().toISOString(), reason }
    await writeIndex(ca)
    await writeCrl(ca)
    return entry
  })
}

export interface Crl {
  der: Uint8Array
  pem: string
}

/** Builds a fresh CRL (thisUpdate now, nextUpdate +30 days) listing every revoked serial. */
export async function buildCrl(ca: CertificateAuthority, now = new Date()): Promise<Crl> {
  const crl = await x509.X509CrlGenerator.create({
    issuer: ca.cert.subjectName,
    thisUpdate: now,
    nextUpdate: new Date(now.getTime() + CRL_VALIDITY_DAYS * DAY_MS),
    entries: ca.index.certificates
      .filter((c) => c.revoked !== null)
      .map((c) => ({
        serialNumber: serialHex(BigInt(c.serial)),
        revocationDate: new Date(c.revoked?.date ?? now),
        reason: c.revoked?.reason ?? 0,
      })),
    extensions: [await x509.AuthorityKeyIdentifierExtension.create(ca.cert.publicKey)],
    signingKey: ca.signingKey,
    signingAlgorithm: signingAlgorithmFor(ca.privateKey.asymmetricKeyType === 'rsa' ? 'rsa' : 'ec'),
  })
  // OpenSSL and upstream expect the 'X509 CRL' PEM label (the library writes plain 'CRL')
  return { der: new Uint8Array(crl.rawData), pem: x509.PemConverter.encode(crl.rawData, 'X509 CRL') }
}

/** Regenerates and writes `cacrl.der` and `cacrl.pem`. */
export async function writeCrl(ca: CertificateAuthority): Promise<Crl> {
  const crl = await buildCrl(ca)
  await writeFileAtomic(join(ca.dir, CA_FILES.crlDer), crl.der, 0o644)
  await writeFileAtomic(join(ca.dir, CA_FILES.crlPem), `${crl.pem}\n`, 0o644)
  return crl
}

// ---------------------------------------------------------------- tls_dir = generate

export interface TlsDirOptions {
  /** subjectAltNames of the server certificate (DNS or IP); default localhost, 127.0.0.1, ::1 */
  serverSans?: readonly string[]
  /** CN of the server certificate; default the first SAN */
  serverCommonName?: string
  keyType?: KeyType
  ca?: Partial<CaSettings>
}

export interface TlsDir {
  dir: string
  caCert: string
  caKey: string
  serverCert: string
  serverKey: string
  clientCert: string
  clientKey: string
  /** names of the files created by this call (empty when everything already existed) */
  created: string[]
}

/**
 * `tls_dir = generate`: on first start creates the CA, `server-cert.crt`/`server-private.pem` and
 * `client-cert.crt`/`client-private.pem` (CN `client`); later calls reuse what exists and only fill gaps.
 * Safe against concurrent callers (directory lock).
 */
export async function ensureTlsDir(dir: string, options: TlsDirOptions = {}): Promise<TlsDir> {
  await mkdir(dir, { recursive: true, mode: 0o700 })
  return withDirLock(dir, async () => {
    const created: string[] = []
    const serverSans = options.serverSans ?? ['localhost', '127.0.0.1', '::1']
    const wanted: Array<{ name: 'server' | 'client'; commonName: string; sans: readonly string[] }> = [
      { name: 'server', commonName: options.serverCommonName ?? serverSans[0] ?? 'server', sans: serverSans },
      { name: 'client', commonName: 'client', sans: [] },
    ]
    const missing: typeof wanted = []
    for (const w of wanted) {
      const paths = certPaths(dir, w.name)
      if (!((await exists(paths.cert)) && (await exists(paths.privateKey)))) missing.push(w)
    }
    // the CA key is needed only to issue what is missing: a directory whose certificates all exist is used as it
    // is, e.g. the cv_ca of upstream Keylime, which keeps its CA key encrypted in private.yml
    if (missing.length > 0 || !(await exists(join(dir, CA_FILES.cert)))) {
      let ca: CertificateAuthority
      if (await caExists(dir)) {
        ca = await loadCa(dir)
      } else {
        ca = await createCaUnlocked(dir, {
          ...options.ca,
          ...(options.keyType ? { keyType: options.keyType } : {}),
        })
        created.push(CA_FILES.cert, CA_FILES.privateKey)
      }
      for (const w of missing) {
        await issueUnlocked(ca, {
          name: w.name,
          commonName: w.commonName,
          sans: w.sans,
          usage: 'both',
          overwrite: true,
          ...(options.keyType ? { keyType: options.keyType } : {}),
        })
        created.push(`${w.name}-cert.crt`, `${w.name}-private.pem`)
      }
    }
    const server = certPaths(dir, 'server')
    const client = certPaths(dir, 'client')
    return {
      dir,
      caCert: join(dir, CA_FILES.cert),
      caKey: join(dir, CA_FILES.privateKey),
      serverCert: server.cert,
      serverKey: server.privateKey,
      clientCert: client.cert,
      clientKey: client.privateKey,
      created,
    }
  })
}
