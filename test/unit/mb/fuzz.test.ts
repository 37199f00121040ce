import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { createSecureBootKeys, syntheticEventLog } from '../../../src/devtools/synthetic-event-log.ts'
import {
  createReferenceState,
  EventLogFormatError,
  eventLogToJson,
  explainMbPolicy,
  parseEventLog,
  parseMbPolicy,
  ReferenceStateError,
} from '../../../src/evidence/mb/index.ts'

// Crypto-agile logs of a Secure Boot machine made here: on, off, and started at locality 3.
const keys = await createSecureBootKeys()
const seeds = [
  syntheticEventLog({ keys }).bytes,
  syntheticEventLog({ keys, secureBoot: false }).bytes,
  syntheticEventLog({ keys, startupLocality: 3, cmdline: 'ro console=ttyS0' }).bytes,
]
const seedLog = parseEventLog(seeds[0] as Buffer)
const policy = parseMbPolicy(createReferenceState(seedLog))

/** Everything downstream of a successful parse must cope with whatever the payloads hold. */
function exercise(bytes: Uint8Array): void {
  let log: ReturnType<typeof parseEventLog>
  try {
    log = parseEventLog(bytes)
  } catch (e) {
    expect(e).toBeInstanceOf(EventLogFormatError)
    const err = e as EventLogFormatError
    expect(err.offset).toBeGreaterThanOrEqual(0)
    expect(err.offset).toBeLessThanOrEqual(bytes.length)
    return
  }
  eventLogToJson(log)
  explainMbPolicy(policy, log)
  try {
    createReferenceState(log, { allowSecureBootOff: true })
  } catch (e) {
    expect(e).toBeInstanceOf(ReferenceStateError)
  }
}

describe('event log parser fuzzing', () => {
  it('random bytes only raise EventLogFormatError', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 512 }), (b) => exercise(b)),
      { numRuns: 400 },
    )
  })

  it('random bytes behind a valid Spec ID header only raise EventLogFormatError', () => {
    const header = (seeds[0] as Buffer).subarray(0, seedLog.events[1]?.offset ?? 0)
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 400 }), (b) => exercise(Buffer.concat([header, b]))),
      { numRuns: 400 },
    )
  })

  it('mutated and truncated logs only raise EventLogFormatError, and never hang', () => {
    const mutation = fc.record({
      seed: fc.integer({ min: 0, max: seeds.length - 1 }),
      edits: fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 8 }),
      cut: fc.option(fc.nat(), { nil: undefined }),
    })
    const started = Date.now()
    fc.assert(
      fc.property(mutation, ({ seed, edits, cut }) => {
        const src = seeds[seed] as Buffer
        const b = Buffer.from(src)
        for (const [pos, val] of edits) b[pos % b.length] = val
        exercise(cut === undefined ? b : b.subarray(0, cut % (b.length + 1)))
      }),
      { numRuns: 300 },
    )
    expect(Date.now() - started).toBeLessThan(20_000)
  })

  it('a huge declared event size is rejected without allocating', () => {
    const b = Buffer.from(seeds[0] as Buffer)
    const second = seedLog.events[1]
    if (second === undefined) throw new Error('seed has events')
    b.writeUInt32LE(0xffffffff, second.offset + 12 + 2 + 20 + 2 + 32) // eventSize of event 1 (sha1 and sha256 digests)
    expect(() => parseEventLog(b)).toThrow(/event data of 4294967295 bytes runs past the end/)
  })
})
