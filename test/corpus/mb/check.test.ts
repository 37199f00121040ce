import { describe, expect, it } from 'vitest'
import {
  checkMeasuredBoot,
  createReferenceState,
  type EventLog,
  parseEventLog,
  parseMbPolicy,
  replayEventLog,
} from '../../../src/evidence/mb/index.ts'
import type { Verdict } from '../../../src/evidence/verdict.ts'
import { fixture, fixtureJson } from '../fixture.ts'

const NAME = 'keylime-tests-ovmf-secureboot.bin'
const bytes = fixture(`eventlogs/${NAME}`)
const log = parseEventLog(bytes)
const policy = parseMbPolicy(createReferenceState(log))

/** What a TPM that booted exactly this log would quote: every replayed PCR in the bank. */
function quoteOf(l: EventLog, bank = 'sha256'): Map<number, Uint8Array> {
  const pcrs = replayEventLog(l).get(bank as 'sha256')
  return new Map([...(pcrs ?? new Map())].map(([i, v]) => [i, new Uint8Array(v)]))
}

const ids = (v: Verdict) => (v.ok ? [] : v.events.map((e) => e.eventId))

describe('checkMeasuredBoot', () => {
  it('passes a log that matches the quote and the policy, and hands IMA the boot aggregates', () => {
    const r = checkMeasuredBoot({
      eventLog: bytes,
      quotedPcrs: quoteOf(log),
      hashAlg: 'sha256',
      policy,
      evaluatePolicy: true,
    })
    expect(r.verdict).toEqual({ ok: true })
    expect(r.checkedPcrs).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14])
    const ref = fixtureJson<{ keylime_reference: { boot_aggregates: Record<string, string[]> } }>(
      `eventlogs/${NAME}.reference.json`,
    )
    expect(r.bootAggregates).toEqual(ref.keylime_reference.boot_aggregates)
  })

  it('reports measured_boot.invalid_pcr_N when a quoted PCR differs from the replay', () => {
    const quoted = quoteOf(log)
    quoted.set(4, new Uint8Array(32).fill(7))
    const r = checkMeasuredBoot({
      eventLog: bytes,
      quotedPcrs: quoted,
      hashAlg: 'sha256',
      policy,
      evaluatePolicy: true,
    })
    expect(ids(r.verdict)).toEqual(['measured_boot.invalid_pcr_4'])
    if (!r.verdict.ok) {
      expect(r.verdict.events[0]?.context).toEqual({
        context: 'SHA256 boot event log PCR value does not match',
        got: '07'.repeat(32),
        expected: 'd268b23ebd008bc914e21f249bcbacea6a75e6bd042c26e7c78cc2d48a48d944',
      })
    }
  })

  it('a log tampered after the quote fails both the replay and the policy', () => {
    const tampered = Buffer.from(bytes)
    const tlog = parseEventLog(tampered)
    const kernel = tlog.events.filter((e) => e.pcr === 4 && e.type === 0x80000003)[2]
    const d = kernel?.digests[0]?.digest
    if (d === undefined) throw new Error('fixture has a kernel event')
    d[0] = (d[0] as number) ^ 1
    const r = checkMeasuredBoot({
      eventLog: tampered,
      quotedPcrs: quoteOf(log),
      hashAlg: 'sha256',
      policy,
      evaluatePolicy: true,
    })
    expect(ids(r.verdict)).toEqual(['measured_boot.invalid_pcr_4', 'measured_boot.policy_example'])
  })

  it('does not judge PCRs outside the policy, and skips the policy when evaluatePolicy is false', () => {
    const quoted = quoteOf(log)
    quoted.set(11, new Uint8Array(32).fill(1)) // systemd's runtime PCR: not in the example policy
    const r = checkMeasuredBoot({
      eventLog: bytes,
      quotedPcrs: quoted,
      hashAlg: 'sha256',
      policy: parseMbPolicy({ ...createReferenceState(log), has_secureboot: false }),
      evaluatePolicy: false,
    })
    expect(r.verdict).toEqual({ ok: true })
    expect(r.checkedPcrs).not.toContain(11)
  })

  it('accept-all compares every measured-boot PCR in the quote (PCR absent from the log counts as zero)', () => {
    const quoted = quoteOf(log)
    quoted.set(11, new Uint8Array(32))
    quoted.set(12, new Uint8Array(32).fill(1))
    const r = checkMeasuredBoot({
      eventLog: bytes,
      quotedPcrs: quoted,
      hashAlg: 'sha256',
      policy: parseMbPolicy(createReferenceState(log), { engine: 'accept-all' }),
      evaluatePolicy: true,
    })
    expect(ids(r.verdict)).toEqual(['measured_boot.invalid_pcr_12'])
    expect(r.checkedPcrs).toContain(11)
  })

  it('reports PCRs the policy needs but the quote lacks', () => {
    const quoted = quoteOf(log)
    quoted.delete(14)
    const r = checkMeasuredBoot({
      eventLog: bytes,
      quotedPcrs: quoted,
      hashAlg: 'sha256',
      policy,
      evaluatePolicy: true,
    })
    expect(ids(r.verdict)).toEqual(['measured_boot.missing_pcrs'])
    if (!r.verdict.ok)
      expect(r.verdict.events[0]?.context).toEqual({ context: 'PCRs are missing in quote', data: [14] })
  })

  it('reports a quote bank the log does not have', () => {
    const r = checkMeasuredBoot({
      eventLog: bytes,
      quotedPcrs: quoteOf(log),
      hashAlg: 'sha1',
      policy,
      evaluatePolicy: false,
    })
    expect(ids(r.verdict)).toEqual(['measured_boot.parser.invalid_pcrs_hashes'])
  })

  it('reports a malformed log as a parser failure (no throw), and ignores it without a policy', () => {
    const truncated = fixture('eventlogs/keylime-mb-log-issue1153.truncated.bin')
    const r = checkMeasuredBoot({
      eventLog: truncated,
      quotedPcrs: new Map(),
      hashAlg: 'sha256',
      policy,
      evaluatePolicy: true,
    })
    expect(ids(r.verdict)).toEqual(['measured_boot.parser.tpm2_eventlog.error'])
    if (!r.verdict.ok) expect(r.verdict.events[0]?.context).toMatchObject({ offset: 11470, eventIndex: 29 })
    expect(r.bootAggregates).toBeNull()
    const none = checkMeasuredBoot({
      eventLog: truncated,
      quotedPcrs: new Map(),
      hashAlg: 'sha256',
      policy: null,
      evaluatePolicy: true,
    })
    expect(none.verdict).toEqual({ ok: true })
  })

  it('with no policy (or {}) it only computes boot aggregates', () => {
    for (const p of [null, parseMbPolicy('{}')]) {
      const r = checkMeasuredBoot({
        eventLog: bytes,
        quotedPcrs: new Map(),
        hashAlg: 'sha256',
        policy: p,
        evaluatePolicy: true,
      })
      expect(r.verdict).toEqual({ ok: true })
      expect(r.checkedPcrs).toEqual([])
      expect(r.bootAggregates?.sha256?.length).toBe(2)
    }
  })
})
