import { generateKeyPairSync } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { SoftQuoter } from '../../../bench/fleet-quoter.ts'
import { type AttestationInput, evaluateAttestation } from '../../../src/evidence/attestation.ts'
import { akKeyObject, parseTpmPolicy } from '../../../src/evidence/quote/index.ts'

const accepted = { hash: ['sha256', 'sha1'], encryption: ['rsa', 'ecc'], signing: ['rsassa', 'ecdsa'] }
const pubkeyPem = generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({
  type: 'spki',
  format: 'pem',
}) as string

function setup(keyType: 'rsa' | 'ecc' = 'rsa') {
  const q = new SoftQuoter({ keyType })
  q.extend(15, Buffer.from('boot'))
  q.bindPubkey(pubkeyPem)
  const pcr15 = (q.pcrs.get(15) as Buffer).toString('hex')
  const policy = parseTpmPolicy(JSON.stringify({ '15': [pcr15], mask: '0x18000' }))
  const base = (nonce: string, quote: string): AttestationInput => ({
    akPublic: akKeyObject(new Uint8Array(Buffer.from(q.akTpm, 'base64'))),
    quote,
    nonce,
    hashAlg: 'sha256',
    encAlg: 'rsa',
    signAlg: keyType === 'rsa' ? 'rsassa' : 'ecdsa',
    accepted,
    tpmPolicy: policy,
    boundPubkeyPem: pubkeyPem,
    previousClock: null,
  })
  return { q, base }
}

describe('evaluateAttestation', () => {
  it.each(['rsa', 'ecc'] as const)('passes a good %s quote and returns the clock to store', (kt) => {
    const { q, base } = setup(kt)
    const out = evaluateAttestation(base('abcdefghij0123456789', q.quote('abcdefghij0123456789', [15, 16])))
    expect(out.verdict).toEqual({ ok: true })
    expect(out.clock?.clock).toBe(q.clock)
    expect(out.pcrs.size).toBe(2)
  })

  it('fails a replayed quote (other nonce) irrecoverably', () => {
    const { q, base } = setup()
    const out = evaluateAttestation(base('NEWNONCE000000000000', q.quote('OLDNONCE000000000000', [15, 16])))
    expect(out.verdict.ok).toBe(false)
    if (!out.verdict.ok) {
      expect(out.verdict.events[0]?.eventId).toBe('qoute_validation.quote_validation')
      expect(out.verdict.events[0]?.recoverable).toBe(false)
      expect(out.verdict.events[0]?.context.message).toMatch(/nonce/)
    }
  })

  it('fails a quote signed by a different AK', () => {
    const { base } = setup()
    const other = new SoftQuoter()
    const out = evaluateAttestation(base('n1', other.quote('n1', [15, 16])))
    expect(out.verdict.ok).toBe(false)
    if (!out.verdict.ok) expect(out.verdict.events[0]?.context.message).toMatch(/does not verify/)
  })

  it('fails a tampered PCR blob', () => {
    const { q, base } = setup()
    const quote = q.quote('n2', [15, 16])
    const [att, sig, blob] = quote.slice(1).split(':') as [string, string, string]
    const bytes = Buffer.from(blob, 'base64')
    const at = 4 + 16 * 8 + 4 + 4 + 2
    bytes[at] = (bytes[at] as number) ^ 1
    const out = evaluateAttestation(base('n2', `r${att}:${sig}:${bytes.toString('base64')}`))
    expect(out.verdict.ok).toBe(false)
    if (!out.verdict.ok)
      expect(out.verdict.events[0]?.context.message).toMatch(/do not match the quoted PCR digest/)
  })

  it('reports a policy PCR that changed and a missing one', () => {
    const { q, base } = setup()
    q.extend(15, Buffer.from('tamper'))
    const input = base('n3', q.quote('n3', [15, 16]))
    const out = evaluateAttestation({
      ...input,
      tpmPolicy: parseTpmPolicy(JSON.stringify({ '15': ['00'], '7': ['00'], mask: '0x18080' })),
    })
    expect(out.verdict.ok).toBe(false)
    if (!out.verdict.ok)
      expect(out.verdict.events.map((e) => e.eventId)).toEqual([
        'pcr_validation.invalid_pcr_15',
        'pcr_validation.missing_pcrs',
      ])
  })

  it('fails when PCR 16 does not bind the pubkey', () => {
    const { q, base } = setup()
    const other = generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({
      type: 'spki',
      format: 'pem',
    })
    const out = evaluateAttestation({
      ...base('n4', q.quote('n4', [15, 16])),
      boundPubkeyPem: other as string,
    })
    expect(out.verdict.ok).toBe(false)
    if (!out.verdict.ok) expect(out.verdict.events[0]?.eventId).toBe('pcr_validation.invalid_pcr_16')
  })

  it('rejects an unaccepted hash algorithm before looking at the quote', () => {
    const { q, base } = setup()
    const out = evaluateAttestation({ ...base('n5', q.quote('n5', [15])), hashAlg: 'md5' })
    expect(out.verdict.ok).toBe(false)
    if (!out.verdict.ok) expect(out.verdict.events[0]?.eventId).toBe('qoute_validation.hash_algorithm')
  })

  it('fails a clock that went backwards', () => {
    const { q, base } = setup()
    const first = evaluateAttestation(base('n6', q.quote('n6', [15, 16])))
    q.clock -= 1000
    const out = evaluateAttestation({ ...base('n7', q.quote('n7', [15, 16])), previousClock: first.clock })
    expect(out.verdict.ok).toBe(false)
    if (!out.verdict.ok) expect(out.verdict.events[0]?.context.message).toMatch(/clock/)
  })
})

describe('evaluateAttestation on malformed input', () => {
  it('turns garbage quotes into an irrecoverable quote failure, never a crash', () => {
    const { base } = setup()
    for (const quote of ['', 'x', 'rAAAA', 'r::', 'rAAAA:BBBB:CCCC']) {
      const out = evaluateAttestation(base('n', quote))
      expect(out.verdict.ok).toBe(false)
      if (!out.verdict.ok) expect(out.verdict.events[0]?.recoverable).toBe(false)
    }
  })
})
