/**
 * Enrolled AKs as key objects, by their enrolled text (`ak_tpm`, base64 TPM2B_PUBLIC): parsing one costs more than
 * the rest of a quote check. Shared by the session answer (proof of possession) and the attestations, so an agent's
 * first attestation finds the AK its login parsed. Keyed by the text itself, never stale: a re-enrolled AK is a new
 * key, whichever verifier of a group changed it.
 */
import type { KeyObject } from 'node:crypto'
import { akKeyObject } from '../../evidence/quote/index.ts'

const MAX_CACHED_AKS = 20_000

export class AkKeys {
  private readonly keys = new Map<string, KeyObject>()

  constructor(private readonly max = MAX_CACHED_AKS) {}

  /** The key of `akTpm`; throws (and keeps nothing) when it is not a usable AK. */
  get(akTpm: string): KeyObject {
    let key = this.keys.get(akTpm)
    if (key === undefined) {
      key = akKeyObject(new Uint8Array(Buffer.from(akTpm, 'base64')))
      // the oldest goes when full
      if (this.keys.size >= this.max) this.keys.delete(this.keys.keys().next().value as string)
      this.keys.set(akTpm, key)
    }
    return key
  }
}
