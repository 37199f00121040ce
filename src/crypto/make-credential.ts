/**
 * TPM2_MakeCredential done in software by the registrar (TPM 2.0 Part 1, 24; spec B.6): wraps a secret so that only
 * the TPM holding the EK can recover it with TPM2_ActivateCredential, and only for the AK whose Name is bound in.
 * Randomness is injectable (go-tpm style) so tests can be deterministic.
 */
import {
  constants,
  createCipheriv,
  createHmac,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  type KeyObject,
  publicEncrypt,
  randomBytes,
} from 'node:crypto'
import { KeylimeError } from '../common/errors.ts'
import { TpmAlg, TpmaObject } from '../tpm/index.ts'
import { HASH_SIZES, kdfa, kdfe } from './kdf.ts'
import {
  eccCurveOf,
  nameHashOf,
  type PublicArea,
  publicAreaToKeyObject,
  readTpm2bPublic,
  TpmPublicError,
} from './tpm-public.ts'

export class CredentialError extends KeylimeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_CREDENTIAL', message, { statusCode: 400, cause: options?.cause })
  }
}

export interface MakeCredentialInput {
  /** EK TPM2B_PUBLIC (the registrar's `ek_tpm`), or its decoded area. */
  ekPublic: Uint8Array | PublicArea
  /** Name of the AK (`objectName(aik_tpm)`). */
  akName: Uint8Array
  /** The secret to protect; at most the EK nameAlg digest size (32 bytes for SHA-256 EKs). */
  secret: Uint8Array
  /** Source of the seed for RSA EKs (default node's CSPRNG). */
  random?: (size: number) => Uint8Array
  /** Ephemeral ECDH private key for ECC EKs (default: fresh key on the EK's curve). */
  ephemeralPrivateKey?: KeyObject
}

export interface MakeCredentialOutput {
  /** TPM2B_ID_OBJECT, with its u16 size: `size || (u16 len || integrity) || encIdentity`. */
  credentialBlob: Uint8Array
  /** TPM2B_ENCRYPTED_SECRET, with its u16 size (RSA-OAEP ciphertext or TPMS_ECC_POINT). */
  encryptedSecret: Uint8Array
}

function u16Prefixed(...parts: Uint8Array[]): Uint8Array {
  const len = parts.reduce((n, p) => n + p.length, 0)
  if (len > 0xffff) throw new CredentialError('TPM2B contents exceed 65535 bytes')
  const out = new Uint8Array(2 + len)
  out[0] = len >> 8
  out[1] = len & 0xff
  let at = 2
  for (const p of parts) {
    out.set(p, at)
    at += p.length
  }
  return out
}

function fixedLength(bytes: Uint8Array, size: number): Uint8Array {
  if (bytes.length === size) return bytes
  const out = new Uint8Array(size)
  out.set(bytes.subarray(Math.max(0, bytes.length - size)), Math.max(0, size - bytes.length))
  return out
}

/** Seed and its encryption to the EK (Part 1, 24.4 "Secret Sharing"): RSA-OAEP or ECDH + KDFe. */
function shareSeed(
  ek: PublicArea,
  ekKey: KeyObject,
  hash: 'sha1' | 'sha256' | 'sha384' | 'sha512',
  input: MakeCredentialInput,
): { seed: Uint8Array; encryptedSecret: Uint8Array } {
  const digestSize = HASH_SIZES[hash]
  if (ek.parameters.kind === 'rsa') {
    const seed = (input.random ?? randomBytes)(digestSize)
    if (seed.length !== digestSize) throw new CredentialError(`random source returned ${seed.length} bytes`)
    const cipher = publicEncrypt(
      {
        key: ekKey,
        padding: constants.RSA_PKCS1_OAEP_PADDING,
        oaepHash: hash,
        oaepLabel: Buffer.from('IDENTITY\0', 'latin1'),
      },
      seed,
    )
    return { seed, encryptedSecret: u16Prefixed(cipher) }
  }
  if (ek.unique.kind !== 'ecc') throw new CredentialError('EK is neither RSA nor ECC')
  const ekX = ek.unique.x
  const curve = eccCurveOf(ek)
  const ephemeral =
    input.ephemeralPrivateKey ?? generateKeyPairSync('ec', { namedCurve: curve.nodeCurve }).privateKey
  const jwk = createPublicKey(ephemeral).export({ format: 'jwk' })
  if (jwk.crv !== curve.crv || jwk.x === undefined || jwk.y === undefined) {
    throw new CredentialError(`ephemeral key is not on the EK curve ${curve.crv}`)
  }
  const ex = fixedLength(new Uint8Array(Buffer.from(jwk.x, 'base64url')), curve.size)
  const ey = fixedLength(new Uint8Array(Buffer.from(jwk.y, 'base64url')), curve.size)
  // diffieHellman returns the x coordinate of the shared point, fixed to the field size.
  const z = new Uint8Array(diffieHellman({ privateKey: ephemeral, publicKey: ekKey }))
  const seed = kdfe(hash, z, 'IDENTITY', ex, ekX, digestSize * 8)
  return { seed, encryptedSecret: u16Prefixed(u16Prefixed(ex), u16Prefixed(ey)) }
}

export function makeCredential(input: MakeCredentialInput): MakeCredentialOutput {
  let ek: PublicArea
  let ekKey: KeyObject
  try {
    ek = input.ekPublic instanceof Uint8Array ? readTpm2bPublic(input.ekPublic) : input.ekPublic
    ekKey = publicAreaToKeyObject(ek)
  } catch (e) {
    if (e instanceof TpmPublicError) throw new CredentialError(`EK public area: ${e.message}`, { cause: e })
    throw e
  }
  const hash = nameHashOf(ek)
  const digestSize = HASH_SIZES[hash]
  const attrs = ek.objectAttributes
  if ((attrs & TpmaObject.Restricted) === 0 || (attrs & TpmaObject.Decrypt) === 0) {
    throw new CredentialError('EK must be a restricted decryption key')
  }
  const p = ek.parameters
  if (p.kind !== 'rsa' && p.kind !== 'ecc') throw new CredentialError('EK is neither RSA nor ECC')
  const { algorithm, keyBits, mode } = p.symmetric
  if (algorithm !== TpmAlg.Aes || mode !== TpmAlg.Cfb || ![128, 192, 256].includes(keyBits)) {
    throw new CredentialError('EK symmetric algorithm must be AES in CFB mode')
  }
  if (!(input.akName instanceof Uint8Array) || input.akName.length < 2)
    throw new CredentialError('invalid AK name')
  if (!(input.secret instanceof Uint8Array) || input.secret.length > digestSize) {
    throw new CredentialError(`credential secret must be at most ${digestSize} bytes`)
  }

  const { seed, encryptedSecret } = shareSeed(ek, ekKey, hash, input)
  const symKey = kdfa(hash, seed, 'STORAGE', input.akName, undefined, keyBits)
  const cipher = createCipheriv(`aes-${keyBits}-cfb`, symKey, Buffer.alloc(16))
  const encIdentity = Buffer.concat([cipher.update(u16Prefixed(input.secret)), cipher.final()])
  const hmacKey = kdfa(hash, seed, 'INTEGRITY', undefined, undefined, digestSize * 8)
  const integrity = createHmac(hash, hmacKey).update(encIdentity).update(input.akName).digest()
  return { credentialBlob: u16Prefixed(u16Prefixed(integrity), encIdentity), encryptedSecret }
}

const KEYLIME_BLOB_MAGIC = 0xbadcc0de
const KEYLIME_BLOB_VERSION = 1

/**
 * Keylime's credential blob (tpm2-tools makecredential file), sent base64 as `blob` by the registrar:
 * `BE32 0xBADCC0DE || BE32 1 || TPM2B_ID_OBJECT || TPM2B_ENCRYPTED_SECRET`.
 */
export function encodeKeylimeCredentialBlob(cred: MakeCredentialOutput): string {
  const head = Buffer.alloc(8)
  head.writeUInt32BE(KEYLIME_BLOB_MAGIC, 0)
  head.writeUInt32BE(KEYLIME_BLOB_VERSION, 4)
  return Buffer.concat([head, cred.credentialBlob, cred.encryptedSecret]).toString('base64')
}

export function decodeKeylimeCredentialBlob(blobB64: string): MakeCredentialOutput {
  if (typeof blobB64 !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(blobB64) || blobB64.length % 4 !== 0) {
    throw new CredentialError('credential blob is not valid base64')
  }
  const b = Buffer.from(blobB64, 'base64')
  if (b.length < 12) throw new CredentialError('credential blob too short')
  if (b.readUInt32BE(0) !== KEYLIME_BLOB_MAGIC)
    throw new CredentialError('credential blob magic is not 0xBADCC0DE')
  if (b.readUInt32BE(4) !== KEYLIME_BLOB_VERSION)
    throw new CredentialError('credential blob version is not 1')
  const idLen = b.readUInt16BE(8)
  const secretAt = 10 + idLen
  if (secretAt + 2 > b.length) throw new CredentialError('credential blob truncated in TPM2B_ID_OBJECT')
  const secretLen = b.readUInt16BE(secretAt)
  if (secretAt + 2 + secretLen !== b.length) {
    throw new CredentialError('credential blob TPM2B_ENCRYPTED_SECRET does not end the blob')
  }
  return {
    credentialBlob: new Uint8Array(b.subarray(8, secretAt)),
    encryptedSecret: new Uint8Array(b.subarray(secretAt)),
  }
}
