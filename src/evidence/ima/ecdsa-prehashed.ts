/**
 * ECDSA verification over an already computed digest. node:crypto only verifies ECDSA after hashing the message
 * itself, but IMA signs the file digest directly, so the group arithmetic is done here (public data only, so
 * constant time is not needed). Curves: the ones IMA keys use in practice.
 */
import type { KeyObject } from 'node:crypto'

interface Curve {
  p: bigint
  a: bigint
  n: bigint
  gx: bigint
  gy: bigint
  bits: number
}

const h = (hex: string): bigint => BigInt(`0x${hex}`)

const CURVES: Record<string, Curve> = {
  secp256k1: {
    p: h('FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFC2F'),
    a: 0n,
    n: h('FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141'),
    gx: h('79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798'),
    gy: h('483ADA7726A3C4655DA4FBFC0E1108A8FD17B448A68554199C47D08FFB10D4B8'),
    bits: 256,
  },
  'P-256': {
    p: h('FFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF'),
    a: h('FFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFC'),
    n: h('FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551'),
    gx: h('6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296'),
    gy: h('4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5'),
    bits: 256,
  },
  'P-384': {
    p: h('FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFFFF0000000000000000FFFFFFFF'),
    a: h('FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFFFF0000000000000000FFFFFFFC'),
    n: h('FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973'),
    gx: h('AA87CA22BE8B05378EB1C71EF320AD746E1D3B628BA79B9859F741E082542A385502F25DBF55296C3A545E3872760AB7'),
    gy: h('3617DE4A96262C6F5D9E98BF9292DC29F8F41DBD289A147CE9DA3113B5F0B8C00A60B1CE1D7E819D7A431D7C90EA0E5F'),
    bits: 384,
  },
  'P-521': {
    p: (1n << 521n) - 1n,
    a: (1n << 521n) - 4n,
    n: h(
      '01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFA51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409',
    ),
    gx: h(
      '00C6858E06B70404E9CD9E3ECB662395B4429C648139053FB521F828AF606B4D3DBAA14B5E77EFE75928FE1DC127A2FFA8DE3348B3C1856A429BF97E7E31C2E5BD66',
    ),
    gy: h(
      '011839296A789A3BC0045C8A5FB42C7D1BD998F54449579B446817AFBD17273E662C97EE72995EF42640C550B9013FAD0761353C7086A272C24088BE94769FD16650',
    ),
    bits: 521,
  },
}

type Jacobian = [bigint, bigint, bigint]

function mod(x: bigint, m: bigint): bigint {
  const r = x % m
  return r < 0n ? r + m : r
}

function inverse(x: bigint, m: bigint): bigint {
  let [a, b, u, v] = [mod(x, m), m, 1n, 0n]
  while (a !== 0n) {
    const q = b / a
    ;[a, b] = [b - q * a, a]
    ;[u, v] = [v - q * u, u]
  }
  return mod(v, m)
}

function double(c: Curve, [x, y, z]: Jacobian): Jacobian {
  if (y === 0n || z === 0n) return [0n, 1n, 0n]
  const { p } = c
  const yy = (y * y) % p
  const s = (4n * x * yy) % p
  const zz = (z * z) % p
  const m = mod(3n * x * x + c.a * zz * zz, p)
  const x3 = mod(m * m - 2n * s, p)
  const y3 = mod(m * (s - x3) - 8n * yy * yy, p)
  const z3 = (2n * y * z) % p
  return [x3, y3, z3]
}

function add(c: Curve, a: Jacobian, b: Jacobian): Jacobian {
  if (a[2] === 0n) return b
  if (b[2] === 0n) return a
  const { p } = c
  const z1z1 = (a[2] * a[2]) % p
  const z2z2 = (b[2] * b[2]) % p
  const u1 = (a[0] * z2z2) % p
  const u2 = (b[0] * z1z1) % p
  const s1 = (a[1] * b[2] * z2z2) % p
  const s2 = (b[1] * a[2] * z1z1) % p
  if (u1 === u2) return s1 === s2 ? double(c, a) : [0n, 1n, 0n]
  const hh = mod(u2 - u1, p)
  const r = mod(s2 - s1, p)
  const h2 = (hh * hh) % p
  const h3 = (h2 * hh) % p
  const x3 = mod(r * r - h3 - 2n * u1 * h2, p)
  const y3 = mod(r * (u1 * h2 - x3) - s1 * h3, p)
  const z3 = (a[2] * b[2] * hh) % p
  return [x3, y3, z3]
}

/** u1·G + u2·Q by simultaneous double-and-add. */
function twoMul(c: Curve, u1: bigint, g: Jacobian, u2: bigint, q: Jacobian): Jacobian {
  const gq = add(c, g, q)
  let acc: Jacobian = [0n, 1n, 0n]
  const bits = Math.max(u1.toString(2).length, u2.toString(2).length)
  for (let i = bits - 1; i >= 0; i--) {
    acc = double(c, acc)
    const b1 = (u1 >> BigInt(i)) & 1n
    const b2 = (u2 >> BigInt(i)) & 1n
    if (b1 && b2) acc = add(c, acc, gq)
    else if (b1) acc = add(c, acc, g)
    else if (b2) acc = add(c, acc, q)
  }
  return acc
}

/** DER `SEQUENCE { INTEGER r, INTEGER s }`; null if malformed. */
function decodeDerSignature(sig: Uint8Array): [bigint, bigint] | null {
  let p = 0
  const readLen = (): number | null => {
    const first = sig[p++]
    if (first === undefined) return null
    if (first < 0x80) return first
    const n = first & 0x7f
    if (n === 0 || n > 2) return null
    let len = 0
    for (let i = 0; i < n; i++) len = (len << 8) | (sig[p++] ?? 0)
    return len
  }
  if (sig[p++] !== 0x30) return null
  const seqLen = readLen()
  if (seqLen === null || p + seqLen !== sig.length) return null
  const ints: bigint[] = []
  for (let i = 0; i < 2; i++) {
    if (sig[p++] !== 0x02) return null
    const len = readLen()
    if (len === null || len === 0 || p + len > sig.length) return null
    ints.push(h(Buffer.from(sig.subarray(p, p + len)).toString('hex')))
    p += len
  }
  if (p !== sig.length) return null
  return [ints[0] as bigint, ints[1] as bigint]
}

/** Verifies a DER ECDSA signature over `digest` (not re-hashed) with an EC public key. */
export function verifyEcdsaPrehashed(key: KeyObject, digest: Uint8Array, signature: Uint8Array): boolean {
  const jwk = key.export({ format: 'jwk' })
  const curve = typeof jwk.crv === 'string' ? CURVES[jwk.crv] : undefined
  if (curve === undefined || typeof jwk.x !== 'string' || typeof jwk.y !== 'string') return false
  const rs = decodeDerSignature(signature)
  if (rs === null) return false
  const [r, s] = rs
  const { n } = curve
  if (r <= 0n || r >= n || s <= 0n || s >= n) return false
  let e = digest.length === 0 ? 0n : h(Buffer.from(digest).toString('hex'))
  const digestBits = digest.length * 8
  if (digestBits > curve.bits) e >>= BigInt(digestBits - curve.bits)
  const w = inverse(s, n)
  const u1 = mod(e * w, n)
  const u2 = mod(r * w, n)
  const q: Jacobian = [
    h(Buffer.from(jwk.x, 'base64url').toString('hex')),
    h(Buffer.from(jwk.y, 'base64url').toString('hex')),
    1n,
  ]
  const point = twoMul(curve, u1, [curve.gx, curve.gy, 1n], u2, q)
  if (point[2] === 0n) return false
  const zInv = inverse(point[2], curve.p)
  const x = mod(point[0] * zInv * zInv, curve.p)
  return mod(x, n) === r
}
