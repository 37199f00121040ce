import { createHash } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import {
  assertCheckableTpmPolicy,
  buildTpmPolicy,
  checkPcrPolicy,
  expectedDataPcr,
  maskOfPcrs,
  parseTpmPolicy,
  pcrsOfMask,
  requiredPcrs,
  TpmPolicyError,
} from '../../../../src/evidence/quote/index.ts'

const hex = (s: string, alg = 'sha256') => createHash(alg).update(s).digest('hex')
const bytes = (h: string) => new Uint8Array(Buffer.from(h, 'hex'))
const PEM = '-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----\n'

function ids(v: ReturnType<typeof checkPcrPolicy>): string[] {
  return v.ok ? [] : v.events.map((e) => e.eventId)
}

describe('tpm_policy', () => {
  it('builds the wire policy like the tenant: lists, mask, IMA and measured-boot bits', () => {
    expect(buildTpmPolicy({ '0': 'AB'.repeat(32), '7': ['cd'.repeat(32)] })).toEqual({
      '0': ['ab'.repeat(32)],
      '7': ['cd'.repeat(32)],
      mask: '0x81',
    })
    expect(buildTpmPolicy('{}', { runtimePolicy: true })).toEqual({ mask: '0x400' })
    expect(buildTpmPolicy(null, { mbPolicy: true }).mask).toBe('0xfbff')
    expect(buildTpmPolicy({ '23': [], mask: '0x1' }, { runtimePolicy: true, mbPolicy: true }).mask).toBe(
      '0x80ffff',
    )
  })

  it.each([
    [{ '10': ['00'] }, /PCR 10 is reserved/],
    [{ '16': ['00'] }, /PCR 16 is reserved/],
    [{ '24': ['00'] }, /out of range/],
    [{ '-1': ['00'] }, /not a PCR number/],
    [{ '01': ['00'] }, /not a PCR number/],
    [{ '1': ['xyz'] }, /not hex/],
    [{ '1': [1] }, /non-string/],
    [{ '1': { a: 1 } }, /hex string or a list/],
    ['[1]', /must be a JSON object/],
    ['{', /not valid JSON/],
  ])('refuses %j', (policy, msg) => {
    expect(() => buildTpmPolicy(policy)).toThrow(TpmPolicyError)
    expect(() => buildTpmPolicy(policy)).toThrow(msg)
  })

  it('parses the stored policy, keeping its mask', () => {
    const p = parseTpmPolicy('{"0":["AA"],"15":"bb","mask":"0x408001"}')
    expect(p.mask).toBe('0x408001')
    expect([...p.pcrs.entries()].map(([k, v]) => [k, [...v]])).toEqual([
      [0, ['aa']],
      [15, ['bb']],
    ])
    expect(parseTpmPolicy({ '3': [] }).mask).toBe('0x8')
    expect(() => parseTpmPolicy({ mask: 'ff' })).toThrow(TpmPolicyError)
  })

  it('converts masks and PCR lists both ways', () => {
    expect(pcrsOfMask('0x408400')).toEqual([10, 15, 22])
    expect(maskOfPcrs([10, 15, 22])).toBe('0x408400')
    expect(pcrsOfMask(maskOfPcrs([0, 23]))).toEqual([0, 23])
    expect(() => pcrsOfMask('0x1000000')).toThrow(/above 23/)
  })
})

describe('checkPcrPolicy', () => {
  const pcr16 = expectedDataPcr(PEM, 'sha256')
  const quoted = new Map<number, Uint8Array>([
    [0, bytes(hex('zero'))],
    [10, bytes(hex('ima'))],
    [16, pcr16],
  ])

  it('computes the PCR 16 binding as an extend of H(pubkey PEM) onto zeros', () => {
    const inner = createHash('sha384').update(PEM).digest()
    const expected = createHash('sha384')
      .update(Buffer.concat([Buffer.alloc(48), inner]))
      .digest()
    expect(Buffer.from(expectedDataPcr(PEM, 'sha384'))).toEqual(expected)
  })

  it('passes when values are allowed and the key is bound', () => {
    const policy = parseTpmPolicy({ '0': [hex('other'), hex('zero')] })
    expect(
      checkPcrPolicy({ pcrs: quoted, tpmPolicy: policy, boundPubkeyPem: PEM, hashAlg: 'sha256' }),
    ).toEqual({
      ok: true,
    })
    // a PCR 10 value listed in a (legacy) tpm_policy is enforced, not silently left to an IMA check that may not run
    expect(
      ids(checkPcrPolicy({ pcrs: quoted, tpmPolicy: parseTpmPolicy({ '10': ['00'] }), hashAlg: 'sha256' })),
    ).toEqual(['pcr_validation.invalid_pcr_10'])
    expect(
      ids(
        checkPcrPolicy({
          pcrs: quoted,
          tpmPolicy: parseTpmPolicy({ '10': [hex('ima')] }),
          hashAlg: 'sha256',
        }),
      ),
    ).toEqual([])
  })

  it('requires the PCRs derived from the enrolled checks, whatever the mask says', () => {
    const empty = parseTpmPolicy({ mask: '0x0' })
    expect(
      requiredPcrs(empty, { runtimePolicy: true, measuredBootPolicy: false, bindsPubkey: false }),
    ).toEqual([10])
    expect(
      requiredPcrs(empty, { runtimePolicy: false, measuredBootPolicy: true, bindsPubkey: true }),
    ).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16])
    expect(
      requiredPcrs(parseTpmPolicy({ '23': [], mask: '0x1' }), {
        runtimePolicy: false,
        measuredBootPolicy: false,
        bindsPubkey: false,
      }),
    ).toEqual([0, 23])
    const noIma = new Map<number, Uint8Array>([[0, bytes(hex('zero'))]])
    const v = checkPcrPolicy({ pcrs: noIma, tpmPolicy: empty, hashAlg: 'sha256', required: [0, 10] })
    expect(v.ok ? [] : v.events.map((e) => [e.eventId, e.context.data])).toEqual([
      ['pcr_validation.missing_pcrs', [10]],
    ])
  })

  it('refuses tpm_policy values for PCR 10 and 16 at enrolment', () => {
    expect(() => assertCheckableTpmPolicy(parseTpmPolicy({ '10': ['00'] }))).toThrow(/PCR 10/)
    expect(() => assertCheckableTpmPolicy(parseTpmPolicy({ '16': ['00'] }))).toThrow(/PCR 16/)
    expect(() => assertCheckableTpmPolicy(parseTpmPolicy({ '0': ['00'], mask: '0x10401' }))).not.toThrow()
  })

  it('reports invalid and missing PCRs with upstream event ids', () => {
    const policy = parseTpmPolicy({ '0': [hex('other')], '5': [hex('five')], '7': [hex('seven')] })
    const v = checkPcrPolicy({
      pcrs: quoted,
      tpmPolicy: policy,
      boundPubkeyPem: `${PEM}x`,
      hashAlg: 'sha256',
    })
    expect(ids(v)).toEqual([
      'pcr_validation.invalid_pcr_16',
      'pcr_validation.invalid_pcr_0',
      'pcr_validation.missing_pcrs',
    ])
    if (v.ok) throw new Error('unreachable')
    expect(v.events.every((e) => e.recoverable)).toBe(true)
    expect(v.events[1]?.context).toEqual({
      context: 'PCR value is not in allowlist',
      got: hex('zero'),
      expected: [hex('other')],
    })
    expect(v.events[2]?.context).toEqual({ context: 'PCRs are missing in quote', data: [5, 7] })
  })

  it('requires PCR 16 only when a key is bound', () => {
    const without = new Map([...quoted].filter(([p]) => p !== 16))
    expect(
      ids(checkPcrPolicy({ pcrs: without, tpmPolicy: null, boundPubkeyPem: PEM, hashAlg: 'sha256' })),
    ).toEqual(['pcr_validation.missing_pcr_16'])
    expect(ids(checkPcrPolicy({ pcrs: without, tpmPolicy: null, hashAlg: 'sha256' }))).toEqual([])
  })
})
