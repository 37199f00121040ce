import { defineCommand } from '../command.ts'
import { Limits, TpmCap, TpmCc } from '../constants.ts'
import type { TpmReader } from '../marshal/reader.ts'
import { type TpmlPcrSelection, TpmlPcrSelection as TpmlPcrSelectionCodec } from '../types/pcr.ts'

/** TPMU_CAPABILITIES for the capabilities we query (Part 2, 10.10.1). */
export type TpmsCapabilityData =
  | { capability: typeof TpmCap.Algs; algorithms: { alg: number; attributes: number }[] }
  | { capability: typeof TpmCap.Handles; handles: number[] }
  | { capability: typeof TpmCap.Commands; commands: number[] }
  | { capability: typeof TpmCap.Pcrs; pcrBanks: TpmlPcrSelection }
  | { capability: typeof TpmCap.TpmProperties; properties: { property: number; value: number }[] }
  | { capability: typeof TpmCap.EccCurves; curves: number[] }

function count(r: TpmReader): number {
  const n = r.u32('count')
  if (n > Limits.capabilityListMax) r.fail(`count ${n} exceeds ${Limits.capabilityListMax}`, r.offset - 4)
  return n
}

function list<T>(r: TpmReader, item: () => T): T[] {
  const n = count(r)
  const out: T[] = []
  for (let i = 0; i < n; i++) out.push(item())
  return out
}

export function decodeCapabilityData(r: TpmReader): TpmsCapabilityData {
  const capability = r.u32('capability')
  switch (capability) {
    case TpmCap.Algs:
      return {
        capability,
        algorithms: list(r, () => ({ alg: r.u16('alg'), attributes: r.u32('algProperties') })),
      }
    case TpmCap.Handles:
      return { capability, handles: list(r, () => r.u32('handle')) }
    case TpmCap.Commands:
      return { capability, commands: list(r, () => r.u32('commandAttributes')) }
    case TpmCap.Pcrs:
      return { capability, pcrBanks: TpmlPcrSelectionCodec.decode(r) }
    case TpmCap.TpmProperties:
      return {
        capability,
        properties: list(r, () => ({ property: r.u32('property'), value: r.u32('value') })),
      }
    case TpmCap.EccCurves:
      return { capability, curves: list(r, () => r.u16('curve')) }
    default:
      return r.fail(`unsupported capability 0x${capability.toString(16)}`, r.offset - 4)
  }
}

export interface GetCapabilityResponse {
  moreData: boolean
  capabilityData: TpmsCapabilityData
}

/** TPM2_GetCapability (Part 3, 30.2). */
export const GetCapability = defineCommand<
  { capability: number; property: number; propertyCount: number },
  GetCapabilityResponse
>({
  name: 'TPM2_GetCapability',
  code: TpmCc.GetCapability,
  spec: 'Part 3, 30.2',
  encodeParams: (w, p) => w.u32(p.capability).u32(p.property).u32(p.propertyCount),
  decodeResponse: (r) => {
    const more = r.u8('moreData')
    if (more > 1) r.fail(`moreData must be 0 or 1, got ${more}`, r.offset - 1)
    return { moreData: more === 1, capabilityData: r.scope('capabilityData', () => decodeCapabilityData(r)) }
  },
})
