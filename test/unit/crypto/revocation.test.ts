import { constants, generateKeyPairSync, sign, verify } from 'node:crypto'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  asctime,
  RevocationError,
  type RevocationMessage,
  signRevocation,
  verifyRevocation,
} from '../../../src/crypto/revocation.ts'

const key = generateKeyPairSync('rsa', { modulusLength: 2048 })
const other = generateKeyPairSync('rsa', { modulusLength: 2048 })
const privPem = key.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
const pubPem = key.publicKey.export({ type: 'spki', format: 'pem' }).toString()
const otherPriv = other.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()

const message: RevocationMessage = {
  type: 'revocation',
  ip: '127.0.0.1',
  agent_id: 'agent-1',
  port: 9002,
  tpm_policy: '{"mask": "0x400"}',
  meta_data: '{}',
  event_time: asctime(new Date(Date.UTC(2025, 10, 26, 15, 9, 0))),
  event_id: 'pcr_validation.invalid_pcr_15',
  severity_label: 'emergency',
}

describe('asctime', () => {
  it('matches the C layout, with a space-padded day', () => {
    expect(asctime(new Date(Date.UTC(2025, 10, 26, 15, 9, 0)))).toBe('Wed Nov 26 15:09:00 2025')
    expect(asctime(new Date(Date.UTC(2025, 0, 5, 3, 4, 7)))).toBe('Sun Jan  5 03:04:07 2025')
  })
})

describe('revocation signing', () => {
  it('signs with RSA-PSS SHA-256 max salt, checkable with raw node:crypto', () => {
    const wire = signRevocation(message, privPem)
    expect(JSON.parse(wire.msg)).toEqual(message)
    const sig = Buffer.from(wire.signature, 'base64')
    const opts = { key: pubPem, padding: constants.RSA_PKCS1_PSS_PADDING }
    // maximal salt for 2048-bit key and SHA-256 is 256 - 32 - 2 = 222 bytes
    expect(verify('sha256', Buffer.from(wire.msg), { ...opts, saltLength: 222 }, sig)).toBe(true)
    expect(verify('sha256', Buffer.from(wire.msg), { ...opts, saltLength: 32 }, sig)).toBe(false)
  })
  it('verifies ours and a signature made by the published algorithm', () => {
    expect(verifyRevocation(signRevocation(message, privPem), pubPem)).toEqual(message)
    const msg = JSON.stringify({ ...message, type: 'comm_error' })
    const signature = sign('sha256', Buffer.from(msg), {
      key: privPem,
      padding: constants.RSA_PKCS1_PSS_PADDING,
      saltLength: constants.RSA_PSS_SALTLEN_MAX_SIGN,
    }).toString('base64')
    expect(verifyRevocation(JSON.stringify({ msg, signature }), pubPem).type).toBe('comm_error')
  })
  it('rejects forged, altered, unsigned and malformed notifications with typed codes', () => {
    const code = (f: () => unknown): string => {
      try {
        f()
      } catch (e) {
        return (e as { code: string }).code
      }
      return 'no error'
    }
    const forged = signRevocation(message, otherPriv)
    expect(code(() => verifyRevocation(forged, pubPem))).toBe('ERR_REVOCATION_SIGNATURE')
    const good = signRevocation(message, privPem)
    const altered = { ...good, msg: good.msg.replace('agent-1', 'agent-2') }
    expect(code(() => verifyRevocation(altered, pubPem))).toBe('ERR_REVOCATION_SIGNATURE')
    expect(signRevocation(message, null).signature).toBe('')
    expect(code(() => verifyRevocation(signRevocation(message, null), pubPem))).toBe(
      'ERR_REVOCATION_UNSIGNED',
    )
    expect(code(() => verifyRevocation('not json', pubPem))).toBe('ERR_REVOCATION_FORMAT')
    expect(code(() => verifyRevocation({ signature: 'AA==' }, pubPem))).toBe('ERR_REVOCATION_FORMAT')
    expect(code(() => verifyRevocation({ msg: good.msg, signature: '%%%' }, pubPem))).toBe(
      'ERR_REVOCATION_FORMAT',
    )
    expect(code(() => verifyRevocation(good, 'not a key'))).toBe('ERR_REVOCATION_KEY')
  })
})

describe('verifyRevocation on arbitrary input', () => {
  it('throws only RevocationError', () => {
    const good = signRevocation(message, privPem)
    fc.assert(
      fc.property(
        fc.oneof(
          fc.jsonValue(),
          fc.string(),
          fc.record({ msg: fc.string(), signature: fc.oneof(fc.string(), fc.constant(good.signature)) }),
          fc.record({ msg: fc.constant(good.msg), signature: fc.base64String() }),
        ),
        (input) => {
          try {
            verifyRevocation(input, pubPem)
            expect.unreachable('an unsigned or wrongly signed message was accepted')
          } catch (err) {
            expect(err).toBeInstanceOf(RevocationError)
          }
        },
      ),
      { numRuns: 500 },
    )
  })
})
