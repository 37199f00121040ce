import { createHash, createPublicKey, generateKeyPairSync, sign } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import {
  compileExcludes,
  compileRuntimePolicy,
  computeKeyId,
  dsseKeyId,
  emptyRuntimePolicy,
  ImaKeyring,
  PolicySignatureError,
  parseImaLine,
  parseRuntimePolicy,
  RuntimePolicyError,
  signDsseEnvelope,
  verifyDsseEnvelope,
  verifyImaIncrement,
  verifyPrehashed,
} from '../../../src/evidence/ima/index.ts'
import { asciiImaList, generatedImaEntries, IMA_SIGNING_PUBLIC_PEM } from '../../helpers/ima-lists.ts'

function policyError(input: unknown, strict = true): RuntimePolicyError {
  try {
    parseRuntimePolicy(input, { strict })
  } catch (err) {
    if (err instanceof RuntimePolicyError) return err
    throw err
  }
  throw new Error('policy was accepted')
}

const valid = () => JSON.parse(JSON.stringify(emptyRuntimePolicy())) as Record<string, unknown>

describe('parseRuntimePolicy (upload schema)', () => {
  it.each([
    [{ 'ima-buf': { x: [] } }, 'ima-buf["x"]'],
    [{ digests: { '/a': ['ABCDEF0123456789ABCDEF0123456789ABCDEF01'] } }, 'digests["/a"][0]'],
    [{ keyrings: { '.ima': 'abc' } }, 'keyrings[".ima"]'],
    [{ meta: { version: 1, generator: 7 } }, 'meta.generator'],
    [{ release: -1 }, 'release'],
    [{ excludes: ['(?P<x>a'] }, 'excludes[0]'],
    [{ excludes: ['ok', 'a++'] }, 'excludes[1]'],
    [{ excludes: ['(?x)/tmp'] }, 'excludes[0]'],
    [{ ima: { ignored_keyrings: [], log_hash_alg: 'md5', dm_policy: null } }, 'ima.log_hash_alg'],
    [{ ima: { ignored_keyrings: [], log_hash_alg: 'sha1', dm_policy: { version: 1 } } }, 'ima.dm_policy'],
    [{ 'verification-keys': 'not json' }, 'verification-keys'],
    [{ 'verification-keys': '{"keyids":[1],"pubkeys":["AAAA"]}' }, 'verification-keys.pubkeys'],
  ])('rejects %j naming %s', (patch, field) => {
    expect(policyError({ ...valid(), ...patch }).field).toBe(field)
  })
})

describe('excludes (Python re dialect)', () => {
  it('matches at the start only, like re.match', () => {
    const m = compileExcludes(['/tmp', 'boot_aggregate', '.*\\.pyc$'])
    expect(m?.test('/tmpfoo/x')).toBe(true)
    expect(m?.test('/var/tmp')).toBe(false)
    expect(m?.test('boot_aggregate')).toBe(true)
    expect(m?.test('/usr/lib/x.pyc')).toBe(true)
    expect(m?.test('/usr/lib/x.pyc.bak')).toBe(false)
  })

  it('accepts named groups, also with one name in several patterns', () => {
    const m = compileExcludes(['(?P<a>x)y', '(?P<a>y)'])
    expect(m?.test('xy')).toBe(true)
    expect(m?.test('y')).toBe(true)
    expect(m?.test('x')).toBe(false)
  })

  it.each([
    ['(a)\\1', /excludes\[0\].*backreference/],
    ['(?P<d>x)(?P=d)', /excludes\[0\].*backreference/],
    ['/x(?=y)', /excludes\[0\].*lookahead/],
    ['(?<!y)/x', /excludes\[0\].*lookbehind/],
    ['(?>a)', /excludes\[0\].*atomic/],
    ['a*+', /excludes\[0\].*possessive/],
    ['(?x) a', /excludes\[0\].*verbose/],
    ['[[:alpha:]]', /excludes\[0\].*POSIX/],
    ['a{2000}', /excludes\[0\].*linear-time engine/],
  ])('refuses %s at upload, naming the pattern', (p, message) => {
    expect(() => parseRuntimePolicy({ ...valid(), excludes: [p] })).toThrow(message)
    expect(() => parseRuntimePolicy({ ...valid(), excludes: [p] })).toThrow(JSON.stringify(p))
  })
})

describe('compileRuntimePolicy', () => {
  it('is frozen and indexes single and multiple digests', () => {
    const p = parseRuntimePolicy({
      ...valid(),
      digests: { '/a': ['a'.repeat(40)], '/b': ['b'.repeat(64), 'c'.repeat(64)] },
    })
    const c = compileRuntimePolicy(p)
    expect(Object.isFrozen(c)).toBe(true)
    expect(c.digests.get('/a')).toBe('a'.repeat(40))
    expect(c.digests.get('/b')).toEqual(['b'.repeat(64), 'c'.repeat(64)])
    expect(c.size).toBe(2)
  })
})

describe('prehashed signature verification', () => {
  it.each(['prime256v1', 'secp384r1', 'secp521r1', 'secp256k1'])(
    'ECDSA on %s verifies only the signed digest',
    (curve) => {
      const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: curve })
      const data = Buffer.from('file contents')
      const sig = sign('sha256', data, privateKey)
      const digest = createHashOf(data)
      expect(verifyPrehashed(publicKey, 'sha256', digest, sig)).toBe(true)
      digest[0] = (digest[0] ?? 0) ^ 1
      expect(verifyPrehashed(publicKey, 'sha256', digest, sig)).toBe(false)
    },
  )
})

function createHashOf(data: Buffer): Buffer {
  return createHash('sha256').update(data).digest()
}

describe('DSSE signed policies (generated keys)', () => {
  const policy = Buffer.from(JSON.stringify(emptyRuntimePolicy()))
  const signer = generateKeyPairSync('ec', { namedCurve: 'secp521r1' })
  const signerPub = signer.publicKey.export({ type: 'spki', format: 'pem' }).toString()
  const other = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).publicKey

  it('signs with P-521 and verifies with the public key only; another key, no key or no envelope is refused', () => {
    const env = signDsseEnvelope(
      policy,
      signer.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    )
    expect(env.signatures[0]?.keyid).toBe(dsseKeyId(signer.publicKey))
    expect(verifyDsseEnvelope(JSON.stringify(env), [signerPub]).payload.equals(policy)).toBe(true)
    expect(() => verifyDsseEnvelope(JSON.stringify(env), [other])).toThrow(PolicySignatureError)
    expect(() => verifyDsseEnvelope(JSON.stringify(env), [])).toThrow(/no key/)
    const tampered = { ...env, payload: Buffer.from('{"tampered":1}').toString('base64') }
    expect(() => verifyDsseEnvelope(JSON.stringify(tampered), [signerPub])).toThrow(PolicySignatureError)
    let unsigned: PolicySignatureError | undefined
    try {
      verifyDsseEnvelope(policy, [signerPub])
    } catch (e) {
      unsigned = e as PolicySignatureError
    }
    expect(unsigned?.statusCode).toBe(400)
    expect(unsigned?.message).toBe('Runtime policy is not signed!')
  })

  it('accepts an RSA-signed envelope (verification side)', () => {
    const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
    const body = Buffer.from('{"a":1}')
    const pae = Buffer.concat([Buffer.from('DSSEv1 28 application/vnd.keylime+json 7 '), body])
    const env = {
      payload: body.toString('base64'),
      payloadType: 'application/vnd.keylime+json',
      signatures: [{ keyid: '', sig: sign('sha256', pae, privateKey).toString('base64') }],
    }
    expect(verifyDsseEnvelope(env, [publicKey]).payload.toString()).toBe('{"a":1}')
  })
})

describe('keyrings and verification-keys (generated keys and list)', () => {
  it('keyrings deduplicate and round-trip through JSON', () => {
    const ring = ImaKeyring.fromPem([IMA_SIGNING_PUBLIC_PEM])
    ring.add(createPublicKey(IMA_SIGNING_PUBLIC_PEM))
    expect(ring.size).toBe(1)
    const [keyid] = ring.toJSON().keyids
    expect(keyid).toBe(computeKeyId(createPublicKey(IMA_SIGNING_PUBLIC_PEM)))
    expect(ImaKeyring.fromJSON(ring.toJSON()).find(keyid as number).length).toBe(1)
  })

  it('a keyring in verification-keys verifies signed files without digests; without it they fail', () => {
    const entries = generatedImaEntries(2)
    const listText = asciiImaList(entries)
    const digests: Record<string, string[]> = {}
    for (const e of entries) {
      const parsed = parseImaLine(e.line)
      if (parsed.templateName === 'ima-ng') digests[parsed.name] = [parsed.digestHex]
    }
    const withKeys = (vk: string) =>
      compileRuntimePolicy(parseRuntimePolicy({ ...valid(), digests, 'verification-keys': vk }))
    const ring = JSON.stringify(ImaKeyring.fromPem([IMA_SIGNING_PUBLIC_PEM]).toJSON())
    const run = (vk: string) =>
      verifyImaIncrement({ listText, firstEntry: 0, state: null, quotedPcr10: null, policy: withKeys(vk) })
    expect(run(ring).verdict).toEqual({ ok: true })
    expect(run('').verdict.ok).toBe(false)
    const { pubkeys } = JSON.parse(ring) as { pubkeys: string[] }
    expect(() => withKeys(JSON.stringify({ pubkeys }))).toThrow(/verification-keys.keyids/)
  })
})
