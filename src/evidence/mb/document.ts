import type { EventLog } from './parse.ts'
import { bigintReplacer, eventDetail } from './payload.ts'
import { bootAggregates, pcrValuesToJson, replayEventLog } from './replay.ts'

/**
 * The `keylime eventlog --json` document: format, event count, replayed PCRs per bank (lowercase hex, every PCR
 * the log extends), boot aggregates and every event decoded. Plain JSON (bigints already converted).
 */
export function eventLogToJson(log: EventLog): Record<string, unknown> {
  const pcrs = replayEventLog(log)
  const doc = {
    format: log.format,
    events: log.events.length,
    pcrs: pcrValuesToJson(pcrs),
    boot_aggregates: bootAggregates(pcrs),
    events_detail: log.events.map((ev) => eventDetail(log, ev)),
  }
  return JSON.parse(JSON.stringify(doc, bigintReplacer)) as Record<string, unknown>
}
