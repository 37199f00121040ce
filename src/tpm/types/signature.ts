import { TpmAlg } from '../constants.ts'
import { decodeExact } from '../marshal/reader.ts'
import { encodeWith } from '../marshal/writer.ts'
import type { Codec } from './codec.ts'

/** TPMT_SIGNATURE (Part 2, 11.3.4), for the schemes Keylime meets. */
export type TpmtSignature =
  | { sigAlg: typeof TpmAlg.RsaSsa | typeof TpmAlg.RsaPss; hash: number; sig: Uint8Array }
  | {
      sigAlg: typeof TpmAlg.Ecdsa | typeof TpmAlg.Ecdaa | typeof TpmAlg.Sm2 | typeof TpmAlg.EcSchnorr
      hash: number
      r: Uint8Array
      s: Uint8Array
    }
  | { sigAlg: typeof TpmAlg.Hmac; hash: number; digest: Uint8Array }
  | { sigAlg: typeof TpmAlg.Null }

export const TpmtSignature: Codec<TpmtSignature> = {
  name: 'TPMT_SIGNATURE',
  decode(r) {
    const sigAlg = r.u16('sigAlg')
    switch (sigAlg) {
      case TpmAlg.RsaSsa:
      case TpmAlg.RsaPss:
        return { sigAlg, hash: r.u16('hash'), sig: r.tpm2b('sig', 1024) }
      case TpmAlg.Ecdsa:
      case TpmAlg.Ecdaa:
      case TpmAlg.Sm2:
      case TpmAlg.EcSchnorr:
        return { sigAlg, hash: r.u16('hash'), r: r.tpm2b('signatureR', 128), s: r.tpm2b('signatureS', 128) }
      case TpmAlg.Hmac: {
        const hash = r.u16('hash')
        const size = hashSize(hash) ?? r.fail(`unknown HMAC hash 0x${hash.toString(16)}`, r.offset - 2)
        return { sigAlg, hash, digest: r.raw(size, 'digest') }
      }
      case TpmAlg.Null:
        return { sigAlg }
      default:
        return r.fail(`unsupported signature algorithm 0x${sigAlg.toString(16)}`, r.offset - 2)
    }
  },
  encode(w, v) {
    w.u16(v.sigAlg)
    if (v.sigAlg === TpmAlg.Null) return
    w.u16(v.hash)
    if ('sig' in v) w.tpm2b(v.sig)
    else if ('r' in v) w.tpm2b(v.r).tpm2b(v.s)
    else w.raw(v.digest)
  },
}

function hashSize(alg: number): number | undefined {
  return alg === TpmAlg.Sha1
    ? 20
    : alg === TpmAlg.Sha256
      ? 32
      : alg === TpmAlg.Sha384
        ? 48
        : alg === TpmAlg.Sha512
          ? 64
          : undefined
}

export function decodeTpmtSignature(bytes: Uint8Array): TpmtSignature {
  return decodeExact(bytes, 'TPMT_SIGNATURE', (r) => TpmtSignature.decode(r))
}

export function encodeTpmtSignature(v: TpmtSignature): Uint8Array {
  return encodeWith((w) => TpmtSignature.encode(w, v))
}

/** TPMT_SIG_SCHEME (Part 2, 11.2.1.5) as Quote/Certify take it: a scheme and its hash (none for NULL). */
export interface TpmtSigScheme {
  scheme: number
  hashAlg: number
}

export const TpmtSigScheme: Codec<TpmtSigScheme> = {
  name: 'TPMT_SIG_SCHEME',
  decode(r) {
    const scheme = r.u16('scheme')
    if (scheme === TpmAlg.Null) return { scheme, hashAlg: TpmAlg.Null }
    const hashAlg = r.u16('details.hashAlg')
    if (scheme === TpmAlg.Ecdaa) r.u16('details.count')
    return { scheme, hashAlg }
  },
  encode(w, v) {
    w.u16(v.scheme)
    if (v.scheme === TpmAlg.Null) return
    w.u16(v.hashAlg)
    if (v.scheme === TpmAlg.Ecdaa) w.u16(0)
  },
}
