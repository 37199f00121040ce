/**
 * The TPM proof of possession of push sessions (keylime-protocols.md §H.3): the agent answers the challenge with
 * TPM2_Certify of its AK by the AK itself, qualifying data = the raw challenge. Checked here: a TPM-generated
 * CERTIFY attestation, the challenge in `extraData`, the certified name = Name(enrolled AK), and the AK's signature
 * with the AK's own scheme (RSASSA for RSA, ECDSA for ECC) over SHA-256/384/512. Upstream accepts only RSASSA with
 * SHA-256; an ECC or SHA-384 AK passes here as well.
 */
import { constants, type KeyObject, verify } from 'node:crypto'
import { objectName } from '../../crypto/tpm-public.ts'
import { decodeTpmsAttest, decodeTpmtSignature, TPM_GENERATED_VALUE, TpmAlg, TpmSt } from '../../tpm/index.ts'

const HASHES = new Map<number, string>([
  [TpmAlg.Sha256, 'sha256'],
  [TpmAlg.Sha384, 'sha384'],
  [TpmAlg.Sha512, 'sha512'],
])

export type PopResult =
  | { ok: true; hashAlgorithm: string; signingScheme: 'rsassa' | 'ecdsa' }
  | { ok: false; reason: string }

export interface PopInput {
  /** TPMS_ATTEST bytes as the TPM produced them. */
  message: Uint8Array
  /** TPMT_SIGNATURE bytes. */
  signature: Uint8Array
  challenge: Uint8Array
  /** The enrolled AK: TPM2B_PUBLIC bytes and its key. */
  akTpm: Uint8Array
  akKey: KeyObject
}

export function verifyProofOfPossession(input: PopInput): PopResult {
  let attest: ReturnType<typeof decodeTpmsAttest>
  let sig: ReturnType<typeof decodeTpmtSignature>
  try {
    attest = decodeTpmsAttest(input.message)
    sig = decodeTpmtSignature(input.signature)
  } catch (err) {
    return { ok: false, reason: `malformed certification: ${(err as Error).message}` }
  }
  if (
    attest.magic !== TPM_GENERATED_VALUE ||
    attest.type !== TpmSt.AttestCertify ||
    attest.attested.kind !== 'certify'
  )
    return { ok: false, reason: 'not a TPM-generated certification' }
  if (!Buffer.from(attest.extraData).equals(Buffer.from(input.challenge)))
    return { ok: false, reason: 'the certification is not over this challenge' }
  if (!Buffer.from(attest.attested.name).equals(Buffer.from(objectName(input.akTpm))))
    return { ok: false, reason: 'the certified object is not the enrolled AK' }
  if (sig.sigAlg === TpmAlg.Null || sig.sigAlg === TpmAlg.Hmac)
    return { ok: false, reason: 'no asymmetric signature' }
  const hash = HASHES.get(sig.hash)
  if (!hash) return { ok: false, reason: 'signature hash must be sha256, sha384 or sha512' }
  const key = input.akKey
  if ('sig' in sig) {
    if (sig.sigAlg !== TpmAlg.RsaSsa || key.asymmetricKeyType !== 'rsa')
      return { ok: false, reason: 'an RSA AK signs with RSASSA' }
    const ok = verify(hash, attest.raw, { key, padding: constants.RSA_PKCS1_PADDING }, sig.sig)
    return ok
      ? { ok: true, hashAlgorithm: hash, signingScheme: 'rsassa' }
      : { ok: false, reason: 'the signature does not verify with the enrolled AK' }
  }
  if (sig.sigAlg !== TpmAlg.Ecdsa || key.asymmetricKeyType !== 'ec')
    return { ok: false, reason: 'an ECC AK signs with ECDSA' }
  const size = Buffer.from(key.export({ format: 'jwk' }).x ?? '', 'base64url').length
  const strip = (b: Uint8Array) => {
    let i = 0
    while (i < b.length - 1 && b[i] === 0) i++
    return b.subarray(i)
  }
  const r = strip(sig.r)
  const s = strip(sig.s)
  if (r.length > size || s.length > size)
    return { ok: false, reason: 'ECDSA signature too long for the curve' }
  const raw = Buffer.alloc(2 * size)
  raw.set(r, size - r.length)
  raw.set(s, 2 * size - s.length)
  const ok = verify(hash, attest.raw, { key, dsaEncoding: 'ieee-p1363' }, raw)
  return ok
    ? { ok: true, hashAlgorithm: hash, signingScheme: 'ecdsa' }
    : { ok: false, reason: 'the signature does not verify with the enrolled AK' }
}
