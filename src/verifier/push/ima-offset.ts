/**
 * IMA in push mode (keylime-protocols.md §G, push notes): the verifier chooses where the agent's list should start,
 * and takes either that increment or the whole list. Upstream's Rust push agent re-sends the whole list each time
 * (rust-keylime issue 1077); upstream's verifier then replays it on top of the stored PCR 10 and fails. Here a list
 * whose first `offset` entries replay, from zero, to the PCR 10 value stored at that offset is recognised as the
 * whole list and those entries are skipped: they were verified before, and the running hash proves they are the
 * same entries. Anything else is taken as the increment it should be (and fails there if it is not one).
 */
import type { ImaReplayState, PcrBank } from '../../evidence/ima/index.ts'
import { parseImaLine, replayImaEntries, splitImaLines } from '../../evidence/ima/index.ts'

/** Where the next list starts: after the last passing attestation of the same boot, else 0 (full replay). */
export function chooseStartingOffset(
  previous: { bootTime: string | null; state: ImaReplayState | null } | null,
  bootTime: string | null,
  reportedEntryCount: number | null,
): number {
  if (!previous?.state || previous.bootTime === null || bootTime === null) return 0
  // a different boot (or a clock that went back) starts over: replaying from zero verifies everything
  if (Date.parse(bootTime) !== Date.parse(previous.bootTime)) return 0
  const next = previous.state.nextEntry
  if (reportedEntryCount !== null && next > reportedEntryCount) return 0
  return next
}

export interface AlignedImaList {
  listText: string
  firstEntry: number
  /** true when the agent sent the whole list and the verified prefix was skipped. */
  wholeList: boolean
}

export function alignImaList(
  text: string,
  offset: number,
  state: ImaReplayState | null,
  bank: PcrBank,
): AlignedImaList {
  const asIncrement = { listText: text, firstEntry: offset, wholeList: false }
  const stored = state?.pcr10[bank]
  if (offset === 0 || stored === undefined) return asIncrement
  const lines = splitImaLines(text)
  if (lines.length < offset) return asIncrement
  let running: Buffer
  try {
    running = replayImaEntries(
      lines.slice(0, offset).map((l, i) => parseImaLine(l, i)),
      bank,
    )
  } catch {
    return asIncrement
  }
  if (running.toString('hex') !== stored.toLowerCase()) return asIncrement
  return { listText: lines.slice(offset).join('\n'), firstEntry: offset, wholeList: true }
}
