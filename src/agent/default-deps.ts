/**
 * Wires the agent to the other teams' modules: the TPM library (`src/tpm`), QUOTE's quote/credential codecs and
 * public-key helpers, CRYPTO's safe zip extraction and IMA's ima-ng formatter.
 */
import { decodeKeylimeCredentialBlob } from '../crypto/make-credential.ts'
import { publicKeyPemOf } from '../crypto/tpm-public.ts'
import { formatAgentQuote } from './quote-format.ts'
import type { AgentDeps } from './runtime.ts'
import { openKeylimeTpm } from './tpm-keylime.ts'
import { extractZipSafely } from './zip.ts'

export { imaNgFormatter } from './ima-format.ts'

export function defaultAgentDeps(): AgentDeps {
  return {
    openTpm: openKeylimeTpm,
    formatQuote: formatAgentQuote,
    decodeCredentialBlob: (b64) => {
      const c = decodeKeylimeCredentialBlob(b64)
      return { credentialBlob: c.credentialBlob, encryptedSecret: c.encryptedSecret }
    },
    publicKeyPem: (pub) => publicKeyPemOf(pub),
    extractZip: extractZipSafely,
  }
}
