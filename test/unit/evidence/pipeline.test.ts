/**
 * The evidence pipeline: every quote failure keeps upstream's event id with its specific reason in the context, the
 * IMA increment runs only on a trusted quote, and the sliced run gives the one-shot result.
 */
import { createHash, generateKeyPairSync } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { SoftQuoter } from '../../../bench/fleet-quoter.ts'
import { formatImaNgEntry } from '../../../src/evidence/ima/entry.ts'
import { EvidenceEvaluation, type EvidenceInput, evaluateEvidence } from '../../../src/evidence/pipeline.ts'
import { akKeyObject, parseTpmPolicy, type TpmClockInfo } from '../../../src/evidence/quote/index.ts'
import { failure } from '../../../src/evidence/verdict.ts'

const pubkeyPem = generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({
  type: 'spki',
  format: 'pem',
}) as string

function agent() {
  const q = new SoftQuoter({ keyType: 'ecc' })
  q.bindPubkey(pubkeyPem)
  const lines: string[] = []
  const measure = (path: string) => {
    const e = formatImaNgEntry(path, createHash('sha256').update(path).digest(), 'sha256')
    lines.push(e.line)
    q.extendDigest(10, e.templateDigests.sha256)
  }
  const input = (nonce: string, quote: string, over: Partial<EvidenceInput> = {}): EvidenceInput => ({
    akPublic: akKeyObject(new Uint8Array(Buffer.from(q.akTpm, 'base64'))),
    quote,
    nonce,
    hashAlg: 'sha256',
    encAlg: 'ecc',
    signAlg: 'ecdsa',
    accepted: { hash: ['sha256'], encryption: ['ecc'], signing: ['ecdsa'] },
    tpmPolicy: parseTpmPolicy('{}'),
    boundPubkeyPem: pubkeyPem,
    previousClock: null,
    requiredPcrs: [10, 16],
    measuredBoot: null,
    ima: {
      listText: lines.length === 0 ? '' : `${lines.join('\n')}\n`,
      firstEntry: 0,
      state: null,
      policy: null,
      ignoreTomtouErrors: true,
      missingListEvent: failure('pcr_validation.unused_pcr_10', 'no list', true),
    },
    ...over,
  })
  return { q, measure, input }
}

describe('evidence pipeline: quote failure reasons (upstream event id kept)', () => {
  const { q, measure, input } = agent()
  measure('/usr/bin/a')
  const good = evaluateEvidence(input('nonce-1', q.quote('nonce-1', [10, 16])))
  const other = new SoftQuoter({ keyType: 'ecc' })
  const tampered = (() => {
    const [att, sig, blob] = q.quote('nonce-3', [10, 16]).slice(1).split(':') as [string, string, string]
    const bytes = Buffer.from(blob, 'base64')
    const at = 4 + 16 * 8 + 4 + 4 + 2
    bytes[at] = (bytes[at] as number) ^ 1
    return `r${att}:${sig}:${bytes.toString('base64')}`
  })()
  const later: TpmClockInfo = { clock: 10_000_000, resetCount: 0, restartCount: 0, safe: 1 }
  const cases: [string, EvidenceInput][] = [
    ['nonce', input('nonce-2', q.quote('replayed', [10, 16]))],
    ['signature', input('nonce-2', other.quote('nonce-2', [10, 16]))],
    ['pcr_digest', input('nonce-3', tampered)],
    ['clock', input('nonce-4', q.quote('nonce-4', [10, 16]), { previousClock: later })],
  ]

  it('passes the good quote and keeps the IMA state', () => {
    expect(good.verdict).toEqual({ ok: true })
    expect(good.imaState?.nextEntry).toBe(1)
    expect(good.clock).not.toBeNull()
  })

  it.each(cases)(
    '%s: qoute_validation.quote_validation with the reason in its context',
    (reason, evidence) => {
      const out = evaluateEvidence({
        ...evidence,
        ima: evidence.ima && { ...evidence.ima, state: good.imaState },
      })
      expect(out.verdict.ok).toBe(false)
      if (out.verdict.ok) return
      expect(out.verdict.events).toHaveLength(1)
      expect(out.verdict.events[0]).toMatchObject({
        eventId: 'qoute_validation.quote_validation',
        recoverable: false,
        context: { reason },
      })
      // IMA never runs on an untrusted quote: the state stays where the last good attestation left it
      expect(out.imaState).toBe(good.imaState)
      expect(out.clock).toBeNull()
    },
  )
})

describe('evidence pipeline: IMA in slices', () => {
  it('gives the one-shot result whatever the slice size, and fails closed on a list the quote does not match', () => {
    const { q, measure, input } = agent()
    for (let i = 0; i < 257; i++) measure(`/usr/lib/f${i}`)
    const evidence = input('n', q.quote('n', [10, 16]))
    const oneShot = evaluateEvidence(evidence)
    expect(oneShot.verdict).toEqual({ ok: true })
    for (const slice of [1, 10, 100]) {
      const e = new EvidenceEvaluation(evidence)
      let turns = 0
      while (!e.step(slice)) turns++
      expect(turns).toBeGreaterThanOrEqual(Math.floor(257 / slice) - 1)
      expect(e.result()).toEqual(oneShot)
    }
    const stale = input('m', q.quote('m', [10, 16]))
    measure('/tmp/not-quoted')
    const longer = { ...stale, ima: stale.ima && { ...stale.ima, listText: `${evidence.ima?.listText}x\n` } }
    expect(evaluateEvidence(longer).verdict.ok).toBe(false)
  })

  it('names a missing list and a runtime check without PCR 10 in the quote', () => {
    const { q, input } = agent()
    const base = input('n', q.quote('n', [10, 16]))
    const noList = evaluateEvidence({ ...base, ima: base.ima && { ...base.ima, listText: undefined } })
    expect(noList.verdict.ok ? [] : noList.verdict.events.map((e) => e.eventId)).toEqual([
      'pcr_validation.unused_pcr_10',
    ])
    const noPcr10 = evaluateEvidence({ ...input('o', q.quote('o', [16])), requiredPcrs: [16] })
    expect(noPcr10.verdict.ok ? [] : noPcr10.verdict.events.map((e) => e.eventId)).toEqual([
      'pcr_validation.missing_pcrs',
    ])
  })
})
