/**
 * IAK/IDevID registration checks (keylime-protocols.md §B.4): the four fields come together, each TPM key matches
 * its certificate, both certificates chain to `[tenant] tpm_cert_store`, and the AK is bound to the IAK by a
 * TPM2_Certify (`iak_attest` signed as `iak_sign`) over Name(AK) with qualifying data SHA-256(uuid) or the uuid.
 */
import { constants, createHash, type KeyObject, verify } from 'node:crypto'
import { type CertStore, verifyEkCertificateWithStore } from '../crypto/ek-trust.ts'
import { objectName, publicAreaToKeyObject, readTpm2bPublic } from '../crypto/tpm-public.ts'
import type { LenientCertificate } from '../crypto/x509-lenient.ts'
import {
  decodeTpmsAttest,
  decodeTpmtSignature,
  TPM_GENERATED_VALUE,
  TpmAlg,
  TpmSt,
  type TpmtSignature,
} from '../tpm/index.ts'
import {
  decodeB64Field,
  invalid,
  type MalformedCertAction,
  optionalString,
  parseCertField,
} from './registrar-fns.ts'

export interface IakIdevidRecord {
  iak_tpm: string
  idevid_tpm: string
  /** b64 DER */
  iak_cert: string
  idevid_cert: string
}

const IAK_FIELDS = ['iak_tpm', 'idevid_tpm', 'iak_cert', 'idevid_cert'] as const

export function hasIakIdevid(body: Record<string, unknown>): boolean {
  return IAK_FIELDS.some((f) => body[f] !== undefined && body[f] !== null && body[f] !== '')
}

const HASHES = new Map<number, string>([
  [TpmAlg.Sha1, 'sha1'],
  [TpmAlg.Sha256, 'sha256'],
  [TpmAlg.Sha384, 'sha384'],
  [TpmAlg.Sha512, 'sha512'],
])

function spki(key: KeyObject): Buffer {
  return key.export({ type: 'spki', format: 'der' })
}

/** Verifies a TPMT_SIGNATURE (RSASSA, RSAPSS or ECDSA) over `message` with `key`. */
export function verifyTpmSignature(key: KeyObject, message: Uint8Array, sig: TpmtSignature): boolean {
  if (sig.sigAlg === TpmAlg.Null || sig.sigAlg === TpmAlg.Hmac) return false
  const hash = HASHES.get(sig.hash)
  if (!hash) return false
  if ('sig' in sig) {
    const padding =
      sig.sigAlg === TpmAlg.RsaPss ? constants.RSA_PKCS1_PSS_PADDING : constants.RSA_PKCS1_PADDING
    return verify(hash, message, { key, padding, saltLength: constants.RSA_PSS_SALTLEN_AUTO }, sig.sig)
  }
  if (sig.sigAlg !== TpmAlg.Ecdsa || key.asymmetricKeyType !== 'ec') return false
  const jwk = key.export({ format: 'jwk' })
  const size = Buffer.from(jwk.x ?? '', 'base64url').length
  const pad = (b: Uint8Array) => (b.length > size ? null : Buffer.concat([Buffer.alloc(size - b.length), b]))
  const r = pad(sig.r)
  const s = pad(sig.s)
  if (!r || !s) return false
  return verify(hash, message, { key, dsaEncoding: 'ieee-p1363' }, Buffer.concat([r, s]))
}

function keyAndCert(
  body: Record<string, unknown>,
  keyField: 'iak_tpm' | 'idevid_tpm',
  certField: 'iak_cert' | 'idevid_cert',
  action: MalformedCertAction,
): { tpm: Uint8Array; key: KeyObject; cert: LenientCertificate } {
  const tpm = decodeB64Field(body[keyField], keyField)
  let key: KeyObject
  try {
    readTpm2bPublic(tpm)
    key = publicAreaToKeyObject(tpm)
  } catch (err) {
    throw invalid(`${keyField}: ${(err as Error).message}`, err)
  }
  const certText = optionalString(body, certField)
  if (certText === null) throw invalid(`${certField} is required with ${keyField}`)
  const cert = parseCertField(certText, certField, action)
  if (!cert.publicKey || !spki(cert.publicKey).equals(spki(key))) {
    throw invalid(`${certField} public key does not match ${keyField}`)
  }
  return { tpm, key, cert }
}

export function verifyIakIdevid(
  agentId: string,
  body: Record<string, unknown>,
  aikTpm: Uint8Array,
  opts: { store: CertStore | null; action: MalformedCertAction; now?: Date },
): IakIdevidRecord {
  for (const f of IAK_FIELDS) {
    if (body[f] === undefined || body[f] === null || body[f] === '')
      throw invalid(`${f} is required for IAK/IDevID`)
  }
  const iak = keyAndCert(body, 'iak_tpm', 'iak_cert', opts.action)
  const idevid = keyAndCert(body, 'idevid_tpm', 'idevid_cert', opts.action)
  if (!opts.store) throw invalid('IAK/IDevID certificates cannot be checked: no [tenant] tpm_cert_store')
  for (const [name, cert] of [
    ['iak_cert', iak.cert],
    ['idevid_cert', idevid.cert],
  ] as const) {
    const trust = verifyEkCertificateWithStore(cert, opts.store, { ...(opts.now ? { now: opts.now } : {}) })
    if (!trust.trusted) throw invalid(`${name} is not trusted: ${trust.reason}`)
  }

  const attestBytes = decodeB64Field(body.iak_attest, 'iak_attest')
  const signBytes = decodeB64Field(body.iak_sign, 'iak_sign')
  let attest: ReturnType<typeof decodeTpmsAttest>
  let sig: TpmtSignature
  try {
    attest = decodeTpmsAttest(attestBytes)
    sig = decodeTpmtSignature(signBytes)
  } catch (err) {
    throw invalid(`iak_attest/iak_sign: ${(err as Error).message}`, err)
  }
  if (
    attest.magic !== TPM_GENERATED_VALUE ||
    attest.type !== TpmSt.AttestCertify ||
    attest.attested.kind !== 'certify'
  ) {
    throw invalid('iak_attest is not a TPM-generated certification')
  }
  const extra = Buffer.from(attest.extraData)
  const uuidBytes = Buffer.from(agentId, 'utf8')
  const uuidHash = createHash('sha256').update(uuidBytes).digest()
  if (!extra.equals(uuidHash) && !extra.equals(uuidBytes)) {
    throw invalid('iak_attest qualifying data is not bound to this agent id')
  }
  if (!Buffer.from(attest.attested.name).equals(Buffer.from(objectName(aikTpm)))) {
    throw invalid('iak_attest does not certify aik_tpm')
  }
  if (!verifyTpmSignature(iak.key, attest.raw, sig)) throw invalid('iak_sign is not a valid IAK signature')
  return {
    iak_tpm: Buffer.from(iak.tpm).toString('base64'),
    idevid_tpm: Buffer.from(idevid.tpm).toString('base64'),
    iak_cert: Buffer.from(iak.cert.der).toString('base64'),
    idevid_cert: Buffer.from(idevid.cert.der).toString('base64'),
  }
}
