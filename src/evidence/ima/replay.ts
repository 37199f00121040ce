import type { ImaEntry } from './entry.ts'
import { BANK_SIZE, digestWith, extendPcr, type PcrBank } from './hash-algs.ts'

const FF: Record<PcrBank, Buffer> = {
  sha1: Buffer.alloc(20, 0xff),
  sha256: Buffer.alloc(32, 0xff),
  sha384: Buffer.alloc(48, 0xff),
  sha512: Buffer.alloc(64, 0xff),
  sm3_256: Buffer.alloc(32, 0xff),
}

/** What an entry extends into PCR 10 of `bank`: the per-bank template digest, or all-0xFF for a violation. */
export function entryMeasurement(entry: ImaEntry, bank: PcrBank): Buffer {
  return entry.violation ? FF[bank] : digestWith(bank, entry.templateData)
}

/** Extends one entry into a running PCR 10 value. */
export function extendEntry(bank: PcrBank, running: Uint8Array, entry: ImaEntry): Buffer {
  return extendPcr(bank, running, entryMeasurement(entry, bank))
}

export function zeroPcr(bank: PcrBank): Buffer {
  return Buffer.alloc(BANK_SIZE[bank])
}

/** PCR 10 after replaying `entries` from `start` (zeros by default). Entries for other PCRs are skipped. */
export function replayImaEntries(entries: Iterable<ImaEntry>, bank: PcrBank, start?: Uint8Array): Buffer {
  let running: Buffer = Buffer.from(start ?? zeroPcr(bank))
  for (const entry of entries) if (entry.pcr === 10) running = extendEntry(bank, running, entry)
  return running
}

/** Whether the logged template hash equals `H(template data)` for the hash its length implies (sha1 for 20 bytes…). */
export function templateHashMatches(entry: ImaEntry): boolean {
  if (entry.violation) return true
  const bank = LENGTH_TO_BANK[entry.templateHash.length]
  return bank !== undefined && digestWith(bank, entry.templateData).equals(entry.templateHash)
}

const LENGTH_TO_BANK: Record<number, PcrBank> = { 20: 'sha1', 32: 'sha256', 48: 'sha384', 64: 'sha512' }
