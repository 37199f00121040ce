import type { TpmReader } from './marshal/reader.ts'
import type { TpmWriter } from './marshal/writer.ts'

/**
 * A TPM command as data (go-tpm style): its Part 3 name and section, the handle-area fields in wire order
 * (the first `authHandles` of them need an authorization session), the parameter encoder, and the response
 * decoder. One engine (`Tpm.run`) executes every command.
 */
export interface TpmCommand<P, R> {
  readonly name: string
  readonly code: number
  /** Where the command is specified, e.g. `Part 3, 18.4`. */
  readonly spec: string
  readonly handles: readonly (keyof P & string)[]
  readonly authHandles: number
  /** Whether the response carries a handle (CreatePrimary, Load, StartAuthSession, ContextLoad). */
  readonly responseHandle: boolean
  encodeParams(w: TpmWriter, params: P): void
  decodeResponse(r: TpmReader, handle: number): R
}

export function defineCommand<P, R>(def: {
  name: string
  code: number
  spec: string
  handles?: readonly (keyof P & string)[]
  authHandles?: number
  responseHandle?: boolean
  encodeParams?: (w: TpmWriter, params: P) => void
  decodeResponse?: (r: TpmReader, handle: number) => R
}): TpmCommand<P, R> {
  return Object.freeze({
    name: def.name,
    code: def.code,
    spec: def.spec,
    handles: def.handles ?? [],
    authHandles: def.authHandles ?? 0,
    responseHandle: def.responseHandle ?? false,
    encodeParams: def.encodeParams ?? (() => {}),
    decodeResponse: def.decodeResponse ?? (() => undefined as R),
  })
}
