/**
 * The evidence runner on the event loop (no pool): the quote's signature is verified on libuv's thread pool first,
 * and the verdicts are exactly the pipeline's own, good and bad alike.
 */
import { generateKeyPairSync } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { SoftQuoter } from '../../../bench/fleet-quoter.ts'
import { type EvidenceInput, evaluateEvidence } from '../../../src/evidence/pipeline.ts'
import {
  akKeyObject,
  formatQuoteString,
  parseQuoteString,
  parseTpmPolicy,
} from '../../../src/evidence/quote/index.ts'
import { EvidenceRunner } from '../../../src/verifier/evidence-runner.ts'

const pubkeyPem = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({
  type: 'spki',
  format: 'pem',
}) as string

describe.each(['ecc', 'rsa'] as const)('evidence runner on the event loop, %s AK', (keyType) => {
  const q = new SoftQuoter({ keyType })
  q.bindPubkey(pubkeyPem)
  const other = new SoftQuoter({ keyType })
  other.bindPubkey(pubkeyPem)
  const ak = akKeyObject(new Uint8Array(Buffer.from(q.akTpm, 'base64')))
  const pcr15 = (q.pcrs.get(15) ?? Buffer.alloc(32)).toString('hex')

  function input(over: Partial<EvidenceInput> = {}): EvidenceInput {
    return {
      akPublic: ak,
      quote: q.quote('nonce-1', [15, 16]),
      nonce: 'nonce-1',
      hashAlg: 'sha256',
      encAlg: 'ecc',
      signAlg: keyType === 'ecc' ? 'ecdsa' : 'rsassa',
      accepted: { hash: ['sha256'], encryption: ['ecc'], signing: ['ecdsa', 'rsassa'] },
      tpmPolicy: parseTpmPolicy(JSON.stringify({ '15': [pcr15], mask: '0x8000' })),
      boundPubkeyPem: pubkeyPem,
      previousClock: null,
      requiredPcrs: [15, 16],
      measuredBoot: null,
      ima: null,
      ...over,
    }
  }

  function tamperedPcrBlob(): string {
    const parts = parseQuoteString(q.quote('nonce-1', [15, 16]))
    const blob = Uint8Array.from(parts.pcrBlob)
    // the first PCR value (after the selections, the list count and the value's size): the blob still parses
    blob[142] = (blob[142] as number) ^ 1
    return formatQuoteString({ ...parts, pcrBlob: blob })
  }

  const cases: [string, () => EvidenceInput, string | null][] = [
    ['a good quote passes', () => input(), null],
    [
      'a good quote as decoded parts (push) passes',
      () => input({ quote: parseQuoteString(q.quote('nonce-1', [15, 16])) }),
      null,
    ],
    ['a quote signed by another AK', () => input({ quote: other.quote('nonce-1', [15, 16]) }), 'signature'],
    ['a replayed nonce', () => input({ quote: q.quote('nonce-0', [15, 16]) }), 'nonce'],
    ['PCR values not matching the signed digest', () => input({ quote: tamperedPcrBlob() }), 'pcr_digest'],
    ['a quote that does not parse', () => input({ quote: 'r:::' }), 'malformed'],
    ['a hash algorithm the agent was not enrolled with', () => input({ hashAlg: 'sha1' }), null],
    [
      'a PCR value outside the policy',
      () => input({ tpmPolicy: parseTpmPolicy(JSON.stringify({ '15': ['ff'.repeat(32)], mask: '0x8000' })) }),
      null,
    ],
  ]

  const runner = new EvidenceRunner()
  it.each(cases)('%s: the same verdict as the pipeline alone', async (name, make, reason) => {
    const evidence = make()
    const expected = evaluateEvidence(evidence)
    const got = await runner.run(evidence)
    expect(got.verdict).toEqual(expected.verdict)
    expect(got.clock).toEqual(expected.clock)
    expect([...got.pcrs]).toEqual([...expected.pcrs])
    expect(got.verdict.ok).toBe(name.endsWith('passes'))
    if (reason !== null && !got.verdict.ok) expect(got.verdict.events[0]?.context.reason).toBe(reason)
  })
})
