import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { KdfError, kdfa, kdfe, type TpmHashName } from '../../src/crypto/kdf.ts'

// Independent reference: OpenSSL's KBKDF (SP800-108 counter mode: i || label || 0x00 || context || L) and SSKDF
// (SP800-56C one-step: H(i || Z || info)) implement the same constructions as TPM KDFa / KDFe.
function openssl(kdf: 'KBKDF' | 'SSKDF', hash: TpmHashName, bytes: number, opts: Record<string, Uint8Array>) {
  const args = ['kdf', '-keylen', String(bytes), '-kdfopt', `digest:${hash.toUpperCase()}`]
  if (kdf === 'KBKDF') args.push('-kdfopt', 'mac:HMAC')
  for (const [k, v] of Object.entries(opts)) args.push('-kdfopt', `hex${k}:${Buffer.from(v).toString('hex')}`)
  args.push(kdf)
  const out = execFileSync('openssl', args, { encoding: 'utf8', timeout: 30_000 })
  return Buffer.from(out.trim().replaceAll(':', ''), 'hex')
}

const hashes: TpmHashName[] = ['sha1', 'sha256', 'sha384', 'sha512']

describe('kdfa', () => {
  it.each(hashes)('matches OpenSSL KBKDF for %s, multi-block and odd lengths', (hash) => {
    for (const bytes of [16, 32, 77]) {
      const key = randomBytes(32)
      const u = randomBytes(17)
      const v = randomBytes(9)
      const ours = kdfa(hash, key, 'STORAGE', u, v, bytes * 8)
      const ref = openssl('KBKDF', hash, bytes, {
        key,
        salt: Buffer.from('STORAGE'),
        info: Buffer.concat([u, v]),
      })
      expect(Buffer.from(ours).toString('hex')).toBe(ref.toString('hex'))
    }
  })

  it('masks the excess high bits when bits is not a multiple of 8', () => {
    const key = Buffer.alloc(20, 7)
    const full = kdfa('sha256', key, 'X', undefined, undefined, 16)
    const odd = kdfa('sha256', key, 'X', undefined, undefined, 13)
    expect(odd.length).toBe(2)
    // The size (13 vs 16) enters the HMAC, so only check the mask property, not equality with `full`.
    expect((odd[0] as number) & 0xe0).toBe(0)
    expect(full.length).toBe(2)
  })

  it('rejects unsupported hashes and sizes with KdfError', () => {
    expect(() => kdfa('md5' as TpmHashName, new Uint8Array(1), 'A')).toThrow(KdfError)
    expect(() => kdfa('sha256', new Uint8Array(1), 'A', undefined, undefined, 0)).toThrow(KdfError)
    expect(() => kdfe('sha256', new Uint8Array(1), 'A', new Uint8Array(), new Uint8Array(), -8)).toThrow(
      KdfError,
    )
  })
})

describe('kdfe', () => {
  it.each(hashes)('matches OpenSSL SSKDF for %s', (hash) => {
    for (const bytes of [16, 32, 70]) {
      const z = randomBytes(32)
      const u = randomBytes(32)
      const v = randomBytes(32)
      const ours = kdfe(hash, z, 'IDENTITY', u, v, bytes * 8)
      const ref = openssl('SSKDF', hash, bytes, {
        key: z,
        info: Buffer.concat([Buffer.from('IDENTITY\0'), u, v]),
      })
      expect(Buffer.from(ours).toString('hex')).toBe(ref.toString('hex'))
    }
  })
})
