import { defineCommand } from '../command.ts'
import { TpmCc } from '../constants.ts'
import type { TpmReader } from '../marshal/reader.ts'
import type { TpmWriter } from '../marshal/writer.ts'
import { TpmsSensitiveCreate, TpmtTicket } from '../types/misc.ts'
import { TpmlPcrSelection } from '../types/pcr.ts'
import { Tpm2bPublic, type TpmtPublic } from '../types/public.ts'

/** Parameters shared by CreatePrimary and Create. */
export interface CreateParams {
  inSensitive: TpmsSensitiveCreate
  inPublic: Omit<TpmtPublic, 'raw'>
  outsideInfo: Uint8Array
  creationPcr: TpmlPcrSelection
}

function encodeCreate(w: TpmWriter, p: CreateParams): void {
  w.sized((i) => TpmsSensitiveCreate.encode(i, p.inSensitive))
  Tpm2bPublic.encode(w, p.inPublic as TpmtPublic)
  w.tpm2b(p.outsideInfo)
  TpmlPcrSelection.encode(w, p.creationPcr)
}

export interface CreationOutput {
  /** TPM2B_PUBLIC bytes as the TPM returned them (size prefix included). */
  outPublicBytes: Uint8Array
  outPublic: TpmtPublic
  creationData: Uint8Array
  creationHash: Uint8Array
  creationTicket: TpmtTicket
}

/** A TPM2B_PUBLIC in a response: decoded, and its bytes as returned (what the object's Name hashes). */
function decodeOutPublic(r: TpmReader): { outPublicBytes: Uint8Array; outPublic: TpmtPublic } {
  const start = r.offset
  const outPublic = r.scope('outPublic', () => Tpm2bPublic.decode(r))
  const outPublicBytes = r.bytes.slice(start, r.offset)
  return { outPublicBytes, outPublic: { ...outPublic, raw: outPublicBytes.subarray(2) } }
}

function decodeCreation(r: TpmReader): CreationOutput {
  return {
    ...decodeOutPublic(r),
    creationData: r.tpm2b('creationData').slice(),
    creationHash: r.tpm2b('creationHash', 64).slice(),
    creationTicket: r.scope('creationTicket', () => TpmtTicket.decode(r)),
  }
}

export interface CreatePrimaryResponse extends CreationOutput {
  objectHandle: number
  name: Uint8Array
}

/** TPM2_CreatePrimary (Part 3, 24.1). */
export const CreatePrimary = defineCommand<CreateParams & { primaryHandle: number }, CreatePrimaryResponse>({
  name: 'TPM2_CreatePrimary',
  code: TpmCc.CreatePrimary,
  spec: 'Part 3, 24.1',
  handles: ['primaryHandle'],
  authHandles: 1,
  responseHandle: true,
  encodeParams: encodeCreate,
  decodeResponse: (r, objectHandle) => {
    const creation = decodeCreation(r)
    return { objectHandle, ...creation, name: r.tpm2b('name').slice() }
  },
})

export interface CreateResponse extends CreationOutput {
  /** TPM2B_PRIVATE bytes (size prefix included), to be kept and passed back to Load. */
  outPrivateBytes: Uint8Array
}

/** TPM2_Create (Part 3, 12.1). */
export const Create = defineCommand<CreateParams & { parentHandle: number }, CreateResponse>({
  name: 'TPM2_Create',
  code: TpmCc.Create,
  spec: 'Part 3, 12.1',
  handles: ['parentHandle'],
  authHandles: 1,
  encodeParams: encodeCreate,
  decodeResponse: (r) => {
    const start = r.offset
    r.tpm2b('outPrivate')
    const outPrivateBytes = r.bytes.slice(start, r.offset)
    return { outPrivateBytes, ...decodeCreation(r) }
  },
})

/** TPM2_Load (Part 3, 12.2). `inPrivate`/`inPublic` are TPM2B bytes with their size prefixes. */
export const Load = defineCommand<
  { parentHandle: number; inPrivate: Uint8Array; inPublic: Uint8Array },
  { objectHandle: number; name: Uint8Array }
>({
  name: 'TPM2_Load',
  code: TpmCc.Load,
  spec: 'Part 3, 12.2',
  handles: ['parentHandle'],
  authHandles: 1,
  responseHandle: true,
  encodeParams: (w, p) => w.raw(p.inPrivate).raw(p.inPublic),
  decodeResponse: (r, objectHandle) => ({ objectHandle, name: r.tpm2b('name').slice() }),
})

export interface ReadPublicResponse {
  outPublicBytes: Uint8Array
  outPublic: TpmtPublic
  name: Uint8Array
  qualifiedName: Uint8Array
}

/** TPM2_ReadPublic (Part 3, 12.4). */
export const ReadPublic = defineCommand<{ objectHandle: number }, ReadPublicResponse>({
  name: 'TPM2_ReadPublic',
  code: TpmCc.ReadPublic,
  spec: 'Part 3, 12.4',
  handles: ['objectHandle'],
  decodeResponse: (r) => {
    return {
      ...decodeOutPublic(r),
      name: r.tpm2b('name').slice(),
      qualifiedName: r.tpm2b('qualifiedName').slice(),
    }
  },
})

/** TPM2_EvictControl (Part 3, 28.5): persist a transient object, or evict a persistent one. */
export const EvictControl = defineCommand<
  { auth: number; objectHandle: number; persistentHandle: number },
  void
>({
  name: 'TPM2_EvictControl',
  code: TpmCc.EvictControl,
  spec: 'Part 3, 28.5',
  handles: ['auth', 'objectHandle'],
  authHandles: 1,
  encodeParams: (w, p) => w.u32(p.persistentHandle),
})
