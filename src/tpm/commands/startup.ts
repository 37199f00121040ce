import { defineCommand } from '../command.ts'
import { TpmCc } from '../constants.ts'

/** TPM2_Startup (Part 3, 9.3). */
export const Startup = defineCommand<{ startupType: number }, void>({
  name: 'TPM2_Startup',
  code: TpmCc.Startup,
  spec: 'Part 3, 9.3',
  encodeParams: (w, p) => w.u16(p.startupType),
})

/** TPM2_Shutdown (Part 3, 9.4). */
export const Shutdown = defineCommand<{ shutdownType: number }, void>({
  name: 'TPM2_Shutdown',
  code: TpmCc.Shutdown,
  spec: 'Part 3, 9.4',
  encodeParams: (w, p) => w.u16(p.shutdownType),
})

/** TPM2_GetRandom (Part 3, 16.1). */
export const GetRandom = defineCommand<{ bytesRequested: number }, { randomBytes: Uint8Array }>({
  name: 'TPM2_GetRandom',
  code: TpmCc.GetRandom,
  spec: 'Part 3, 16.1',
  encodeParams: (w, p) => w.u16(p.bytesRequested),
  decodeResponse: (r) => ({ randomBytes: r.tpm2b('randomBytes', 64).slice() }),
})
