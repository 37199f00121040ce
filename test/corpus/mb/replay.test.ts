import { readdirSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import { EventLogFormatError } from '../../../src/evidence/mb/errors.ts'
import { parseEventLog } from '../../../src/evidence/mb/parse.ts'
import {
  bootAggregates,
  extendPlan,
  pcrValuesToJson,
  replayEventLog,
} from '../../../src/evidence/mb/replay.ts'
import { fixture, fixtureJson, fixturePath } from '../fixture.ts'

interface Reference {
  independent_parse: { format: string; event_count_including_header: number; parse_errors: string[] }
  replayed_pcrs: Record<string, Record<string, string>>
  boot_aggregates_from_replay: Record<string, { pcr0_7: string | null; pcr0_9: string | null }>
  quoted_pcrs?: { pcrs: Record<string, Record<string, string>> }
}

const LOGS = readdirSync(fixturePath('eventlogs')).filter((f) => f.endsWith('.bin'))
const ref = (name: string) => fixtureJson<Reference>(`eventlogs/${name}.reference.json`)
const good = LOGS.filter((f) => ref(f).independent_parse.parse_errors.length === 0)
const bad = LOGS.filter((f) => ref(f).independent_parse.parse_errors.length > 0)

describe('event log replay on the real corpus', () => {
  it('covers the corpus', () => {
    expect(good.length).toBeGreaterThanOrEqual(30)
    expect(bad.sort()).toEqual([
      'keylime-bogus.bin',
      'keylime-empty.bin',
      'keylime-mb-log-issue1153.truncated.bin',
      'tpm2-tools-specid-vendordata.bin',
    ])
  })

  it.each(good)('%s replays to the reference PCRs and boot aggregates', (name) => {
    const r = ref(name)
    const log = parseEventLog(fixture(`eventlogs/${name}`))
    expect(log.events.length).toBe(r.independent_parse.event_count_including_header)
    expect(log.format).toBe(r.independent_parse.format === 'sha1-legacy' ? 'sha1' : 'crypto-agile')
    const pcrs = replayEventLog(log)
    expect(pcrValuesToJson(pcrs)).toEqual(r.replayed_pcrs)
    const expectedAggs = Object.fromEntries(
      Object.entries(r.boot_aggregates_from_replay).map(([b, v]) => [
        b,
        [v.pcr0_7, v.pcr0_9].filter((x) => x),
      ]),
    )
    expect(bootAggregates(pcrs)).toEqual(expectedAggs)
  })

  const quoted = good.filter((f) => ref(f).quoted_pcrs !== undefined)
  it('has logs with PCR values read from the real TPM', () => expect(quoted.length).toBeGreaterThanOrEqual(7))
  it.each(quoted)('%s replays to the PCRs quoted by its real TPM', (name) => {
    const replayed = pcrValuesToJson(replayEventLog(parseEventLog(fixture(`eventlogs/${name}`))))
    let compared = 0
    for (const [bank, values] of Object.entries(ref(name).quoted_pcrs?.pcrs ?? {})) {
      for (const [pcr, hex] of Object.entries(values)) {
        const mine = replayed[bank]?.[pcr]
        if (mine === undefined) continue // the log does not extend it (runtime or unused PCR)
        expect(mine, `${bank} PCR ${pcr}`).toBe(hex.toLowerCase().replace(/^0x/, ''))
        compared++
      }
    }
    expect(compared).toBeGreaterThan(0)
  })

  it('applies StartupLocality 3 to PCR 0 (go-tpm-tools-glinux-alex)', () => {
    const log = parseEventLog(fixture('eventlogs/go-tpm-tools-glinux-alex.bin'))
    const plan = extendPlan(log)
    expect(plan.startupLocality).toBe(3)
    expect(plan.hcrtm).toBe(false)
  })

  it('starts PCR 0 at 00..04 for an H-CRTM log (tpm2-tss-hcrtm-hygon) and handles sm3_256', () => {
    const log = parseEventLog(fixture('eventlogs/tpm2-tss-hcrtm-hygon.bin'))
    expect(log.banks).toEqual(['sha1', 'sha256', 'sm3_256'])
    expect(extendPlan(log).hcrtm).toBe(true)
    expect(pcrValuesToJson(replayEventLog(log)).sha1?.['0']).toMatch(/^15f4e6ca.*acc5$/)
  })

  it('extend plan skips EV_NO_ACTION and the header, and replays to the same PCRs', () => {
    const log = parseEventLog(fixture('eventlogs/go-tpm-tools-sp800155.bin'))
    const plan = extendPlan(log)
    const noAction = log.events.filter((e) => e.type === 3).length
    expect(plan.steps.length).toBe(log.events.length - noAction)
    expect(plan.steps.every((s) => Object.keys(s.digests).length === 3)).toBe(true)
  })
})

describe('malformed logs', () => {
  const cases: [string, number, number, RegExp][] = [
    ['keylime-empty.bin', 0, 0, /empty event log/],
    ['keylime-bogus.bin', 28, 0, /runs past the end/],
    ['keylime-mb-log-issue1153.truncated.bin', 11470, 29, /event data of 910 bytes runs past the end/],
    ['tpm2-tools-specid-vendordata.bin', 69, 0, /vendorInfo of 4 bytes/],
  ]
  it.each(cases)('%s is rejected with offset %i and event %i', (name, offset, index, msg) => {
    let err: unknown
    try {
      parseEventLog(fixture(`eventlogs/${name}`))
    } catch (e) {
      err = e
    }
    expect(err).toBeInstanceOf(EventLogFormatError)
    const e = err as EventLogFormatError
    expect(e.code).toBe('ERR_EVENTLOG_FORMAT')
    expect(e.offset).toBe(offset)
    expect(e.eventIndex).toBe(index)
    expect(e.message).toMatch(msg)
    expect(e.message).toContain(`byte offset ${offset} (event ${index})`)
  })

  it('accepts a log that ends exactly on a record boundary and rejects one byte less', () => {
    const bytes = fixture('eventlogs/keylime-mb-log-issue1153.bin')
    expect(parseEventLog(bytes).events.length).toBe(102)
    expect(() => parseEventLog(bytes.subarray(0, bytes.length - 1))).toThrow(EventLogFormatError)
  })

  it('rejects a digest algorithm not declared in the Spec ID event', () => {
    const bytes = Buffer.from(fixture('eventlogs/tpm2-tools-event-uefiaction.bin'))
    const log = parseEventLog(bytes)
    const ev = log.events[1]
    if (!ev) throw new Error('fixture has two events')
    bytes.writeUInt16LE(0x0099, ev.offset + 12)
    expect(() => parseEventLog(bytes)).toThrow(/digest algorithm 0x99 is not declared/)
  })
})
