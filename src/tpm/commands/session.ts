import { defineCommand } from '../command.ts'
import { TpmAlg, TpmCc } from '../constants.ts'
import { TpmtTicket } from '../types/misc.ts'
import type { TpmtSymDefObject } from '../types/public.ts'

export interface StartAuthSessionParams {
  tpmKey: number
  bind: number
  nonceCaller: Uint8Array
  encryptedSalt: Uint8Array
  sessionType: number
  symmetric: TpmtSymDefObject
  authHash: number
}

/** TPM2_StartAuthSession (Part 3, 11.1). */
export const StartAuthSession = defineCommand<
  StartAuthSessionParams,
  { sessionHandle: number; nonceTpm: Uint8Array }
>({
  name: 'TPM2_StartAuthSession',
  code: TpmCc.StartAuthSession,
  spec: 'Part 3, 11.1',
  handles: ['tpmKey', 'bind'],
  responseHandle: true,
  encodeParams: (w, p) => {
    w.tpm2b(p.nonceCaller).tpm2b(p.encryptedSalt).u8(p.sessionType).u16(p.symmetric.algorithm)
    if (p.symmetric.algorithm !== TpmAlg.Null) w.u16(p.symmetric.keyBits).u16(p.symmetric.mode)
    w.u16(p.authHash)
  },
  decodeResponse: (r, sessionHandle) => ({ sessionHandle, nonceTpm: r.tpm2b('nonceTPM', 64).slice() }),
})

export interface PolicySecretParams {
  authHandle: number
  policySession: number
  nonceTpm: Uint8Array
  cpHashA: Uint8Array
  policyRef: Uint8Array
  expiration: number
}

/** TPM2_PolicySecret (Part 3, 23.4): extends the policy with the authorisation of `authHandle`. */
export const PolicySecret = defineCommand<
  PolicySecretParams,
  { timeout: Uint8Array; policyTicket: TpmtTicket }
>({
  name: 'TPM2_PolicySecret',
  code: TpmCc.PolicySecret,
  spec: 'Part 3, 23.4',
  handles: ['authHandle', 'policySession'],
  authHandles: 1,
  encodeParams: (w, p) =>
    w
      .tpm2b(p.nonceTpm)
      .tpm2b(p.cpHashA)
      .tpm2b(p.policyRef)
      .u32(p.expiration | 0),
  decodeResponse: (r) => ({
    timeout: r.tpm2b('timeout').slice(),
    policyTicket: r.scope('policyTicket', () => TpmtTicket.decode(r)),
  }),
})

/** TPM2_PolicyGetDigest (Part 3, 23.19). */
export const PolicyGetDigest = defineCommand<{ policySession: number }, { policyDigest: Uint8Array }>({
  name: 'TPM2_PolicyGetDigest',
  code: TpmCc.PolicyGetDigest,
  spec: 'Part 3, 23.19',
  handles: ['policySession'],
  decodeResponse: (r) => ({ policyDigest: r.tpm2b('policyDigest', 64).slice() }),
})

/** TPM2_PolicyRestart (Part 3, 23.20). */
export const PolicyRestart = defineCommand<{ sessionHandle: number }, void>({
  name: 'TPM2_PolicyRestart',
  code: TpmCc.PolicyRestart,
  spec: 'Part 3, 23.20',
  handles: ['sessionHandle'],
})

/** TPM2_PolicyOR (Part 3, 23.6): the session digest, if it is one of `pHashList`, becomes their OR digest. */
export const PolicyOr = defineCommand<{ policySession: number; pHashList: Uint8Array[] }, void>({
  name: 'TPM2_PolicyOR',
  code: TpmCc.PolicyOr,
  spec: 'Part 3, 23.6',
  handles: ['policySession'],
  encodeParams: (w, p) => {
    w.u32(p.pHashList.length)
    for (const d of p.pHashList) w.tpm2b(d)
  },
})
