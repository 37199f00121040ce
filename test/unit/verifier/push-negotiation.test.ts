/** Push capability negotiation and the IMA starting offset / whole-list recognition (pure parts of push mode). */
import { describe, expect, it } from 'vitest'
import { imaNgEntryFor } from '../../../src/devtools/ima-writer.ts'
import { parseImaLine, replayImaEntries } from '../../../src/evidence/ima/index.ts'
import { negotiateEvidence } from '../../../src/verifier/push/capabilities.ts'
import { alignImaList, chooseStartingOffset } from '../../../src/verifier/push/ima-offset.ts'
import { asciiImaList } from '../../helpers/ima-lists.ts'

const quoteOffer = (over: Record<string, unknown> = {}) => ({
  evidence_class: 'certification',
  evidence_type: 'tpm_quote',
  capabilities: {
    component_version: '2.0',
    signature_schemes: ['rsassa'],
    hash_algorithms: ['sha1', 'sha256'],
    available_subjects: { sha1: [0, 1, 10], sha256: [0, 1, 10, 15] },
    certification_keys: [{ key_class: 'asymmetric', key_algorithm: 'rsa', server_identifier: 'ak' }],
    ...over,
  },
})
const base = {
  bootTime: '2026-12-01T10:00:00Z',
  requiredPcrs: [10, 15],
  acceptedHash: ['sha512', 'sha384', 'sha256', 'sha1'],
  acceptedSigning: ['rsassa'],
  akKind: 'rsa' as const,
  needsUefiLog: false,
  needsImaLog: false,
  imaOffset: () => 0,
  challenge: Buffer.alloc(16, 7),
}

describe('negotiateEvidence', () => {
  it('picks the first accepted bank that has every required PCR and only the evidence the policies need', () => {
    const r = negotiateEvidence({ ...base, offered: [quoteOffer()] })
    expect(r.ok).toBe(true)
    if (!r.ok) return
    expect(r.requested).toHaveLength(1)
    expect(r.requested[0]?.chosen_parameters).toMatchObject({
      hash_algorithm: 'sha256',
      signature_scheme: 'rsassa',
      selected_subjects: { sha256: [10, 15] },
      challenge: Buffer.alloc(16, 7).toString('base64'),
    })
  })
  it('names the offending field of each refusal by JSON pointer', () => {
    const cases: [Record<string, unknown>, string][] = [
      [{ component_version: '1.0' }, '/evidence_supported/0/capabilities/component_version'],
      [{ signature_schemes: ['ecdsa'] }, '/evidence_supported/0/capabilities/signature_schemes'],
      [{ available_subjects: [0, 1, 10] }, '/evidence_supported/0/capabilities/available_subjects'],
      [{ available_subjects: { sha256: [10] } }, '/evidence_supported/0/capabilities/available_subjects'],
      [{ certification_keys: [] }, '/evidence_supported/0/capabilities/certification_keys'],
    ]
    for (const [over, pointer] of cases) {
      const r = negotiateEvidence({ ...base, offered: [quoteOffer(over)] })
      expect(r.ok, pointer).toBe(false)
      if (!r.ok) expect(r.errors[0]?.source?.pointer).toBe(pointer)
    }
  })
  it('requires the logs the policies need, with boot_time for IMA', () => {
    const r = negotiateEvidence({
      ...base,
      bootTime: null,
      needsUefiLog: true,
      needsImaLog: true,
      offered: [quoteOffer()],
    })
    expect(r.ok).toBe(false)
    if (!r.ok)
      expect(r.errors.map((e) => e.source?.pointer)).toEqual([
        '/evidence_supported',
        '/evidence_supported',
        '/system_info/boot_time',
      ])
    const ok = negotiateEvidence({
      ...base,
      needsImaLog: true,
      imaOffset: (count) => (count ?? 0) - 1,
      offered: [
        quoteOffer(),
        { evidence_class: 'log', evidence_type: 'ima_log', capabilities: { entry_count: 9 } },
      ],
    })
    expect(ok.ok && ok.requested[1]?.chosen_parameters).toEqual({ starting_offset: 8, format: 'text/plain' })
  })
})

describe('IMA starting offset and whole lists', () => {
  const state = (nextEntry: number, pcr10: string) => ({
    version: 1 as const,
    nextEntry,
    pcr10: { sha256: pcr10 },
    learnedKeyrings: {},
    progress: null,
  })
  it('continues within a boot, starts over after a reboot or beyond what the agent reports', () => {
    const prev = { bootTime: '2026-12-01T10:00:00Z', state: state(7, '00') }
    expect(chooseStartingOffset(prev, '2026-12-01T10:00:00.000Z', 9)).toBe(7)
    expect(chooseStartingOffset(prev, '2026-12-02T10:00:00Z', 9)).toBe(0)
    expect(chooseStartingOffset(prev, '2026-12-01T10:00:00Z', 5)).toBe(0)
    expect(chooseStartingOffset(null, '2026-12-01T10:00:00Z', 9)).toBe(0)
  })
  it('recognises a whole list by the running hash of its verified prefix and skips that prefix', () => {
    const entries = Array.from({ length: 6 }, (_, i) => imaNgEntryFor(`/bin/t${i}`, `t${i}`))
    const prefix = replayImaEntries(
      entries.slice(0, 4).map((e) => parseImaLine(e.line)),
      'sha256',
    )
    const s = state(4, prefix.toString('hex'))
    const whole = alignImaList(asciiImaList(entries), 4, s, 'sha256')
    expect(whole.wholeList).toBe(true)
    expect(whole.listText.split('\n')).toEqual(entries.slice(4).map((e) => e.line))
    // an increment (or a list whose prefix is not the verified one) is taken as sent
    const increment = alignImaList(asciiImaList(entries.slice(4)), 4, s, 'sha256')
    expect(increment).toEqual({ listText: asciiImaList(entries.slice(4)), firstEntry: 4, wholeList: false })
    const other = alignImaList(asciiImaList([...entries].reverse()), 4, s, 'sha256')
    expect(other.wholeList).toBe(false)
  })
})
