/**
 * Replay of a parsed event log into PCR values (PFP §10.2 / TPM 2.0 Part 1 §17): every measured record extends
 * `PCR = H(PCR ‖ digest)` per bank it carries; EV_NO_ACTION is never extended; StartupLocality (EV_NO_ACTION in
 * PCR 0 before any PCR-0 measurement) sets the last byte of PCR 0's initial value; an EV_EFI_HCRTM_EVENT as the
 * first PCR-0 measurement starts PCR 0 at `00…04` (the H-CRTM sequence of the TPM).
 */
import { createHash, hash } from 'node:crypto'
import { type BankName, DIGEST_SIZE, EventType, isBankName, NODE_HASH } from './constants.ts'
import { toHex } from './guid.ts'
import type { EventLog, TcgEvent } from './parse.ts'

/** Replayed PCR values: bank → PCR index → value. Only PCRs the log extends appear. */
export type PcrValues = Map<BankName, Map<number, Buffer>>

const STARTUP_LOCALITY = Buffer.from('StartupLocality\0', 'latin1')

/** Locality of a StartupLocality EV_NO_ACTION record, or null when the record is something else. */
export function startupLocalityOf(ev: TcgEvent): number | null {
  if (ev.type !== EventType.NoAction || ev.pcr !== 0 || ev.data.length < 17) return null
  for (let i = 0; i < 16; i++) if (ev.data[i] !== STARTUP_LOCALITY[i]) return null
  return ev.data[16] as number
}

function isSpecIdHeader(log: EventLog, ev: TcgEvent): boolean {
  return log.format === 'crypto-agile' && ev.index === 0
}

/**
 * One record's measurement per bank: the digests to extend, in order. EV_NO_ACTION and the Spec ID header yield
 * nothing. The demo and tests use this to extend a real log into a (software) TPM so its quote matches the log.
 */
export interface ExtendStep {
  eventIndex: number
  pcr: number
  digests: Partial<Record<BankName, Uint8Array>>
}

export interface ExtendPlan {
  /** Locality the TPM must start in for PCR 0 to match (0 or 3 in practice); null = default. */
  startupLocality: number | null
  /** True when PCR 0 starts with an H-CRTM sequence (initial value 00…04). */
  hcrtm: boolean
  steps: ExtendStep[]
}

export function extendPlan(log: EventLog): ExtendPlan {
  let startupLocality: number | null = null
  let hcrtm = false
  let pcr0Extended = false
  const steps: ExtendStep[] = []
  for (const ev of log.events) {
    if (isSpecIdHeader(log, ev)) continue
    if (ev.type === EventType.NoAction) {
      const loc = startupLocalityOf(ev)
      if (loc !== null && !pcr0Extended) startupLocality = loc
      continue
    }
    if (ev.pcr === 0) {
      if (!pcr0Extended && ev.type === EventType.EfiHcrtmEvent) hcrtm = true
      pcr0Extended = true
    }
    const digests: Partial<Record<BankName, Uint8Array>> = {}
    for (const d of ev.digests) if (isBankName(d.alg)) digests[d.alg] = d.digest
    steps.push({ eventIndex: ev.index, pcr: ev.pcr, digests })
  }
  return { startupLocality, hcrtm, steps }
}

/** Replays every bank of the log. */
export function replayEventLog(log: EventLog): PcrValues {
  const out: PcrValues = new Map()
  const hashes = new Map<BankName, string>()
  for (const bank of log.banks) {
    out.set(bank, new Map())
    hashes.set(bank, NODE_HASH[bank])
  }
  let pcr0Init: 'zero' | 'hcrtm' | number = 'zero'
  let pcr0Extended = false
  for (const ev of log.events) {
    if (isSpecIdHeader(log, ev)) continue
    if (ev.type === EventType.NoAction) {
      const loc = startupLocalityOf(ev)
      if (loc !== null && !pcr0Extended) pcr0Init = loc
      continue
    }
    if (ev.pcr === 0 && !pcr0Extended) {
      if (ev.type === EventType.EfiHcrtmEvent) pcr0Init = 'hcrtm'
      pcr0Extended = true
    }
    for (const d of ev.digests) {
      const bankPcrs = out.get(d.alg as BankName)
      if (bankPcrs === undefined) continue
      const bank = d.alg as BankName
      let cur = bankPcrs.get(ev.pcr)
      if (cur === undefined) {
        cur = Buffer.alloc(DIGEST_SIZE[bank])
        if (ev.pcr === 0) {
          if (pcr0Init === 'hcrtm') cur[cur.length - 1] = 4
          else if (typeof pcr0Init === 'number') cur[cur.length - 1] = pcr0Init
        } else if (ev.pcr >= 17 && ev.pcr <= 22) cur.fill(0xff)
      }
      // One-shot hash() with a string result is ~3x faster than createHash()…digest() for inputs this small.
      const extended = hash(hashes.get(bank) as string, Buffer.concat([cur, d.digest]), 'binary')
      bankPcrs.set(ev.pcr, Buffer.from(extended, 'latin1'))
    }
  }
  return out
}

/** Replayed values as lowercase hex: `{bank: {"<pcr>": hex}}`, PCRs in numeric order. */
export function pcrValuesToJson(pcrs: PcrValues): Record<string, Record<string, string>> {
  const out: Record<string, Record<string, string>> = {}
  for (const [bank, values] of pcrs) {
    const b: Record<string, string> = {}
    for (const idx of [...values.keys()].sort((x, y) => x - y))
      b[String(idx)] = toHex(values.get(idx) as Buffer)
    out[bank] = b
  }
  return out
}

/**
 * Boot aggregates for the IMA `boot_aggregate` entry, per bank: `[H(PCR0‖…‖PCR7), H(PCR0‖…‖PCR9)]` (lowercase
 * hex), each only when the log extends all the PCRs it needs (as upstream Keylime does). The kernel uses the 0–7
 * form for sha1 and the 0–9 form for other banks.
 */
export function bootAggregates(logOrPcrs: EventLog | PcrValues): Record<string, string[]> {
  const pcrs = logOrPcrs instanceof Map ? logOrPcrs : replayEventLog(logOrPcrs)
  const out: Record<string, string[]> = {}
  for (const [bank, values] of pcrs) {
    const list: string[] = []
    for (const last of [7, 9]) {
      const h = createHash(NODE_HASH[bank])
      let complete = true
      for (let i = 0; i <= last; i++) {
        const v = values.get(i)
        if (v === undefined) {
          complete = false
          break
        }
        h.update(v)
      }
      if (complete) list.push(h.digest('hex'))
    }
    out[bank] = list
  }
  return out
}
