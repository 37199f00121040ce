/**
 * Agent key material generated on first start (keylime-protocols.md §B step 5): the RSA-2048 payload key that
 * receives U and V and is bound into PCR 16, and the mTLS identity (ECC P-256, self-signed, CN = agent UUID,
 * SAN IP = contact_ip). Private keys are written with mode 0600 and never logged.
 */
import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
  webcrypto,
} from 'node:crypto'
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { isIP } from 'node:net'
import { dirname } from 'node:path'
import type * as X509 from '@peculiar/x509'
import { KeylimeError } from '../common/errors.ts'

export class AgentKeyError extends KeylimeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_AGENT_KEY', message, options)
  }
}

export interface PayloadKey {
  privateKey: KeyObject
  /** SPKI PEM exactly as served by `/keys/pubkey` and hashed into PCR 16. */
  publicPem: string
}

function writeSecretFile(path: string, data: string): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 })
  writeFileSync(path, data, { mode: 0o600 })
  chmodSync(path, 0o600)
}

function loadPrivateKey(path: string, passphrase: string): KeyObject {
  try {
    return createPrivateKey({ key: readFileSync(path), format: 'pem', ...(passphrase ? { passphrase } : {}) })
  } catch (err) {
    throw new AgentKeyError(`cannot load private key ${path}`, { cause: err })
  }
}

/** Loads `payload-private.pem`, or generates it. Upstream requires RSA-2048. */
export function ensurePayloadKey(path: string, passphrase = ''): PayloadKey {
  let privateKey: KeyObject
  if (existsSync(path)) {
    privateKey = loadPrivateKey(path, passphrase)
    if (privateKey.asymmetricKeyType !== 'rsa' || privateKey.asymmetricKeyDetails?.modulusLength !== 2048) {
      throw new AgentKeyError(`payload key ${path} must be RSA-2048`)
    }
  } else {
    const pair = generateKeyPairSync('rsa', { modulusLength: 2048, publicExponent: 0x10001 })
    privateKey = pair.privateKey
    const pem = passphrase
      ? privateKey.export({ type: 'pkcs8', format: 'pem', cipher: 'aes-256-cbc', passphrase })
      : privateKey.export({ type: 'pkcs8', format: 'pem' })
    writeSecretFile(path, pem.toString())
  }
  const publicPem = createPublicKey(privateKey).export({ type: 'spki', format: 'pem' }).toString()
  return { privateKey, publicPem }
}

export interface MtlsIdentity {
  keyPem: string
  certPem: string
}

/** Loads the mTLS key and certificate, generating whichever is missing (a new key always gets a new cert). */
export async function ensureMtlsIdentity(opts: {
  keyPath: string
  certPath: string
  uuid: string
  contactIp: string
  passphrase?: string
}): Promise<MtlsIdentity> {
  const passphrase = opts.passphrase ?? ''
  let keyObject: KeyObject
  let newKey = false
  if (existsSync(opts.keyPath)) {
    keyObject = loadPrivateKey(opts.keyPath, passphrase)
  } else {
    keyObject = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey
    newKey = true
    writeSecretFile(opts.keyPath, keyObject.export({ type: 'pkcs8', format: 'pem' }).toString())
  }
  const keyPem = keyObject.export({ type: 'pkcs8', format: 'pem' }).toString()
  if (!newKey && existsSync(opts.certPath)) return { keyPem, certPem: readFileSync(opts.certPath, 'utf8') }

  const certPem = await selfSignedCertificate(keyObject, opts.uuid, opts.contactIp)
  mkdirSync(dirname(opts.certPath), { recursive: true, mode: 0o700 })
  writeFileSync(opts.certPath, certPem, { mode: 0o644 })
  return { keyPem, certPem }
}

async function selfSignedCertificate(
  privateKey: KeyObject,
  uuid: string,
  contactIp: string,
): Promise<string> {
  // Loaded only when a certificate is made (first start): the library and its ASN.1 stack then stay out of a
  // running agent's memory.
  const { x509 } = await import('../crypto/x509-setup.ts')
  const isEc = privateKey.asymmetricKeyType === 'ec'
  const alg = isEc
    ? { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' }
    : { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }
  const pkcs8 = privateKey.export({ type: 'pkcs8', format: 'der' })
  const spki = createPublicKey(privateKey).export({ type: 'spki', format: 'der' })
  const keys = {
    privateKey: await webcrypto.subtle.importKey('pkcs8', pkcs8, alg, false, ['sign']),
    publicKey: await webcrypto.subtle.importKey('spki', spki, alg, true, ['verify']),
  }
  const now = Date.now()
  const sans: X509.JsonGeneralName[] = isIP(contactIp)
    ? [{ type: 'ip', value: contactIp }]
    : [{ type: 'dns', value: contactIp }]
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: Buffer.from(webcrypto.getRandomValues(new Uint8Array(8)))
      .toString('hex')
      .replace(/^[89a-f]/, '1'),
    name: `CN=${uuid.replace(/[,+"\\<>;=]/g, '_')}`,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + 365 * 86_400_000),
    signingAlgorithm: alg,
    keys: keys as never,
    extensions: [
      new x509.SubjectAlternativeNameExtension(sans),
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(
        x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyAgreement,
        true,
      ),
      new x509.ExtendedKeyUsageExtension([
        x509.ExtendedKeyUsage.serverAuth,
        x509.ExtendedKeyUsage.clientAuth,
      ]),
    ],
  })
  return cert.toString('pem')
}
