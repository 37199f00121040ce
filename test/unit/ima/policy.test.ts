import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import {
  compileExcludes,
  compileRuntimePolicy,
  dsseKeyId,
  emptyRuntimePolicy,
  ImaKeyring,
  PolicySignatureError,
  parseRuntimePolicy,
  RuntimePolicyError,
  signDsseEnvelope,
  verifyDsseEnvelope,
  verifyImaIncrement,
  verifyPrehashed,
} from '../../../src/evidence/ima/index.ts'
import { fixture, fixturePath } from '../../helpers/fixture.ts'

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
  it('accepts the current-generator corpus policies', () => {
    for (const f of [
      'keylime-crp-policy-sha256.json',
      'keylime-sign-runtime-policy.json',
      'keylime-tests-static-test2-output6.json',
    ]) {
      const p = parseRuntimePolicy(fixture(`policies/${f}`))
      expect(p.meta.version).toBe(1)
    }
  })

  it('names the field of a prefixed digest (legacy fixture) and of a missing member', () => {
    const prefixed = policyError(fixture('policies/keylime-runtime-policy-test.json'))
    expect(prefixed.field).toBe('digests["boot_aggregate"][0]')
    expect(prefixed.code).toBe('ERR_RUNTIME_POLICY')
    expect(policyError(fixture('policies/keylime-testsuite-runtime_policy_test.json')).field).toBe('release')
    // The tolerant reading used for tenant files keeps the prefixed digest verbatim.
    expect(
      parseRuntimePolicy(fixture('policies/keylime-runtime-policy-test.json'), { strict: false }).digests
        .boot_aggregate?.[0],
    ).toMatch(/^sha256:/)
  })

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

  it('rejects non-JSON bytes and DSSE envelopes passed as policies', () => {
    expect(policyError(fixture('policies/keylime-sign-runtime-policy-bogus.json')).field).toBe('$')
    expect(
      policyError(fixture('policies/keylime-runtime-policy-test-signed.dsse.json'), false).message,
    ).toMatch(/DSSE/)
  })

  it('accepts verification-keys as keyring JSON and compiles them into a keyring', () => {
    const keys = readFileSync(fixturePath('policies/keylime-testsuite-ima-bad-keyring-string.json'), 'utf8')
    const compiled = compileRuntimePolicy(
      parseRuntimePolicy({
        ...valid(),
        'verification-keys': JSON.stringify({ keyids: [], ...JSON.parse(keys) }),
      }),
    )
    expect(compiled.verificationKeys.size).toBe(2)
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

describe('DSSE signed policies', () => {
  const pub = readFileSync(fixturePath('certs/keylime-runtime-policy-pubkey.pub'), 'utf8')

  it('verifies the upstream envelope and returns the policy bytes', () => {
    const { payload } = verifyDsseEnvelope(fixture('policies/keylime-runtime-policy-test-signed.dsse.json'), [
      pub,
    ])
    expect(payload.equals(fixture('policies/keylime-runtime-policy-test.json'))).toBe(true)
    expect(dsseKeyId(createPublicKey(pub))).toMatch(/^8114198d/)
  })

  it('rejects the bad envelope, a missing key and unsigned policies', () => {
    expect(() =>
      verifyDsseEnvelope(fixture('policies/keylime-runtime-policy-test-signed-bad.dsse.json'), [pub]),
    ).toThrow(PolicySignatureError)
    expect(() =>
      verifyDsseEnvelope(fixture('policies/keylime-runtime-policy-test-signed.dsse.json'), []),
    ).toThrow(/no key/)
    const unsigned = (() => {
      try {
        verifyDsseEnvelope(fixture('policies/keylime-sign-runtime-policy.json'), [pub])
      } catch (e) {
        return e as PolicySignatureError
      }
    })()
    expect(unsigned?.statusCode).toBe(400)
    expect(unsigned?.message).toBe('Runtime policy is not signed!')
  })

  it('signs with P-521 and verifies with the public key only', () => {
    const priv = readFileSync(fixturePath('certs/keylime-sign-ec-p521-private.pem'), 'utf8')
    const body = fixture('policies/keylime-sign-runtime-policy.json')
    const env = signDsseEnvelope(body, priv)
    expect(env.signatures[0]?.keyid).toBe(dsseKeyId(createPublicKey(createPrivateKey(priv))))
    const pubPem = readFileSync(fixturePath('certs/keylime-sign-ec-p521-public.pem'), 'utf8')
    expect(verifyDsseEnvelope(JSON.stringify(env), [pubPem]).payload.equals(body)).toBe(true)
    expect(() => verifyDsseEnvelope(JSON.stringify(env), [pub])).toThrow(PolicySignatureError)
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

  it('keyrings deduplicate and round-trip through JSON', () => {
    const ring = ImaKeyring.fromPem([readFileSync(fixturePath('certs/keylime-ima-rsa2048pub.pem'), 'utf8')])
    ring.add(createPublicKey(readFileSync(fixturePath('certs/keylime-ima-rsa2048pub.pem'), 'utf8')))
    expect(ring.size).toBe(1)
    expect(ring.toJSON().keyids).toEqual([0xf3452d23])
    expect(ImaKeyring.fromJSON(ring.toJSON()).find(0xf3452d23).length).toBe(1)
  })
})

function createHashOf(data: Buffer): Buffer {
  return createHash('sha256').update(data).digest()
}

describe('verification-keys from upstream keyring strings', () => {
  const list = fixture('ima/keylime-testsuite-signatures.ascii').toString('utf8')
  const withKeys = (file: string) =>
    compileRuntimePolicy(
      parseRuntimePolicy({
        ...valid(),
        'verification-keys': fixture(`policies/${file}`).toString('utf8').trim(),
      }),
    )

  it('the good keyring verifies both signed files without digests; the one lacking keyids is refused', () => {
    const r = verifyImaIncrement({
      listText: list,
      firstEntry: 0,
      state: null,
      quotedPcr10: null,
      policy: withKeys('keylime-testsuite-ima-keyring-string.json'),
    })
    expect(r.verdict).toEqual({ ok: true })
    expect(() => withKeys('keylime-testsuite-ima-bad-keyring-string.json')).toThrow(
      /verification-keys.keyids/,
    )
  })
})
