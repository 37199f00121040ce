/**
 * TPM 2.0 key derivation functions (TPM 2.0 Part 1, 11.4.10): KDFa is SP800-108 counter-mode HMAC, KDFe is the
 * SP800-56A concatenation KDF used for ECC secret sharing. Both are used by MakeCredential and must match the TPM
 * bit-for-bit, so inputs are raw bytes and labels are ASCII without the terminating zero (added here).
 */
import { createHash, createHmac } from 'node:crypto'
import { KeylimeError } from '../common/errors.ts'

export type TpmHashName = 'sha1' | 'sha256' | 'sha384' | 'sha512'

export const HASH_SIZES: Readonly<Record<TpmHashName, number>> = Object.freeze({
  sha1: 20,
  sha256: 32,
  sha384: 48,
  sha512: 64,
})

export class KdfError extends KeylimeError {
  constructor(message: string) {
    super('ERR_KDF', message)
  }
}

const EMPTY = new Uint8Array(0)
const ZERO = new Uint8Array([0])

function checkArgs(hash: TpmHashName, bits: number): void {
  if (!Object.hasOwn(HASH_SIZES, hash)) throw new KdfError(`unsupported KDF hash ${String(hash)}`)
  if (!Number.isInteger(bits) || bits <= 0 || bits > 0xffff * 8)
    throw new KdfError(`invalid KDF output size ${bits}`)
}

function be32(n: number): Uint8Array {
  const b = new Uint8Array(4)
  new DataView(b.buffer).setUint32(0, n >>> 0)
  return b
}

function labelBytes(label: string | Uint8Array): Uint8Array {
  return typeof label === 'string' ? new TextEncoder().encode(label) : label
}

/** Truncates the concatenated blocks to `bits`, masking the excess high bits of the first byte (Part 1 11.4.10.2). */
function finish(blocks: Uint8Array[], bits: number): Uint8Array {
  const out = new Uint8Array(Buffer.concat(blocks).subarray(0, Math.ceil(bits / 8)))
  if (bits % 8 !== 0 && out.length > 0) out[0] = (out[0] as number) & ((1 << (bits % 8)) - 1)
  return out
}

/**
 * KDFa(hashAlg, key, label, contextU, contextV, bits):
 * blocks `HMAC_H(key, BE32(i) || label || 0x00 || contextU || contextV || BE32(bits))`, i = 1, 2, ...
 */
export function kdfa(
  hash: TpmHashName,
  key: Uint8Array,
  label: string | Uint8Array,
  contextU: Uint8Array = EMPTY,
  contextV: Uint8Array = EMPTY,
  bits: number = HASH_SIZES[hash] * 8,
): Uint8Array {
  checkArgs(hash, bits)
  const lab = labelBytes(label)
  const size = be32(bits)
  return counterBlocks(hash, bits, (counter) => {
    const h = createHmac(hash, key)
    for (const part of [counter, lab, ZERO, contextU, contextV, size]) h.update(part)
    return h.digest()
  })
}

/**
 * KDFe(hashAlg, Z, label, partyU, partyV, bits): blocks `H(BE32(i) || Z || label || 0x00 || partyU || partyV)`.
 * For MakeCredential partyU is the ephemeral point's x and partyV the EK's x coordinate.
 */
export function kdfe(
  hash: TpmHashName,
  z: Uint8Array,
  label: string | Uint8Array,
  partyU: Uint8Array,
  partyV: Uint8Array,
  bits: number = HASH_SIZES[hash] * 8,
): Uint8Array {
  checkArgs(hash, bits)
  const lab = labelBytes(label)
  return counterBlocks(hash, bits, (counter) => {
    const h = createHash(hash)
    for (const part of [counter, z, lab, ZERO, partyU, partyV]) h.update(part)
    return h.digest()
  })
}

/** Both KDFs: blocks made from a 32-bit big-endian counter starting at 1, until `bits` are produced. */
function counterBlocks(
  hash: TpmHashName,
  bits: number,
  block: (counter: Uint8Array) => Uint8Array,
): Uint8Array {
  const blocks: Uint8Array[] = []
  const count = Math.ceil(bits / 8 / HASH_SIZES[hash])
  for (let i = 1; i <= count; i++) blocks.push(block(be32(i)))
  return finish(blocks, bits)
}
