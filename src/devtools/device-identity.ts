/**
 * Development provisioning of device identity, as a manufacturer would do it, on a swtpm: a test CA of ours
 * certifies the TPM's IAK and IDevID (TCG "TPM 2.0 Keys for Device Identity and Attestation" templates H-1..H-4)
 * into files and/or NV indices, and can re-issue the EK certificate under an intermediate CA whose certificate goes
 * into the EK CA chain NV range (as e.g. Intel PTT ships it). Never for production TPMs.
 */
import { webcrypto } from 'node:crypto'

type CryptoKey = webcrypto.CryptoKey
type CryptoKeyPair = webcrypto.CryptoKeyPair

import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import * as x509 from '@peculiar/x509'
import { publicAreaToKeyObject } from '../crypto/tpm-public.ts'
import { EkCaChainNvRange, EkCertNvIndex } from '../tpm/constants.ts'
import {
  createDeviceIdKey,
  createEk,
  type EncAlgName,
  flushContext,
  nvDefineAndWrite,
  readPublic,
} from '../tpm/keylime-client.ts'
import type { DeviceIdTemplateName } from '../tpm/templates.ts'
import { Tpm } from '../tpm/tpm.ts'

x509.cryptoProvider.set(webcrypto as never)

const SIGNING = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const

export interface TestCa {
  certPem: string
  cert: x509.X509Certificate
  keys: CryptoKeyPair
  /** PKCS#8 PEM of the CA key (a development CA: kept beside its certificate). */
  keyPem: string
}

function serial(): string {
  return Buffer.from(webcrypto.getRandomValues(new Uint8Array(12)))
    .toString('hex')
    .replace(/^[89a-f]/, '1')
}

async function caFromKeys(keys: CryptoKeyPair, cert: x509.X509Certificate): Promise<TestCa> {
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey))
  const keyPem = `-----BEGIN PRIVATE KEY-----\n${pkcs8.toString('base64').replace(/.{1,64}/g, '$&\n')}-----END PRIVATE KEY-----\n`
  return { certPem: cert.toString('pem'), cert, keys, keyPem }
}

/** A self-signed root CA (ECDSA P-256), or an intermediate CA signed by `issuer`. */
export async function createTestCa(commonName: string, issuer?: TestCa): Promise<TestCa> {
  const keys = (await webcrypto.subtle.generateKey(SIGNING, true, ['sign', 'verify'])) as CryptoKeyPair
  const now = Date.now()
  const extensions = [
    new x509.BasicConstraintsExtension(true, issuer ? 0 : 1, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
    await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
  ]
  const common = {
    serialNumber: serial(),
    notBefore: new Date(now - 86_400_000),
    notAfter: new Date(now + 10 * 365 * 86_400_000),
    signingAlgorithm: SIGNING,
    extensions,
  }
  const cert = issuer
    ? await x509.X509CertificateGenerator.create({
        ...common,
        subject: `CN=${commonName}, O=Keylime TS development`,
        issuer: issuer.cert.subject,
        publicKey: keys.publicKey,
        signingKey: issuer.keys.privateKey,
      })
    : await x509.X509CertificateGenerator.createSelfSigned({
        ...common,
        name: `CN=${commonName}, O=Keylime TS development`,
        keys,
      })
  return caFromKeys(keys, cert)
}

/** Writes `ca-cert.pem` and `ca-private.pem` (0600) into `dir`. */
export function saveTestCa(ca: TestCa, dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 })
  writeFileSync(join(dir, 'ca-cert.pem'), ca.certPem)
  writeFileSync(join(dir, 'ca-private.pem'), ca.keyPem, { mode: 0o600 })
}

export async function loadTestCa(dir: string): Promise<TestCa> {
  const cert = new x509.X509Certificate(readFileSync(join(dir, 'ca-cert.pem'), 'utf8'))
  const pkcs8 = Buffer.from(
    readFileSync(join(dir, 'ca-private.pem'), 'utf8').replace(/-----[^-]+-----|\s/g, ''),
    'base64',
  )
  const privateKey = await webcrypto.subtle.importKey('pkcs8', pkcs8, SIGNING, true, ['sign'])
  const publicKey = await cert.publicKey.export(SIGNING, ['verify'])
  return caFromKeys({ privateKey, publicKey }, cert)
}

const WEBCRYPTO_CURVES: Record<string, string> = {
  prime256v1: 'P-256',
  secp384r1: 'P-384',
  secp521r1: 'P-521',
}

/** WebCrypto form of a TPM key (only used as the subject key of a certificate). */
async function tpmKeyForCertificate(tpm2bPublic: Uint8Array): Promise<CryptoKey> {
  const key = publicAreaToKeyObject(tpm2bPublic)
  const spki = key.export({ type: 'spki', format: 'der' })
  const curve = WEBCRYPTO_CURVES[key.asymmetricKeyDetails?.namedCurve ?? '']
  const alg =
    key.asymmetricKeyType === 'rsa'
      ? { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }
      : { name: 'ECDSA', namedCurve: curve ?? 'unsupported' }
  return webcrypto.subtle.importKey('spki', spki, alg, true, ['verify'])
}

/** Certificate (PEM) of a TPM key, issued by `ca`. */
export async function issueTpmKeyCertificate(
  ca: TestCa,
  tpm2bPublic: Uint8Array,
  subject: string,
  usage: 'identity' | 'endorsement',
): Promise<string> {
  const now = Date.now()
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject,
    issuer: ca.cert.subject,
    notBefore: new Date(now - 3_600_000),
    notAfter: new Date(now + 10 * 365 * 86_400_000),
    signingAlgorithm: SIGNING,
    publicKey: await tpmKeyForCertificate(tpm2bPublic),
    signingKey: ca.keys.privateKey,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(
        usage === 'identity' ? x509.KeyUsageFlags.digitalSignature : x509.KeyUsageFlags.keyEncipherment,
        true,
      ),
      await x509.AuthorityKeyIdentifierExtension.create(ca.keys.publicKey),
    ],
  })
  return cert.toString('pem')
}

function pemToDer(pem: string): Uint8Array {
  return Buffer.from(pem.replace(/-----[^-]+-----|\s/g, ''), 'base64')
}

export interface DeviceIdentity {
  template: DeviceIdTemplateName
  iakPublic: Uint8Array
  idevidPublic: Uint8Array
  iakCertPem: string
  idevidCertPem: string
  /** Files written when `outDir` was given (`iak-cert.crt`, `idevid-cert.crt`, the agent's default names). */
  files?: { iakCert: string; idevidCert: string }
}

export interface ProvisionDeviceIdentityOptions {
  /** TPM transport (`swtpm:host=…,port=…`, `/dev/tpmrm0`). */
  tpm: string
  ca: TestCa
  template?: DeviceIdTemplateName
  /** Directory for `iak-cert.crt` and `idevid-cert.crt` (PEM). */
  outDir?: string
  /** Also store the DER certificates at these NV indices. */
  nv?: { iak: number; idevid: number }
  endorsementPassword?: string
  ownerPassword?: string
}

/** Creates the TPM's IAK and IDevID from `template` and certifies both with `ca`. */
export async function provisionDeviceIdentity(o: ProvisionDeviceIdentityOptions): Promise<DeviceIdentity> {
  const template = o.template ?? 'H-1'
  const tpm = await Tpm.open(o.tpm)
  try {
    const auth = o.endorsementPassword ? { endorsementPassword: o.endorsementPassword } : {}
    const iak = await createDeviceIdKey(tpm, 'iak', template, auth)
    await flushContext(tpm, iak.handle)
    const idevid = await createDeviceIdKey(tpm, 'idevid', template, auth)
    await flushContext(tpm, idevid.handle)
    const device = `O=Keylime TS development device ${Buffer.from(iak.name).subarray(2, 8).toString('hex')}`
    const iakCertPem = await issueTpmKeyCertificate(o.ca, iak.publicArea, `CN=IAK, ${device}`, 'identity')
    const idevidCertPem = await issueTpmKeyCertificate(
      o.ca,
      idevid.publicArea,
      `CN=IDevID, ${device}`,
      'identity',
    )
    const out: DeviceIdentity = {
      template,
      iakPublic: iak.publicArea,
      idevidPublic: idevid.publicArea,
      iakCertPem,
      idevidCertPem,
    }
    if (o.outDir) {
      mkdirSync(o.outDir, { recursive: true })
      const files = { iakCert: join(o.outDir, 'iak-cert.crt'), idevidCert: join(o.outDir, 'idevid-cert.crt') }
      writeFileSync(files.iakCert, iakCertPem)
      writeFileSync(files.idevidCert, idevidCertPem)
      out.files = files
    }
    if (o.nv) {
      const owner = o.ownerPassword ? { ownerPassword: o.ownerPassword } : {}
      await nvDefineAndWrite(tpm, o.nv.iak, pemToDer(iakCertPem), owner)
      await nvDefineAndWrite(tpm, o.nv.idevid, pemToDer(idevidCertPem), owner)
    }
    return out
  } finally {
    await tpm.close()
  }
}

/** The TCG EK certificate index for an EK's key: L-1 RSA 2048, H-6 RSA 3072, L-2 P-256, H-3 P-384. */
function ekCertificateIndex(ekPublic: Uint8Array): number {
  const key = publicAreaToKeyObject(ekPublic)
  const d = key.asymmetricKeyDetails
  const index =
    key.asymmetricKeyType === 'rsa'
      ? { 2048: EkCertNvIndex.rsa, 3072: 0x01c0001c }[d?.modulusLength ?? 0]
      : { prime256v1: EkCertNvIndex.ecc, secp384r1: 0x01c00016 }[d?.namedCurve ?? '']
  if (index === undefined) throw new Error('no TCG EK certificate index for this EK key')
  return index
}

export interface ProvisionedEkChain {
  /** PEM of the new EK certificate (issued by the intermediate). */
  ekCertPem: string
  intermediate: TestCa
  root: TestCa
}

/**
 * Re-issues the certificate of the TPM's default EK (`alg`) under a fresh intermediate CA of a fresh root, writes it
 * to the default EK certificate index and the intermediate's certificate to the first EK CA chain index, so only
 * a verifier that reads the chain from NV (or already has the intermediate) can build the EK's path to the root.
 */
export async function provisionEkCaChain(o: {
  tpm: string
  alg: EncAlgName
  /** A persistent EK (e.g. swtpm's RSA 3072 or ECC P-384 one) instead of the default EK of `alg`. */
  ekHandle?: number
  endorsementPassword?: string
  ownerPassword?: string
}): Promise<ProvisionedEkChain> {
  const root = await createTestCa('Keylime TS test EK root CA')
  const intermediate = await createTestCa('Keylime TS test EK intermediate CA', root)
  const tpm = await Tpm.open(o.tpm)
  try {
    let ekPublic: Uint8Array
    if (o.ekHandle !== undefined) ekPublic = (await readPublic(tpm, o.ekHandle)).publicArea
    else {
      const ek = await createEk(
        tpm,
        o.alg,
        o.endorsementPassword ? { endorsementPassword: o.endorsementPassword } : {},
      )
      await flushContext(tpm, ek.handle)
      ekPublic = ek.publicArea
    }
    const ekCertPem = await issueTpmKeyCertificate(
      intermediate,
      ekPublic,
      'CN=Keylime TS test EK',
      'endorsement',
    )
    const owner = o.ownerPassword ? { ownerPassword: o.ownerPassword } : {}
    await nvDefineAndWrite(tpm, ekCertificateIndex(ekPublic), pemToDer(ekCertPem), owner)
    await nvDefineAndWrite(tpm, EkCaChainNvRange.first, pemToDer(intermediate.certPem), owner)
    return { ekCertPem, intermediate, root }
  } finally {
    await tpm.close()
  }
}
