/**
 * TCG EK policies (EK Credential Profile 2.x, B.6): PolicyA computed here equals the low-range templates' authPolicy
 * and the profile's published SHA-384 value; PolicyB = PolicyOR(PolicyA, PolicyC) equals swtpm's high-range EKs'.
 */
import { describe, expect, it } from 'vitest'
import { TpmAlg } from '../../../src/tpm/constants.ts'
import { ekPolicyA, policyOrDigest } from '../../../src/tpm/sessions.ts'
import { EK_POLICY_SHA256 } from '../../../src/tpm/templates.ts'

describe('EK policy digests', () => {
  it('PolicyA (PolicySecret of the endorsement hierarchy)', () => {
    expect(ekPolicyA(TpmAlg.Sha256)).toEqual(Buffer.from(EK_POLICY_SHA256))
    expect(ekPolicyA(TpmAlg.Sha384).toString('hex')).toBe(
      '8bbf2266537c171cb56e403c4dc1d4b64f432611dc386e6f532050c3278c930e143e8bb1133824ccb4310538' + '71c6db53',
    )
  })

  it('PolicyOR digest differs with order and members', () => {
    const a = ekPolicyA(TpmAlg.Sha384)
    const c = Buffer.alloc(48, 1)
    expect(policyOrDigest(TpmAlg.Sha384, [a, c])).not.toEqual(policyOrDigest(TpmAlg.Sha384, [c, a]))
    expect(policyOrDigest(TpmAlg.Sha384, [a, c])).toHaveLength(48)
  })
})
