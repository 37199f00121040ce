/**
 * A software stand-in for an agent's TPM, used by the fleet benchmark and the verifier tests: it keeps PCR banks,
 * an AK (node:crypto RSA-2048 or P-256) and a TPM clock, and produces integrity-quote responses in the exact wire
 * formats (TPMS_ATTEST, TPMT_SIGNATURE, PCRBLOB, quote string) so the verifier checks them like real ones.
 */
import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
  sign,
} from 'node:crypto'

type Hash = 'sha1' | 'sha256' | 'sha384' | 'sha512'
const ALG_ID: Record<Hash, number> = { sha1: 0x0004, sha256: 0x000b, sha384: 0x000c, sha512: 0x000d }
const SIZE: Record<Hash, number> = { sha1: 20, sha256: 32, sha384: 48, sha512: 64 }

function u16(v: number): Buffer {
  const b = Buffer.alloc(2)
  b.writeUInt16BE(v)
  return b
}
function u32(v: number): Buffer {
  const b = Buffer.alloc(4)
  b.writeUInt32BE(v >>> 0)
  return b
}
function tpm2b(b: Uint8Array): Buffer {
  return Buffer.concat([u16(b.length), b])
}

export function encodePcrBlob(alg: Hash, pcrs: ReadonlyMap<number, Uint8Array>): Buffer {
  const indexes = [...pcrs.keys()].sort((a, b) => a - b)
  const head = Buffer.alloc(4 + 16 * 8 + 4)
  head.writeUInt32LE(1, 0)
  head.writeUInt16LE(ALG_ID[alg], 4)
  head.writeUInt8(3, 6)
  for (const p of indexes) head[7 + (p >> 3)] = (head[7 + (p >> 3)] as number) | (1 << (p & 7))
  for (let i = 1; i < 16; i++) head.writeUInt8(3, 4 + i * 8 + 2)
  const lists: Buffer[] = []
  for (let i = 0; i < indexes.length; i += 8) {
    const chunk = indexes.slice(i, i + 8)
    const list = Buffer.alloc(532)
    list.writeUInt32LE(chunk.length, 0)
    chunk.forEach((p, j) => {
      const v = pcrs.get(p) as Uint8Array
      list.writeUInt16LE(v.length, 4 + j * 66)
      list.set(v, 6 + j * 66)
    })
    lists.push(list)
  }
  head.writeUInt32LE(lists.length, 4 + 16 * 8)
  return Buffer.concat([head, ...lists])
}

export interface SoftQuoterOptions {
  keyType?: 'rsa' | 'ecc'
  hashAlg?: Hash
}

const SPKI_DER = { type: 'spki', format: 'der' } as const
const PKCS8_DER = { type: 'pkcs8', format: 'der' } as const

/**
 * Key objects of their own for a freshly generated pair. Node 20 can deadlock when a garbage collection inside
 * `export()` of a generated key object destroys an earlier key-generation job that waits on the lock the export holds
 * (seen as fleet benchmarks hanging at start-up); keys re-imported from DER share nothing with the job.
 */
function ownKeyObjects(pair: { publicKey: Buffer; privateKey: Buffer }): {
  publicKey: KeyObject
  privateKey: KeyObject
} {
  return {
    publicKey: createPublicKey({ key: pair.publicKey, format: 'der', type: 'spki' }),
    privateKey: createPrivateKey({ key: pair.privateKey, format: 'der', type: 'pkcs8' }),
  }
}

export class SoftQuoter {
  readonly hashAlg: Hash
  readonly privateKey: KeyObject
  /** TPM2B_PUBLIC of the AK, base64 (as the registrar stores `aik_tpm`). */
  readonly akTpm: string
  readonly pcrs = new Map<number, Buffer>()
  /** The EC signing key with the P1363 (r || s) output the TPMT_SIGNATURE takes, built once. */
  private readonly ecSignKey: { key: KeyObject; dsaEncoding: 'ieee-p1363' }
  clock = 1000
  resetCount = 0
  restartCount = 0

  constructor(opts: SoftQuoterOptions = {}) {
    this.hashAlg = opts.hashAlg ?? 'sha256'
    const keyType = opts.keyType ?? 'rsa'
    if (keyType === 'rsa') {
      const { privateKey, publicKey } = ownKeyObjects(
        generateKeyPairSync('rsa', {
          modulusLength: 2048,
          publicKeyEncoding: SPKI_DER,
          privateKeyEncoding: PKCS8_DER,
        }),
      )
      this.privateKey = privateKey
      const jwk = publicKey.export({ format: 'jwk' })
      const n = Buffer.from(jwk.n as string, 'base64url')
      const body = Buffer.concat([
        u16(0x0001),
        u16(0x000b),
        u32(0x00050072),
        tpm2b(Buffer.alloc(0)),
        u16(0x0010),
        u16(0x0014),
        u16(0x000b),
        u16(2048),
        u32(0),
        tpm2b(n),
      ])
      this.akTpm = tpm2b(body).toString('base64')
    } else {
      const { privateKey, publicKey } = ownKeyObjects(
        generateKeyPairSync('ec', {
          namedCurve: 'P-256',
          publicKeyEncoding: SPKI_DER,
          privateKeyEncoding: PKCS8_DER,
        }),
      )
      this.privateKey = privateKey
      const jwk = publicKey.export({ format: 'jwk' })
      const body = Buffer.concat([
        u16(0x0023),
        u16(0x000b),
        u32(0x00050072),
        tpm2b(Buffer.alloc(0)),
        u16(0x0010),
        u16(0x0018),
        u16(0x000b),
        u16(0x0003),
        u16(0x0010),
        tpm2b(Buffer.from(jwk.x as string, 'base64url')),
        tpm2b(Buffer.from(jwk.y as string, 'base64url')),
      ])
      this.akTpm = tpm2b(body).toString('base64')
    }
    this.ecSignKey = { key: this.privateKey, dsaEncoding: 'ieee-p1363' }
    for (let i = 0; i < 24; i++) this.pcrs.set(i, Buffer.alloc(SIZE[this.hashAlg]))
  }

  extend(pcr: number, data: Uint8Array): void {
    const cur = this.pcrs.get(pcr) as Buffer
    const digest = createHash(this.hashAlg).update(data).digest()
    this.pcrs.set(pcr, createHash(this.hashAlg).update(cur).update(digest).digest())
  }

  /** Extends an already-computed digest (e.g. an IMA template digest). */
  extendDigest(pcr: number, digest: Uint8Array): void {
    const cur = this.pcrs.get(pcr) as Buffer
    this.pcrs.set(pcr, createHash(this.hashAlg).update(cur).update(digest).digest())
  }

  /** Resets PCR 16 and extends it with H(pubkey PEM), as the agent does before a quote. */
  bindPubkey(pubkeyPem: string): void {
    this.pcrs.set(16, Buffer.alloc(SIZE[this.hashAlg]))
    this.extend(16, Buffer.from(pubkeyPem, 'utf8'))
  }

  /** A quote string over `pcrs` with `nonce` as qualifying data (each structure written in place, one buffer). */
  quote(nonce: string, pcrs: readonly number[]): string {
    this.clock += 17
    const selected = new Map<number, Uint8Array>()
    for (const p of [...pcrs].sort((a, b) => a - b)) selected.set(p, this.pcrs.get(p) as Buffer)
    const h = createHash(this.hashAlg)
    for (const v of selected.values()) h.update(v)
    const digest = h.digest()
    const nonceLength = Buffer.byteLength(nonce, 'latin1')
    const attest = Buffer.alloc(4 + 2 + 2 + 34 + 2 + nonceLength + 17 + 8 + 4 + 2 + 1 + 3 + 2 + digest.length)
    let at = attest.writeUInt32BE(0xff544347, 0)
    at = attest.writeUInt16BE(0x8018, at)
    at = attest.writeUInt16BE(34, at)
    attest.fill(1, at, at + 34)
    at += 34
    at = attest.writeUInt16BE(nonceLength, at)
    at += attest.write(nonce, at, 'latin1')
    at = attest.writeBigUInt64BE(BigInt(this.clock), at)
    at = attest.writeUInt32BE(this.resetCount >>> 0, at)
    at = attest.writeUInt32BE(this.restartCount >>> 0, at)
    at = attest.writeUInt8(1, at)
    at = attest.writeBigUInt64BE(0x20191023n, at)
    at = attest.writeUInt32BE(1, at)
    at = attest.writeUInt16BE(ALG_ID[this.hashAlg], at)
    at = attest.writeUInt8(3, at)
    for (const p of selected.keys())
      attest[at + (p >> 3)] = (attest[at + (p >> 3)] as number) | (1 << (p & 7))
    at += 3
    at = attest.writeUInt16BE(digest.length, at)
    digest.copy(attest, at)
    let sig: Buffer
    if (this.privateKey.asymmetricKeyType === 'rsa') {
      sig = Buffer.concat([
        u16(0x0014),
        u16(ALG_ID[this.hashAlg]),
        tpm2b(sign(this.hashAlg, attest, this.privateKey)),
      ])
    } else {
      const p1363 = sign(this.hashAlg, attest, this.ecSignKey)
      const half = p1363.length / 2
      sig = Buffer.alloc(8 + p1363.length)
      let o = sig.writeUInt16BE(0x0018, 0)
      o = sig.writeUInt16BE(ALG_ID[this.hashAlg], o)
      o = sig.writeUInt16BE(half, o)
      o += p1363.copy(sig, o, 0, half)
      o = sig.writeUInt16BE(half, o)
      p1363.copy(sig, o, half)
    }
    const blob = encodePcrBlob(this.hashAlg, selected)
    return `r${attest.toString('base64')}:${sig.toString('base64')}:${blob.toString('base64')}`
  }
}
