import { defineCommand } from '../command.ts'
import { TpmCc } from '../constants.ts'

/**
 * TPM2_ActivateCredential (Part 3, 12.5). `credentialBlob` (TPM2B_ID_OBJECT) and `secret`
 * (TPM2B_ENCRYPTED_SECRET) are passed as the TPM2B bytes MakeCredential produced, size prefix included.
 */
export const ActivateCredential = defineCommand<
  { activateHandle: number; keyHandle: number; credentialBlob: Uint8Array; secret: Uint8Array },
  { certInfo: Uint8Array }
>({
  name: 'TPM2_ActivateCredential',
  code: TpmCc.ActivateCredential,
  spec: 'Part 3, 12.5',
  handles: ['activateHandle', 'keyHandle'],
  authHandles: 2,
  encodeParams: (w, p) => w.raw(p.credentialBlob).raw(p.secret),
  decodeResponse: (r) => ({ certInfo: r.tpm2b('certInfo', 64).slice() }),
})
