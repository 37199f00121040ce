import { defineCommand } from '../command.ts'
import { TpmCc } from '../constants.ts'
import { TpmsNvPublic } from '../types/misc.ts'

/** TPM2_NV_ReadPublic (Part 3, 31.6). */
export const NvReadPublic = defineCommand<
  { nvIndex: number },
  { nvPublic: TpmsNvPublic; nvName: Uint8Array }
>({
  name: 'TPM2_NV_ReadPublic',
  code: TpmCc.NvReadPublic,
  spec: 'Part 3, 31.6',
  handles: ['nvIndex'],
  decodeResponse: (r) => ({
    nvPublic: r.sized('nvPublic', (i) => TpmsNvPublic.decode(i)).value,
    nvName: r.tpm2b('nvName').slice(),
  }),
})

/** TPM2_NV_Read (Part 3, 31.13): `size` must not exceed TPM_PT_NV_BUFFER_MAX. */
export const NvRead = defineCommand<
  { authHandle: number; nvIndex: number; size: number; offset: number },
  { data: Uint8Array }
>({
  name: 'TPM2_NV_Read',
  code: TpmCc.NvRead,
  spec: 'Part 3, 31.13',
  handles: ['authHandle', 'nvIndex'],
  authHandles: 1,
  encodeParams: (w, p) => w.u16(p.size).u16(p.offset),
  decodeResponse: (r) => ({ data: r.tpm2b('data').slice() }),
})

/** TPM2_NV_DefineSpace (Part 3, 31.3): `authHandle` is TPM_RH_OWNER or TPM_RH_PLATFORM. */
export const NvDefineSpace = defineCommand<
  { authHandle: number; auth: Uint8Array; publicInfo: TpmsNvPublic },
  void
>({
  name: 'TPM2_NV_DefineSpace',
  code: TpmCc.NvDefineSpace,
  spec: 'Part 3, 31.3',
  handles: ['authHandle'],
  authHandles: 1,
  encodeParams: (w, p) => {
    w.tpm2b(p.auth)
    w.sized((i) => TpmsNvPublic.encode(i, p.publicInfo))
  },
})

/** TPM2_NV_Write (Part 3, 31.9): `data` must not exceed TPM_PT_NV_BUFFER_MAX. */
export const NvWrite = defineCommand<
  { authHandle: number; nvIndex: number; data: Uint8Array; offset: number },
  void
>({
  name: 'TPM2_NV_Write',
  code: TpmCc.NvWrite,
  spec: 'Part 3, 31.9',
  handles: ['authHandle', 'nvIndex'],
  authHandles: 1,
  encodeParams: (w, p) => w.tpm2b(p.data).u16(p.offset),
})

/** TPM2_NV_UndefineSpace (Part 3, 31.4). */
export const NvUndefineSpace = defineCommand<{ authHandle: number; nvIndex: number }, void>({
  name: 'TPM2_NV_UndefineSpace',
  code: TpmCc.NvUndefineSpace,
  spec: 'Part 3, 31.4',
  handles: ['authHandle', 'nvIndex'],
  authHandles: 1,
})
