import { defineCommand } from '../command.ts'
import { TpmCc } from '../constants.ts'

/** TPM2_HierarchyChangeAuth (Part 3, 24.8): sets the auth value of a hierarchy (owner, endorsement, lockout). */
export const HierarchyChangeAuth = defineCommand<{ authHandle: number; newAuth: Uint8Array }, void>({
  name: 'TPM2_HierarchyChangeAuth',
  code: TpmCc.HierarchyChangeAuth,
  spec: 'Part 3, 24.8',
  handles: ['authHandle'],
  authHandles: 1,
  encodeParams: (w, p) => w.tpm2b(p.newAuth),
})
