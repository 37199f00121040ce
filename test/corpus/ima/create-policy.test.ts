import { describe, expect, it } from 'vitest'
import {
  createRuntimePolicy,
  legacyAllowlist,
  parseRuntimePolicy,
  policyTimestamp,
  RuntimePolicyError,
} from '../../../src/evidence/ima/index.ts'
import { fixture } from '../fixture.ts'

const now = new Date(Date.UTC(2023, 0, 1, 0, 0, 0))
const text = (f: string) => fixture(f).toString('utf8')
const expected = (f: string) => {
  const p = JSON.parse(text(`policies/${f}`))
  p.meta.timestamp = policyTimestamp(now)
  return p
}
const arm1 = text('ima/keylime-tests-static-test2-arm1.ascii')
const arm2 = text('ima/keylime-tests-static-test2-arm2.ascii')
const base = (f: string) => parseRuntimePolicy(fixture(`policies/${f}`))

describe('createRuntimePolicy (keylime-tests static vectors)', () => {
  it('test1: empty list gives the empty generator-3 policy', () => {
    expect(createRuntimePolicy({ imaListText: '', now })).toEqual(
      expected('keylime-tests-static-test1-output1.json'),
    )
  })

  it('test2: IMA list digests, boot_aggregate included', () => {
    expect(createRuntimePolicy({ imaListText: arm1, now })).toEqual(
      expected('keylime-tests-static-test2-output1.json'),
    )
    // ima-buf entries are only merged on request.
    const b = base('keylime-tests-static-test2-output1.json')
    expect(createRuntimePolicy({ base: b, imaListText: arm2, now })).toEqual(
      expected('keylime-tests-static-test2-output1.json'),
    )
  })

  it.each([
    ['keylime-tests-static-test2-output3.json', { includeImaBuf: true }],
    [
      'keylime-tests-static-test2-output4.json',
      { includeImaBuf: true, ignoredKeyrings: ['.builtin_trusted_keys'] },
    ],
    [
      'keylime-tests-static-test2-output5.json',
      { includeKeyrings: true, ignoredKeyrings: ['.builtin_trusted_keys'] },
    ],
    [
      'keylime-tests-static-test2-output6.json',
      { includeKeyrings: true, includeImaBuf: true, ignoredKeyrings: ['.builtin_trusted_keys'] },
    ],
  ])('test2: %s', (out, opts) => {
    const b = base('keylime-tests-static-test2-output1.json')
    expect(createRuntimePolicy({ base: b, imaListText: arm2, now, ...opts })).toEqual(expected(out))
  })

  it('test3: exclude list, ignored keyrings, verification key from a certificate', () => {
    const o1 = createRuntimePolicy({
      imaListText: arm1,
      excludeListText: text('policies/keylime-tests-static-test3-exclude-list-1.txt'),
      now,
    })
    expect(o1).toEqual(expected('keylime-tests-static-test3-output1.json'))
    const o2 = createRuntimePolicy({
      base: o1,
      imaListText: '',
      ignoredKeyrings: ['.builtin_trusted_keys', 'test123'],
      now,
    })
    expect(o2).toEqual(expected('keylime-tests-static-test3-output2.json'))
    const o3 = createRuntimePolicy({
      base: o2,
      imaListText: '',
      verificationKeys: [text('certs/keylime-tests-static-test3-eckey-ecdsa.pem')],
      now,
    })
    expect(o3).toEqual(expected('keylime-tests-static-test3-output3.json'))
  })

  it('test4: flat allowlist', () => {
    expect(
      createRuntimePolicy({
        allowlistText: text('policies/keylime-tests-static-test4-allowlist-1.txt'),
        now,
      }),
    ).toEqual(expected('keylime-tests-static-test4-output1.json'))
  })

  it('keylime-policy-commands: allowlist and exclude list', () => {
    const p = createRuntimePolicy({
      allowlistText: text('policies/keylime-tests-pc-allowlist.txt'),
      excludeListText: text('policies/keylime-tests-pc-excludelist.txt'),
      now,
    })
    expect(p.digests.test).toEqual(['f2ca1bb6c7e907d06dafe4687e579fce76b37e4e93b7605022da52e6ccc26fd2'])
    expect(p.excludes).toEqual(['test'])
  })

  it('rejects digests of another algorithm than requested and bad exclude lines', () => {
    expect(() =>
      createRuntimePolicy({
        allowlistText: '',
        fileDigests: [['/a', 'ab'.repeat(20)]],
        hashAlg: 'sha256',
        now,
      }),
    ).toThrow(RuntimePolicyError)
    expect(() => createRuntimePolicy({ excludeListText: '(?>x)\n', now })).toThrow(/excludes\[0\]/)
  })

  it('prints the legacy allowlist with boot_aggregate first', () => {
    const p = createRuntimePolicy({ imaListText: arm1, now })
    expect(legacyAllowlist(p).split('\n')[0]).toBe(
      '76f8ae56f16b39f55be8145bee2824a6d64a84c009104f58305ea2449479da72  boot_aggregate',
    )
  })
})
