import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { decryptPayload } from '../../../src/crypto/payload.ts'
import { normalizeTenantArgv } from '../../../src/tenant/argv.ts'
import { keepCurrentPolicies } from '../../../src/tenant/cli-actions.ts'
import type { TenantError } from '../../../src/tenant/errors.ts'
import { preparePayloadFromFiles } from '../../../src/tenant/payload-prep.ts'
import { pythonJsonDumps, pythonRepr } from '../../../src/tenant/python-format.ts'
import { retryDelaySeconds } from '../../../src/tenant/tenant-service.ts'

describe('tenant argv', () => {
  it('rewrites upstream multi-letter flags and underscore spellings', () => {
    expect(
      normalizeTenantArgv(['-c', 'add', '-tp', '9002', '-vp=8881', '-nvc', '--tpm_policy', '{}']),
    ).toEqual([
      '-c',
      'add',
      '--targetport',
      '9002',
      '--cvport=8881',
      '--no-verifier-check',
      '--tpm-policy',
      '{}',
    ])
  })

  it('leaves values that look like flags only when they are exact matches', () => {
    expect(normalizeTenantArgv(['-u', '-tpx'])).toEqual(['-u', '-tpx'])
  })
})

describe('tenant retry delays', () => {
  it('follows upstream: retry_interval ** n when exponential and base > 1', () => {
    const p = { maxRetries: 5, retryInterval: 2, exponentialBackoff: true }
    expect([1, 2, 3, 4, 5].map((n) => retryDelaySeconds(p, n))).toEqual([2, 4, 8, 16, 32])
    expect(retryDelaySeconds({ ...p, retryInterval: 1 }, 4)).toBe(1)
    expect(retryDelaySeconds({ ...p, exponentialBackoff: false }, 4)).toBe(2)
  })
})

describe('tenant payload preparation', () => {
  it('encrypts a file under K = U xor V so the agent can decrypt it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kl-tenant-'))
    writeFileSync(join(dir, 'secret.txt'), 'top secret')
    const prepared = await preparePayloadFromFiles({ file: join(dir, 'secret.txt'), maxPayloadSize: 1024 })
    expect(prepared).toBeDefined()
    const { k, u, v, payload } = prepared!
    expect(Buffer.from(u.map((b, i) => b ^ (v[i] as number)))).toEqual(k)
    expect(decryptPayload(k, payload as string).toString()).toBe('top secret')
  })

  it('refuses a payload over max_payload_size', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kl-tenant-'))
    writeFileSync(join(dir, 'big.bin'), Buffer.alloc(2048))
    await expect(
      preparePayloadFromFiles({ file: join(dir, 'big.bin'), maxPayloadSize: 1024 }),
    ).rejects.toThrow(/max_payload_size/)
  })
})

describe('tenant update keeps the current policies', () => {
  const uuid = 'd432fbb3-d2f1-4a97-9ef7-75bd81c00000'
  const tpmPolicy =
    '{"15":["0000000000000000000000000000000000000000000000000000000000000000"],"mask":"0x8000"}'

  it("re-sends the verifier's PCR policy unless --tpm-policy replaces it", () => {
    const current = { has_runtime_policy: 0, has_mb_refstate: 0, tpm_policy: tpmPolicy }
    expect(keepCurrentPolicies(uuid, current, {}).tpmPolicy).toBe(tpmPolicy)
    expect(keepCurrentPolicies(uuid, current, { tpmPolicy: '{}' }).tpmPolicy).toBe('{}')
  })

  it('refuses to drop a runtime or measured-boot policy, naming the flags', () => {
    const current = { has_runtime_policy: 1, has_mb_refstate: 1, tpm_policy: tpmPolicy }
    expect(() => keepCurrentPolicies(uuid, current, {})).toThrow(
      `update would drop the policies of agent ${uuid}: give its runtime policy (--runtime-policy FILE or --runtime-policy-name NAME) and its measured-boot policy (--mb-policy FILE or --mb-policy-name NAME) again; to remove a policy, delete the agent and add it without one`,
    )
    const err = (() => {
      try {
        keepCurrentPolicies(uuid, current, { runtimePolicyName: 'rt' })
      } catch (e) {
        return e as TenantError
      }
    })()
    expect(err?.exitCode).toBe(2)
    expect(err?.message).toMatch(/give its measured-boot policy/)
    expect(
      keepCurrentPolicies(uuid, current, { runtimePolicyName: 'rt', mbPolicyName: 'mb' }).tpmPolicy,
    ).toBe(tpmPolicy)
  })
})

describe('tenant output in Python json.dumps spelling', () => {
  it('matches what Python prints (separators, non-ASCII escapes, nested values)', () => {
    // python3 -c 'import json; print(json.dumps({"a": [1, "é", None, True], "b": {"c": "x\"y", "d": "\x7f€"}}))'
    expect(pythonJsonDumps({ a: [1, 'é', null, true], b: { c: 'x"y', d: '\u007f€' } })).toBe(
      '{"a": [1, "\\u00e9", null, true], "b": {"c": "x\\"y", "d": "\\u007f\\u20ac"}}',
    )
    expect(pythonJsonDumps({ uuids: [['a'], ['b']] })).toBe('{"uuids": [["a"], ["b"]]}')
  })
})

describe('tenant output in Python repr spelling', () => {
  it('matches what Python prints for dicts, quotes, None, booleans and control characters', () => {
    // python3 -c "print(repr({'code': 200, 'results': {'names': ['a', \"it's\", 'q\"\\'x', 'tab\tnl\n\x7f\x85é'], 'n': None, 't': True, 'i': 3}}))"
    expect(
      pythonRepr({
        code: 200,
        results: { names: ['a', "it's", `q"'x`, 'tab\tnl\n\u007f\u0085é'], n: null, t: true, i: 3 },
      }),
    ).toBe(
      `{'code': 200, 'results': {'names': ['a', "it's", 'q"\\'x', 'tab\\tnl\\n\\x7f\\x85é'], 'n': None, 't': True, 'i': 3}}`,
    )
  })
})
