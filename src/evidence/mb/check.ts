/**
 * The measured-boot step of an attestation (keylime-protocols A.2 step 7): parse the agent's event log, replay
 * it in the quote's bank, compare with the quoted PCRs the policy cares about, then evaluate the policy.
 * Policy failures are values; nothing here throws for bad evidence.
 */
import { type FailureEvent, failure, type Verdict } from '../verdict.ts'
import { type BankName, isBankName } from './constants.ts'
import { EventLogFormatError } from './errors.ts'
import { toHex } from './guid.ts'
import { type EventLog, parseEventLog } from './parse.ts'
import { evaluateMbPolicy } from './policy.ts'
import { type MbPolicy, relevantPcrs } from './refstate.ts'
import { bootAggregates, replayEventLog } from './replay.ts'

/** PCRs Keylime asks the agent for when a measured-boot policy is set (PCR 10 belongs to IMA). */
export const MEASUREDBOOT_PCRS: readonly number[] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15]

export interface MeasuredBootInput {
  /** The binary log as the agent sent it (already base64-decoded). */
  eventLog: Uint8Array
  /** PCR index → value in the quote's bank. */
  quotedPcrs: ReadonlyMap<number, Uint8Array>
  /** Bank of the quote (`hash_alg`). */
  hashAlg: string
  /** The agent's policy; null or an empty refstate means no measured-boot checking. */
  policy: MbPolicy | null
  /** False skips the policy (not the replay check), as `measured_boot_evaluate = once` does after a pass. */
  evaluatePolicy: boolean
}

export interface MeasuredBootResult {
  verdict: Verdict
  /** Boot aggregates per bank for the IMA `boot_aggregate` entry; null when the log did not parse. */
  bootAggregates: Record<string, string[]> | null
  /** Quoted PCRs this check compared (the verifier compares the rest with tpm_policy only). */
  checkedPcrs: number[]
  /** The parsed log, for callers that show it; null when it did not parse. */
  log: EventLog | null
}

const stripZeros = (hex: string) => hex.replace(/^0+/, '')

export function checkMeasuredBoot(input: MeasuredBootInput): MeasuredBootResult {
  const active = input.policy !== null && input.policy.refstate !== null
  let log: EventLog
  try {
    log = parseEventLog(input.eventLog)
  } catch (e) {
    if (!(e instanceof EventLogFormatError)) throw e
    const events: FailureEvent[] = active
      ? [
          failure('measured_boot.parser.tpm2_eventlog.error', {
            context: 'event log could not be parsed',
            offset: e.offset,
            eventIndex: e.eventIndex,
            data: e.message,
          }),
        ]
      : []
    return {
      verdict: events.length ? { ok: false, events } : { ok: true },
      bootAggregates: null,
      checkedPcrs: [],
      log: null,
    }
  }
  const replayed = replayEventLog(log)
  const aggregates = bootAggregates(replayed)
  const policy = input.policy
  if (policy === null || policy.refstate === null) {
    return { verdict: { ok: true }, bootAggregates: aggregates, checkedPcrs: [], log }
  }

  const events: FailureEvent[] = []
  const bank = isBankName(input.hashAlg) ? replayed.get(input.hashAlg as BankName) : undefined
  const relevant = relevantPcrs(policy)
  const checkedPcrs: number[] = []
  if (bank === undefined) {
    events.push(
      failure('measured_boot.parser.invalid_pcrs_hashes', {
        context: `the event log has no ${input.hashAlg} bank (it has ${log.banks.join(', ')})`,
        data: log.banks,
      }),
    )
  } else {
    for (const pcr of MEASUREDBOOT_PCRS) {
      if (relevant.length > 0 && !relevant.includes(pcr)) continue
      const quoted = input.quotedPcrs.get(pcr)
      if (quoted === undefined) continue
      checkedPcrs.push(pcr)
      const fromLog = bank.get(pcr)
      const got = toHex(quoted)
      const expected = fromLog === undefined ? '0' : toHex(fromLog)
      if (stripZeros(got) !== stripZeros(expected)) {
        events.push(
          failure(`measured_boot.invalid_pcr_${pcr}`, {
            context: 'SHA256 boot event log PCR value does not match',
            got,
            expected,
          }),
        )
      }
    }
  }
  if (input.evaluatePolicy) {
    const missing = relevant.filter((p) => !input.quotedPcrs.has(p))
    if (missing.length > 0) {
      events.push(
        failure('measured_boot.missing_pcrs', { context: 'PCRs are missing in quote', data: missing }),
      )
    } else {
      const v = evaluateMbPolicy(policy, log)
      if (!v.ok) events.push(...v.events)
    }
  }
  return {
    verdict: events.length === 0 ? { ok: true } : { ok: false, events },
    bootAggregates: aggregates,
    checkedPcrs,
    log,
  }
}
