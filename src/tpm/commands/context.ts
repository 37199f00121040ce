import { defineCommand } from '../command.ts'
import { TpmCc } from '../constants.ts'
import { TpmsContext } from '../types/misc.ts'

/** TPM2_FlushContext (Part 3, 28.4): the handle is a parameter, not in the handle area. */
export const FlushContext = defineCommand<{ flushHandle: number }, void>({
  name: 'TPM2_FlushContext',
  code: TpmCc.FlushContext,
  spec: 'Part 3, 28.4',
  encodeParams: (w, p) => w.u32(p.flushHandle),
})

/** TPM2_ContextSave (Part 3, 28.2). */
export const ContextSave = defineCommand<{ saveHandle: number }, { context: TpmsContext }>({
  name: 'TPM2_ContextSave',
  code: TpmCc.ContextSave,
  spec: 'Part 3, 28.2',
  handles: ['saveHandle'],
  decodeResponse: (r) => {
    const c = TpmsContext.decode(r)
    return { context: { ...c, contextBlob: c.contextBlob.slice() } }
  },
})

/** TPM2_ContextLoad (Part 3, 28.3). */
export const ContextLoad = defineCommand<{ context: TpmsContext }, { loadedHandle: number }>({
  name: 'TPM2_ContextLoad',
  code: TpmCc.ContextLoad,
  spec: 'Part 3, 28.3',
  responseHandle: true,
  encodeParams: (w, p) => TpmsContext.encode(w, p.context),
  decodeResponse: (_r, loadedHandle) => ({ loadedHandle }),
})
