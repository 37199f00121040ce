import { defineCommand } from '../command.ts'
import { TpmCc } from '../constants.ts'
import { TpmsAttest } from '../types/attest.ts'
import { TpmlPcrSelection } from '../types/pcr.ts'
import { TpmtSignature, TpmtSigScheme } from '../types/signature.ts'

export interface AttestResponse {
  /** Decoded attestation; `raw` is a copy of the exact bytes the TPM signed. */
  attest: TpmsAttest
  signature: TpmtSignature
  /** TPMT_SIGNATURE bytes exactly as returned. */
  signatureBytes: Uint8Array
}

function decodeAttestResponse(r: import('../marshal/reader.ts').TpmReader): AttestResponse {
  const { value } = r.sized('attest', (inner) => TpmsAttest.decode(inner))
  const attest = { ...value, raw: value.raw.slice() }
  const start = r.offset
  const signature = r.scope('signature', () => TpmtSignature.decode(r))
  return { attest, signature, signatureBytes: r.bytes.slice(start, r.offset) }
}

/** TPM2_Quote (Part 3, 18.4). */
export const Quote = defineCommand<
  { signHandle: number; qualifyingData: Uint8Array; inScheme: TpmtSigScheme; pcrSelect: TpmlPcrSelection },
  AttestResponse
>({
  name: 'TPM2_Quote',
  code: TpmCc.Quote,
  spec: 'Part 3, 18.4',
  handles: ['signHandle'],
  authHandles: 1,
  encodeParams: (w, p) => {
    w.tpm2b(p.qualifyingData)
    TpmtSigScheme.encode(w, p.inScheme)
    TpmlPcrSelection.encode(w, p.pcrSelect)
  },
  decodeResponse: decodeAttestResponse,
})

/** TPM2_Certify (Part 3, 18.2): `signHandle` attests that `objectHandle` is loaded in this TPM. */
export const Certify = defineCommand<
  { objectHandle: number; signHandle: number; qualifyingData: Uint8Array; inScheme: TpmtSigScheme },
  AttestResponse
>({
  name: 'TPM2_Certify',
  code: TpmCc.Certify,
  spec: 'Part 3, 18.2',
  handles: ['objectHandle', 'signHandle'],
  authHandles: 2,
  encodeParams: (w, p) => {
    w.tpm2b(p.qualifyingData)
    TpmtSigScheme.encode(w, p.inScheme)
  },
  decodeResponse: decodeAttestResponse,
})
