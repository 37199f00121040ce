import { defineCommand } from '../command.ts'
import { TpmCc } from '../constants.ts'
import { encodeTpmlDigestValues, TpmlDigest, type TpmlDigestValues, TpmlPcrSelection } from '../types/pcr.ts'

export interface PcrReadResponse {
  pcrUpdateCounter: number
  pcrSelectionOut: TpmlPcrSelection
  pcrValues: TpmlDigest
}

/** TPM2_PCR_Read (Part 3, 22.4): at most 8 values per call; the TPM says which it returned. */
export const PcrRead = defineCommand<{ pcrSelectionIn: TpmlPcrSelection }, PcrReadResponse>({
  name: 'TPM2_PCR_Read',
  code: TpmCc.PcrRead,
  spec: 'Part 3, 22.4',
  encodeParams: (w, p) => TpmlPcrSelection.encode(w, p.pcrSelectionIn),
  decodeResponse: (r) => ({
    pcrUpdateCounter: r.u32('pcrUpdateCounter'),
    pcrSelectionOut: r.scope('pcrSelectionOut', () => TpmlPcrSelection.decode(r)),
    pcrValues: r.scope('pcrValues', () => TpmlDigest.decode(r)).map((d) => d.slice()),
  }),
})

/** TPM2_PCR_Extend (Part 3, 22.2). */
export const PcrExtend = defineCommand<{ pcrHandle: number; digests: TpmlDigestValues }, void>({
  name: 'TPM2_PCR_Extend',
  code: TpmCc.PcrExtend,
  spec: 'Part 3, 22.2',
  handles: ['pcrHandle'],
  authHandles: 1,
  encodeParams: (w, p) => encodeTpmlDigestValues(w, p.digests),
})

/** TPM2_PCR_Reset (Part 3, 22.8): only PCRs resettable in the current locality (16, 23 at locality 0). */
export const PcrReset = defineCommand<{ pcrHandle: number }, void>({
  name: 'TPM2_PCR_Reset',
  code: TpmCc.PcrReset,
  spec: 'Part 3, 22.8',
  handles: ['pcrHandle'],
  authHandles: 1,
})
