/**
 * A software "TPM" for unit tests and benchmarks: an AK key pair with its TPM2B_PUBLIC, and quotes signed with it
 * (TPMS_ATTEST / TPMT_SIGNATURE built with src/tpm's encoders, PCR blob with our codec). Real TPM behaviour is
 * covered by test/tpm/crosscheck-quote.test.ts; this only makes unit tests fast and able to forge bad cases.
 */
import { constants, createHash, generateKeyPairSync, type KeyObject, sign } from 'node:crypto'
import { objectName } from '../../../../src/crypto/tpm-public.ts'
import {
  encodePcrBlob,
  formatQuoteString,
  HASH_ALG_IDS,
  type QuoteHashAlg,
} from '../../../../src/evidence/quote/index.ts'
import {
  akTemplate,
  encodeTpm2bPublic,
  encodeTpmsAttest,
  encodeTpmtSignature,
  pcrSelection,
  TPM_GENERATED_VALUE,
  TpmAlg,
  TpmSt,
  type TpmtSignature,
} from '../../../../src/tpm/index.ts'

export interface SoftwareAk {
  kind: 'rsa' | 'ecc'
  privateKey: KeyObject
  publicKey: KeyObject
  tpm2bPublic: Uint8Array
  name: Uint8Array
}

export function softwareAk(kind: 'rsa' | 'ecc', hashAlg: QuoteHashAlg = 'sha256'): SoftwareAk {
  const hashId = HASH_ALG_IDS[hashAlg]
  if (kind === 'rsa') {
    const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
    const jwk = publicKey.export({ format: 'jwk' })
    const t = akTemplate('rsassa', hashId)
    const tpm2bPublic = encodeTpm2bPublic({
      ...t,
      unique: { kind: 'rsa', n: Buffer.from(jwk.n ?? '', 'base64url') },
    })
    return { kind, privateKey, publicKey, tpm2bPublic, name: objectName(tpm2bPublic) }
  }
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
  const jwk = publicKey.export({ format: 'jwk' })
  const t = akTemplate('ecdsa', hashId)
  const tpm2bPublic = encodeTpm2bPublic({
    ...t,
    unique: {
      kind: 'ecc',
      x: Buffer.from(jwk.x ?? '', 'base64url'),
      y: Buffer.from(jwk.y ?? '', 'base64url'),
    },
  })
  return { kind, privateKey, publicKey, tpm2bPublic, name: objectName(tpm2bPublic) }
}

export interface SoftwareQuoteOptions {
  nonce: Uint8Array | string
  hashAlg?: QuoteHashAlg
  pcrs: Map<number, Uint8Array>
  clock?: bigint
  resetCount?: number
  restartCount?: number
  safe?: boolean
  /** Override the signature algorithm (to forge RSAPSS etc.). */
  sigAlg?: number
  /** Override the attestation type (to forge CERTIFY). */
  certify?: boolean
  /** Hash of the signature, when it should differ from the PCR bank. */
  signHash?: QuoteHashAlg
}

export function softwareQuoteParts(ak: SoftwareAk, o: SoftwareQuoteOptions) {
  const hashAlg = o.hashAlg ?? 'sha256'
  const signHash = o.signHash ?? hashAlg
  const order = [...o.pcrs.keys()].sort((a, b) => a - b)
  const digest = createHash(signHash)
  for (const p of order) digest.update(o.pcrs.get(p) as Uint8Array)
  const attest = encodeTpmsAttest({
    magic: TPM_GENERATED_VALUE,
    type: o.certify ? TpmSt.AttestCertify : TpmSt.AttestQuote,
    qualifiedSigner: ak.name,
    extraData: typeof o.nonce === 'string' ? Buffer.from(o.nonce) : o.nonce,
    clockInfo: {
      clock: o.clock ?? 1000n,
      resetCount: o.resetCount ?? 0,
      restartCount: o.restartCount ?? 0,
      safe: o.safe ?? true,
    },
    firmwareVersion: 0x2019_1023_0016_3636n,
    attested: o.certify
      ? { kind: 'certify', name: ak.name, qualifiedName: ak.name }
      : {
          kind: 'quote',
          pcrSelect: [pcrSelection(HASH_ALG_IDS[hashAlg], order)],
          pcrDigest: digest.digest(),
        },
  })
  const hashId = HASH_ALG_IDS[signHash]
  let sig: TpmtSignature
  if (ak.kind === 'rsa') {
    const pss = o.sigAlg === TpmAlg.RsaPss
    const bytes = sign(signHash, attest, {
      key: ak.privateKey,
      padding: pss ? constants.RSA_PKCS1_PSS_PADDING : constants.RSA_PKCS1_PADDING,
    })
    sig = { sigAlg: pss ? TpmAlg.RsaPss : TpmAlg.RsaSsa, hash: hashId, sig: bytes }
  } else {
    const raw = sign(signHash, attest, { key: ak.privateKey, dsaEncoding: 'ieee-p1363' })
    const sigAlg = (o.sigAlg ?? TpmAlg.Ecdsa) as typeof TpmAlg.Ecdsa
    sig = { sigAlg, hash: hashId, r: raw.subarray(0, 32), s: raw.subarray(32) }
  }
  return {
    attest,
    signature: encodeTpmtSignature(sig),
    pcrBlob: encodePcrBlob({ banks: [{ hashAlg, values: o.pcrs }] }),
  }
}

export function softwareQuote(ak: SoftwareAk, o: SoftwareQuoteOptions): string {
  return formatQuoteString(softwareQuoteParts(ak, o))
}

export function pcrValues(hashAlg: QuoteHashAlg, pcrs: number[], seed = 'x'): Map<number, Uint8Array> {
  return new Map(pcrs.map((p) => [p, new Uint8Array(createHash(hashAlg).update(`${seed}${p}`).digest())]))
}
